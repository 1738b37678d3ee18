//! A TLS client driven record by record, for what a well-behaved client never sends: records
//! behind its Finished in the same write, a KeyUpdate, a TLS 1.2 renegotiation ClientHello, a
//! record whose inner content type is zero, a first handshake message of an unknown type.
//!
//! rustls runs the handshake; its traffic keys are then taken out
//! (`dangerous_extract_secrets`), and every later record is sealed and opened here with
//! aws-lc-rs, so a test sees each record the server sends, in order, with its type. For TLS 1.3
//! the client also keeps the traffic secrets (through its key log) to follow key updates both
//! ways.

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_lc_rs::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey};
use aws_lc_rs::hkdf;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::Resumption;
use rustls::crypto::{aws_lc_rs as provider, CryptoProvider};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    ClientConfig, ClientConnection, ConnectionTrafficSecrets, DigitallySignedStruct, KeyLog,
    SignatureScheme,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{timeout_at, Instant};

/// Record content types (RFC 8446 §5.1).
pub mod content {
    pub const CHANGE_CIPHER_SPEC: u8 = 20;
    pub const ALERT: u8 = 21;
    pub const HANDSHAKE: u8 = 22;
    pub const APPLICATION_DATA: u8 = 23;
}

/// Handshake message types (RFC 8446 §4).
pub mod handshake {
    pub const CLIENT_HELLO: u8 = 1;
    pub const NEW_SESSION_TICKET: u8 = 4;
    pub const KEY_UPDATE: u8 = 24;
}

/// Alert descriptions (RFC 8446 §6).
pub mod alert {
    pub const WARNING: u8 = 1;
    pub const FATAL: u8 = 2;
    pub const CLOSE_NOTIFY: u8 = 0;
    pub const UNEXPECTED_MESSAGE: u8 = 10;
    pub const BAD_RECORD_MAC: u8 = 20;
    pub const DECODE_ERROR: u8 = 50;
    pub const USER_CANCELED: u8 = 90;
    pub const NO_RENEGOTIATION: u8 = 100;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsVersion {
    Tls12,
    Tls13,
}

/// One thing the server did, as the client saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seen {
    /// An alert (opened, or sent in the clear): level and description.
    Alert {
        level: u8,
        description: u8,
    },
    /// A handshake message: its type and body.
    Handshake {
        typ: u8,
        body: Vec<u8>,
    },
    ApplicationData(Vec<u8>),
    /// Another record sent in the clear.
    Plain {
        typ: u8,
        payload: Vec<u8>,
    },
    /// A record the client could not open.
    Sealed {
        typ: u8,
        len: usize,
    },
    /// The server closed the connection.
    Closed,
    /// The connection was reset.
    Reset,
    /// Nothing arrived before the deadline.
    Silence,
}

impl Seen {
    pub fn is_ticket(&self) -> bool {
        matches!(
            self,
            Self::Handshake {
                typ: handshake::NEW_SESSION_TICKET,
                ..
            }
        )
    }

    pub fn fatal(description: u8) -> Self {
        Self::Alert {
            level: alert::FATAL,
            description,
        }
    }
}

/// A TCP connection to a TLS server, and, once the handshake has run, the keys of both
/// directions.
#[derive(Debug)]
pub struct RawTls {
    tcp: TcpStream,
    inbox: Vec<u8>,
    seen: VecDeque<Seen>,
    keys: Option<Keys>,
    closed: bool,
}

impl RawTls {
    pub async fn connect(addr: SocketAddr) -> io::Result<Self> {
        let tcp = TcpStream::connect(addr).await?;
        tcp.set_nodelay(true)?;
        Ok(Self {
            tcp,
            inbox: Vec::new(),
            seen: VecDeque::new(),
            keys: None,
            closed: false,
        })
    }

    /// Writes `bytes` in one write.
    pub async fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.tcp.write_all(bytes).await
    }

    /// The whole handshake (ALPN `http/1.1`), with the client's last flight sent.
    pub async fn handshake(&mut self, sni: &str, version: TlsVersion) -> io::Result<()> {
        let flight = self.handshake_until_finished(sni, version).await?;
        self.send(&flight).await
    }

    /// Runs the handshake up to the client's last flight and returns that flight unsent, with
    /// the traffic keys in hand. For TLS 1.3 that flight is the client's Finished: the caller
    /// decides what follows it in the same write. A TLS 1.2 (full) handshake ends with the
    /// server's Finished, so the client's flight has gone out and the result is empty.
    pub async fn handshake_until_finished(
        &mut self,
        sni: &str,
        version: TlsVersion,
    ) -> io::Result<Vec<u8>> {
        let secrets = Arc::new(TrafficSecrets::default());
        let config = client_config(version, secrets.clone())?;
        let name = ServerName::try_from(sni.to_owned()).map_err(invalid)?;
        let mut conn = ClientConnection::new(config, name).map_err(invalid)?;
        let mut flight = Vec::new();
        loop {
            while conn.wants_write() {
                conn.write_tls(&mut flight)?;
            }
            if !conn.is_handshaking() {
                break;
            }
            if !flight.is_empty() {
                self.send(&flight).await?;
                flight.clear();
            }
            let mut buf = [0u8; 16 * 1024];
            let n = self.tcp.read(&mut buf).await?;
            if n == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            let mut data = &buf[..n];
            while !data.is_empty() {
                conn.read_tls(&mut data)?;
                conn.process_new_packets().map_err(invalid)?;
            }
        }
        let suite = conn
            .negotiated_cipher_suite()
            .ok_or_else(|| invalid("no cipher suite"))?;
        let sha384 = suite.suite() == rustls::CipherSuite::TLS13_AES_256_GCM_SHA384;
        let extracted = conn.dangerous_extract_secrets().map_err(invalid)?;
        let (tx_seq, tx) = extracted.tx;
        let (rx_seq, rx) = extracted.rx;
        let logged = secrets.take();
        let tls13 = version == TlsVersion::Tls13;
        self.keys = Some(Keys {
            tls13,
            tx: Some(Direction::new(tx, tx_seq, tls13, logged.client, sha384)),
            rx: Some(Direction::new(rx, rx_seq, tls13, logged.server, sha384)),
        });
        Ok(flight)
    }

    /// A record sealed with the client's current keys: `content` of type `typ`.
    pub fn seal(&mut self, typ: u8, content: &[u8]) -> Vec<u8> {
        let keys = self.keys.as_mut().expect("keys: run the handshake first");
        let tx = keys
            .tx
            .as_mut()
            .expect("the client's keys changed without a secret");
        if keys.tls13 {
            let mut inner = content.to_vec();
            inner.push(typ);
            tx.seal_tls13(&inner)
        } else {
            tx.seal_tls12(typ, content)
        }
    }

    /// A TLS 1.3 record whose inner plaintext (content, type and padding) is exactly `inner`.
    pub fn seal_inner(&mut self, inner: &[u8]) -> Vec<u8> {
        let keys = self.keys.as_mut().expect("keys: run the handshake first");
        assert!(keys.tls13, "TLS 1.3 only");
        keys.tx.as_mut().expect("client keys").seal_tls13(inner)
    }

    /// A KeyUpdate record; the client's sending keys move on after it.
    pub fn key_update(&mut self, request_update: bool) -> Vec<u8> {
        let record = self.seal(
            content::HANDSHAKE,
            &[handshake::KEY_UPDATE, 0, 0, 1, u8::from(request_update)],
        );
        let keys = self.keys.as_mut().expect("keys");
        keys.tx = keys.tx.take().and_then(Direction::updated);
        record
    }

    /// A fresh ClientHello, as a handshake message (for a renegotiation attempt).
    pub fn client_hello(sni: &str) -> Vec<u8> {
        let config = client_config(TlsVersion::Tls12, Arc::default()).expect("client config");
        let name = ServerName::try_from(sni.to_owned()).expect("name");
        let mut conn = ClientConnection::new(config, name).expect("client");
        let mut record = Vec::new();
        conn.write_tls(&mut record).expect("ClientHello");
        record.split_off(5)
    }

    /// The next thing the server does, waiting up to `wait` for it.
    pub async fn next(&mut self, wait: Duration) -> Seen {
        let deadline = Instant::now() + wait;
        loop {
            if let Some(seen) = self.seen.pop_front() {
                return seen;
            }
            if let Some(record) = self.take_record() {
                self.open(record);
                continue;
            }
            if self.closed {
                return Seen::Closed;
            }
            let mut buf = [0u8; 16 * 1024];
            match timeout_at(deadline, self.tcp.read(&mut buf)).await {
                Err(_) => return Seen::Silence,
                Ok(Ok(0)) => self.closed = true,
                Ok(Ok(n)) => self.inbox.extend_from_slice(&buf[..n]),
                Ok(Err(e)) if e.kind() == io::ErrorKind::ConnectionReset => return Seen::Reset,
                Ok(Err(e)) => panic!("read: {e}"),
            }
        }
    }

    /// Everything until the server closes (or goes quiet for `wait`), ending with what ended
    /// it.
    pub async fn until_closed(&mut self, wait: Duration) -> Vec<Seen> {
        let mut all = Vec::new();
        loop {
            let seen = self.next(wait).await;
            let end = matches!(seen, Seen::Closed | Seen::Reset | Seen::Silence);
            all.push(seen);
            if end {
                return all;
            }
        }
    }

    fn take_record(&mut self) -> Option<(u8, Vec<u8>)> {
        if self.inbox.len() < 5 {
            return None;
        }
        let len = usize::from(u16::from_be_bytes([self.inbox[3], self.inbox[4]]));
        if self.inbox.len() < 5 + len {
            return None;
        }
        let typ = self.inbox[0];
        let payload = self.inbox[5..5 + len].to_vec();
        self.inbox.drain(..5 + len);
        Some((typ, payload))
    }

    fn open(&mut self, (typ, payload): (u8, Vec<u8>)) {
        let plain_alert = typ == content::ALERT && payload.len() == 2;
        let Some(keys) = self.keys.as_mut().filter(|_| !plain_alert) else {
            let seen = match (typ, payload.as_slice()) {
                (content::ALERT, &[level, description]) => Seen::Alert { level, description },
                _ => Seen::Plain { typ, payload },
            };
            self.seen.push_back(seen);
            return;
        };
        let len = payload.len();
        let opened = keys.rx.as_mut().and_then(|rx| {
            if keys.tls13 {
                rx.open_tls13(typ, payload)
            } else {
                rx.open_tls12(typ, payload).map(|content| (typ, content))
            }
        });
        let Some((inner, content)) = opened else {
            self.seen.push_back(Seen::Sealed { typ, len });
            return;
        };
        match inner {
            content::ALERT if content.len() == 2 => self.seen.push_back(Seen::Alert {
                level: content[0],
                description: content[1],
            }),
            content::HANDSHAKE => {
                let mut rest = content.as_slice();
                while rest.len() >= 4 {
                    let len = usize::from(rest[1]) << 16
                        | usize::from(rest[2]) << 8
                        | usize::from(rest[3]);
                    let end = (4 + len).min(rest.len());
                    let typ = rest[0];
                    if typ == handshake::KEY_UPDATE && keys.tls13 {
                        keys.rx = keys.rx.take().and_then(Direction::updated);
                    }
                    self.seen.push_back(Seen::Handshake {
                        typ,
                        body: rest[4..end].to_vec(),
                    });
                    rest = &rest[end..];
                }
            }
            content::APPLICATION_DATA => self.seen.push_back(Seen::ApplicationData(content)),
            typ => self.seen.push_back(Seen::Plain {
                typ,
                payload: content,
            }),
        }
    }
}

#[derive(Debug)]
struct Keys {
    tls13: bool,
    tx: Option<Direction>,
    rx: Option<Direction>,
}

/// One direction's AEAD key, IV and sequence number; for TLS 1.3 also the traffic secret, to
/// derive the next keys after a KeyUpdate.
struct Direction {
    key: LessSafeKey,
    iv: [u8; 12],
    seq: u64,
    /// TLS 1.2 AES-GCM carries the nonce's last 8 bytes in the record.
    explicit_nonce: bool,
    secret: Option<Vec<u8>>,
    sha384: bool,
    algorithm: &'static aead::Algorithm,
}

impl std::fmt::Debug for Direction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Direction").field("seq", &self.seq).finish()
    }
}

impl Direction {
    fn new(
        secrets: ConnectionTrafficSecrets,
        seq: u64,
        tls13: bool,
        secret: Option<Vec<u8>>,
        sha384: bool,
    ) -> Self {
        let (algorithm, key, iv, gcm) = match &secrets {
            ConnectionTrafficSecrets::Aes128Gcm { key, iv } => (&aead::AES_128_GCM, key, iv, true),
            ConnectionTrafficSecrets::Aes256Gcm { key, iv } => (&aead::AES_256_GCM, key, iv, true),
            ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv } => {
                (&aead::CHACHA20_POLY1305, key, iv, false)
            }
            _ => panic!("a cipher suite this client does not know"),
        };
        Self {
            key: LessSafeKey::new(UnboundKey::new(algorithm, key.as_ref()).expect("key")),
            iv: iv.as_ref().try_into().expect("12-byte iv"),
            seq,
            explicit_nonce: gcm && !tls13,
            secret,
            sha384,
            algorithm,
        }
    }

    /// The keys after a TLS 1.3 KeyUpdate (RFC 8446 §7.2), or none without the secret.
    fn updated(self) -> Option<Self> {
        let secret = hkdf_expand_label(self.sha384, self.secret.as_ref()?, b"traffic upd")?;
        let key_len = self.algorithm.key_len();
        let key = hkdf_expand_label_len(self.sha384, &secret, b"key", key_len)?;
        let iv = hkdf_expand_label_len(self.sha384, &secret, b"iv", 12)?;
        Some(Self {
            key: LessSafeKey::new(UnboundKey::new(self.algorithm, &key).ok()?),
            iv: iv.try_into().ok()?,
            seq: 0,
            explicit_nonce: false,
            secret: Some(secret),
            sha384: self.sha384,
            algorithm: self.algorithm,
        })
    }

    fn nonce(&self, seq: u64) -> [u8; 12] {
        let mut nonce = self.iv;
        for (n, s) in nonce[4..].iter_mut().zip(seq.to_be_bytes()) {
            *n ^= s;
        }
        nonce
    }

    fn seal_tls13(&mut self, inner: &[u8]) -> Vec<u8> {
        let len = u16::try_from(inner.len() + 16).expect("record size");
        let mut record = vec![content::APPLICATION_DATA, 3, 3];
        record.extend_from_slice(&len.to_be_bytes());
        let mut body = inner.to_vec();
        let nonce = Nonce::assume_unique_for_key(self.nonce(self.seq));
        self.key
            .seal_in_place_append_tag(nonce, Aad::from(&record[..5]), &mut body)
            .expect("seal");
        self.seq += 1;
        record.extend_from_slice(&body);
        record
    }

    fn open_tls13(&mut self, typ: u8, mut payload: Vec<u8>) -> Option<(u8, Vec<u8>)> {
        let mut header = vec![typ, 3, 3];
        header.extend_from_slice(&u16::try_from(payload.len()).ok()?.to_be_bytes());
        let nonce = Nonce::assume_unique_for_key(self.nonce(self.seq));
        let plain = self
            .key
            .open_in_place(nonce, Aad::from(&header[..]), &mut payload)
            .ok()?;
        self.seq += 1;
        let end = plain.iter().rposition(|&b| b != 0)?;
        Some((plain[end], plain[..end].to_vec()))
    }

    fn tls12_aad(&self, typ: u8, len: usize) -> Vec<u8> {
        let mut aad = self.seq.to_be_bytes().to_vec();
        aad.extend_from_slice(&[typ, 3, 3]);
        aad.extend_from_slice(&u16::try_from(len).expect("size").to_be_bytes());
        aad
    }

    fn seal_tls12(&mut self, typ: u8, content: &[u8]) -> Vec<u8> {
        let nonce = self.nonce(self.seq);
        let aad = self.tls12_aad(typ, content.len());
        let mut body = content.to_vec();
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(&aad[..]),
                &mut body,
            )
            .expect("seal");
        self.seq += 1;
        let mut payload = if self.explicit_nonce {
            nonce[4..].to_vec()
        } else {
            Vec::new()
        };
        payload.extend_from_slice(&body);
        let mut record = vec![typ, 3, 3];
        record.extend_from_slice(&u16::try_from(payload.len()).expect("size").to_be_bytes());
        record.extend_from_slice(&payload);
        record
    }

    fn open_tls12(&mut self, typ: u8, payload: Vec<u8>) -> Option<Vec<u8>> {
        let (nonce, mut body) = if self.explicit_nonce {
            let mut nonce = self.iv;
            nonce[4..].copy_from_slice(payload.get(..8)?);
            (nonce, payload.get(8..)?.to_vec())
        } else {
            (self.nonce(self.seq), payload)
        };
        let aad = self.tls12_aad(typ, body.len().checked_sub(16)?);
        let plain = self
            .key
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(&aad[..]),
                &mut body,
            )
            .ok()?
            .to_vec();
        self.seq += 1;
        Some(plain)
    }
}

fn hkdf_expand_label(sha384: bool, secret: &[u8], label: &[u8]) -> Option<Vec<u8>> {
    hkdf_expand_label_len(sha384, secret, label, if sha384 { 48 } else { 32 })
}

/// HKDF-Expand-Label with an empty context (RFC 8446 §7.1).
fn hkdf_expand_label_len(sha384: bool, secret: &[u8], label: &[u8], len: usize) -> Option<Vec<u8>> {
    struct Len(usize);
    impl hkdf::KeyType for Len {
        fn len(&self) -> usize {
            self.0
        }
    }
    let algorithm = if sha384 {
        hkdf::HKDF_SHA384
    } else {
        hkdf::HKDF_SHA256
    };
    let prk = hkdf::Prk::new_less_safe(algorithm, secret);
    let out_len = u16::try_from(len).ok()?.to_be_bytes();
    let label_len = [u8::try_from(6 + label.len()).ok()?];
    let info: [&[u8]; 5] = [&out_len, &label_len, b"tls13 ", label, &[0]];
    let mut out = vec![0u8; len];
    prk.expand(&info, Len(len)).ok()?.fill(&mut out).ok()?;
    Some(out)
}

/// The TLS 1.3 application traffic secrets, as the client's key log hands them over.
#[derive(Debug, Default)]
struct TrafficSecrets(Mutex<Logged>);

#[derive(Debug, Default)]
struct Logged {
    client: Option<Vec<u8>>,
    server: Option<Vec<u8>>,
}

impl TrafficSecrets {
    fn take(&self) -> Logged {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

impl KeyLog for TrafficSecrets {
    fn log(&self, label: &str, _client_random: &[u8], secret: &[u8]) {
        let mut logged = self.0.lock().unwrap_or_else(|p| p.into_inner());
        match label {
            "CLIENT_TRAFFIC_SECRET_0" => logged.client = Some(secret.to_vec()),
            "SERVER_TRAFFIC_SECRET_0" => logged.server = Some(secret.to_vec()),
            _ => {}
        }
    }

    fn will_log(&self, label: &str) -> bool {
        label.ends_with("_TRAFFIC_SECRET_0")
    }
}

fn client_config(
    version: TlsVersion,
    secrets: Arc<TrafficSecrets>,
) -> io::Result<Arc<ClientConfig>> {
    let provider = Arc::new(provider::default_provider());
    let versions: &[&rustls::SupportedProtocolVersion] = match version {
        TlsVersion::Tls12 => &[&rustls::version::TLS12],
        TlsVersion::Tls13 => &[&rustls::version::TLS13],
    };
    let mut config = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(versions)
        .map_err(invalid)?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    config.resumption = Resumption::disabled();
    config.enable_secret_extraction = true;
    config.key_log = secrets;
    Ok(Arc::new(config))
}

fn invalid(e: impl ToString) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e.to_string())
}

/// Accepts any certificate (the signatures are still checked).
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
