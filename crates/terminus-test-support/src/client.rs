//! A real rustls client that records the certificate the server presented, with knobs for SNI,
//! ALPN, protocol versions, acceptable key types and resumption; and HTTP/1.1 and HTTP/2
//! requests over it.

use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode, Version};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::Resumption;
use rustls::crypto::{aws_lc_rs, CryptoProvider};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme, SupportedProtocolVersion};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

/// Which server key types the client will accept (by the signature schemes it offers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accept {
    Any,
    EcdsaOnly,
    RsaOnly,
}

#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// `None` sends no SNI.
    pub sni: Option<String>,
    pub alpn: Vec<Vec<u8>>,
    pub versions: Vec<&'static SupportedProtocolVersion>,
    pub accept: Accept,
    /// Verify against these roots (and the SNI name); `None` accepts any certificate.
    pub roots: Option<Vec<CertificateDer<'static>>>,
    pub resumption: bool,
    /// A session store shared across clients that ignores server names, to offer one name's
    /// session under another SNI.
    pub shared_sessions: Option<Arc<AnyNameSessions>>,
}

/// Sessions kept regardless of the server name they were made for: a client that offers a
/// ticket from one name while asking for another, which a server must not resume.
#[derive(Debug, Default)]
pub struct AnyNameSessions {
    tls12: Mutex<Option<rustls::client::Tls12ClientSessionValue>>,
    tls13: Mutex<Vec<rustls::client::Tls13ClientSessionValue>>,
}

impl rustls::client::ClientSessionStore for AnyNameSessions {
    fn set_kx_hint(&self, _: ServerName<'static>, _: rustls::NamedGroup) {}
    fn kx_hint(&self, _: &ServerName<'_>) -> Option<rustls::NamedGroup> {
        None
    }
    fn set_tls12_session(
        &self,
        _: ServerName<'static>,
        value: rustls::client::Tls12ClientSessionValue,
    ) {
        *self.tls12.lock().unwrap_or_else(|p| p.into_inner()) = Some(value);
    }
    fn tls12_session(&self, _: &ServerName<'_>) -> Option<rustls::client::Tls12ClientSessionValue> {
        self.tls12.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
    fn remove_tls12_session(&self, _: &ServerName<'static>) {}
    fn insert_tls13_ticket(
        &self,
        _: ServerName<'static>,
        value: rustls::client::Tls13ClientSessionValue,
    ) {
        self.tls13
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(value);
    }
    fn take_tls13_ticket(
        &self,
        _: &ServerName<'static>,
    ) -> Option<rustls::client::Tls13ClientSessionValue> {
        self.tls13.lock().unwrap_or_else(|p| p.into_inner()).pop()
    }
}

impl ClientOptions {
    pub fn sni(name: &str) -> Self {
        Self {
            sni: Some(name.into()),
            alpn: vec![b"h2".to_vec(), b"http/1.1".to_vec()],
            versions: vec![&rustls::version::TLS13, &rustls::version::TLS12],
            accept: Accept::Any,
            roots: None,
            resumption: false,
            shared_sessions: None,
        }
    }

    pub fn no_sni() -> Self {
        Self {
            sni: None,
            ..Self::sni("unused.invalid")
        }
    }

    pub fn http1(mut self) -> Self {
        self.alpn = vec![b"http/1.1".to_vec()];
        self
    }

    pub fn http2(mut self) -> Self {
        self.alpn = vec![b"h2".to_vec()];
        self
    }

    pub fn tls12(mut self) -> Self {
        self.versions = vec![&rustls::version::TLS12];
        self
    }

    pub fn accept(mut self, accept: Accept) -> Self {
        self.accept = accept;
        self
    }

    pub fn roots(mut self, roots: Vec<CertificateDer<'static>>) -> Self {
        self.roots = Some(roots);
        self
    }
}

/// A client config that can resume sessions across connections (when `resumption` is set).
#[derive(Debug, Clone)]
pub struct TlsClient {
    options: ClientOptions,
    config: Arc<ClientConfig>,
    /// With resumption, one verifier for every connection: rustls only resumes a session made
    /// under the same verifier. Without, a fresh recorder per connection keeps concurrent
    /// connections' records apart.
    shared_verifier: Option<Arc<Recorder>>,
}

/// A TLS connection and what the server presented.
#[derive(Debug)]
pub struct Connected {
    pub stream: TlsStream<TcpStream>,
    /// The end-entity certificate served (None on a resumed session, where none is sent).
    pub served: Option<CertificateDer<'static>>,
    /// The certificates sent after it.
    pub intermediates: Vec<CertificateDer<'static>>,
    pub version: Option<rustls::ProtocolVersion>,
    pub alpn: Option<Vec<u8>>,
    pub resumed: bool,
}

#[derive(Debug)]
struct Recorder {
    seen: Mutex<Option<(CertificateDer<'static>, Vec<CertificateDer<'static>>)>>,
    inner: Option<Arc<dyn ServerCertVerifier>>,
    provider: Arc<CryptoProvider>,
    accept: Accept,
}

impl ServerCertVerifier for Recorder {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        *self.seen.lock().unwrap_or_else(|p| p.into_inner()) = Some((
            end_entity.clone().into_owned(),
            intermediates
                .iter()
                .map(|c| c.clone().into_owned())
                .collect(),
        ));
        match &self.inner {
            Some(v) => v.verify_server_cert(end_entity, intermediates, server_name, ocsp, now),
            None => Ok(ServerCertVerified::assertion()),
        }
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
            &self.provider.signature_verification_algorithms,
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
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        let all = self
            .provider
            .signature_verification_algorithms
            .supported_schemes();
        all.into_iter()
            .filter(|s| match self.accept {
                Accept::Any => true,
                Accept::EcdsaOnly => matches!(
                    s,
                    SignatureScheme::ECDSA_NISTP256_SHA256
                        | SignatureScheme::ECDSA_NISTP384_SHA384
                        | SignatureScheme::ECDSA_NISTP521_SHA512
                ),
                Accept::RsaOnly => matches!(
                    s,
                    SignatureScheme::RSA_PSS_SHA256
                        | SignatureScheme::RSA_PSS_SHA384
                        | SignatureScheme::RSA_PSS_SHA512
                        | SignatureScheme::RSA_PKCS1_SHA256
                        | SignatureScheme::RSA_PKCS1_SHA384
                        | SignatureScheme::RSA_PKCS1_SHA512
                ),
            })
            .collect()
    }
}

fn provider(accept: Accept) -> Arc<CryptoProvider> {
    let mut p = aws_lc_rs::default_provider();
    // A TLS 1.2 client that only verifies RSA should only offer ECDHE_RSA suites, and vice versa.
    p.cipher_suites.retain(|s| match (accept, s) {
        (Accept::Any, _) | (_, rustls::SupportedCipherSuite::Tls13(_)) => true,
        (Accept::EcdsaOnly, rustls::SupportedCipherSuite::Tls12(t)) => t.sign.iter().any(|s| {
            matches!(
                s,
                SignatureScheme::ECDSA_NISTP256_SHA256 | SignatureScheme::ECDSA_NISTP384_SHA384
            )
        }),
        (Accept::RsaOnly, rustls::SupportedCipherSuite::Tls12(t)) => t.sign.iter().any(|s| {
            matches!(
                s,
                SignatureScheme::RSA_PSS_SHA256 | SignatureScheme::RSA_PKCS1_SHA256
            )
        }),
    });
    Arc::new(p)
}

impl TlsClient {
    pub fn new(options: ClientOptions) -> Self {
        let provider = provider(options.accept);
        let mut config = ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&options.versions)
            .expect("client versions")
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
        config.alpn_protocols = options.alpn.clone();
        config.enable_sni = options.sni.is_some();
        config.resumption = match (&options.shared_sessions, options.resumption) {
            (Some(store), _) => Resumption::store(store.clone()),
            (None, true) => Resumption::in_memory_sessions(64),
            (None, false) => Resumption::disabled(),
        };
        let mut client = Self {
            options,
            config: Arc::new(config),
            shared_verifier: None,
        };
        if client.options.resumption || client.options.shared_sessions.is_some() {
            client.shared_verifier = Some(client.verifier());
        }
        client
    }

    fn verifier(&self) -> Arc<Recorder> {
        if let Some(v) = &self.shared_verifier {
            *v.seen.lock().unwrap_or_else(|p| p.into_inner()) = None;
            return v.clone();
        }
        let provider = provider(self.options.accept);
        let inner = self.options.roots.as_ref().map(|roots| {
            let mut store = rustls::RootCertStore::empty();
            for r in roots {
                let _ = store.add(r.clone());
            }
            rustls::client::WebPkiServerVerifier::builder_with_provider(
                Arc::new(store),
                provider.clone(),
            )
            .build()
            .expect("verifier") as Arc<dyn ServerCertVerifier>
        });
        Arc::new(Recorder {
            seen: Mutex::new(None),
            inner,
            provider,
            accept: self.options.accept,
        })
    }

    /// Connects and completes the handshake.
    pub async fn connect(&self, addr: SocketAddr) -> io::Result<Connected> {
        let name = self
            .options
            .sni
            .clone()
            .unwrap_or_else(|| "unused.invalid".into());
        self.connect_as(addr, &name).await
    }

    /// Connects sending `sni` instead of the configured name (same sessions, same verifier).
    pub async fn connect_as(&self, addr: SocketAddr, sni: &str) -> io::Result<Connected> {
        let tcp = TcpStream::connect(addr).await?;
        self.handshake_as(tcp, sni).await
    }

    /// The handshake over a TCP connection the caller made (with its own socket options).
    pub async fn handshake(&self, tcp: TcpStream) -> io::Result<Connected> {
        let name = self
            .options
            .sni
            .clone()
            .unwrap_or_else(|| "unused.invalid".into());
        self.handshake_as(tcp, &name).await
    }

    async fn handshake_as(&self, tcp: TcpStream, sni: &str) -> io::Result<Connected> {
        let recorder = self.verifier();
        let mut config = (*self.config).clone();
        config
            .dangerous()
            .set_certificate_verifier(recorder.clone());
        let connector = TlsConnector::from(Arc::new(config));
        let _ = tcp.set_nodelay(true);
        let name = ServerName::try_from(sni.to_owned())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let stream = connector.connect(name, tcp).await?;
        let (_, conn) = stream.get_ref();
        let version = conn.protocol_version();
        let alpn = conn.alpn_protocol().map(<[u8]>::to_vec);
        let resumed = matches!(conn.handshake_kind(), Some(rustls::HandshakeKind::Resumed));
        let seen = recorder
            .seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        let (served, intermediates) = match seen {
            Some((ee, rest)) => (Some(ee), rest),
            None => (None, Vec::new()),
        };
        Ok(Connected {
            stream,
            served,
            intermediates,
            version,
            alpn,
            resumed,
        })
    }

    pub fn options(&self) -> &ClientOptions {
        &self.options
    }
}

/// A complete response.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: StatusCode,
    pub version: Version,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The echo backend's JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }

    /// Every value of a request header as the echo backend received it.
    pub fn echoed(&self, name: &str) -> Vec<String> {
        self.json()["headers"]
            .as_array()
            .map(|hs| {
                hs.iter()
                    .filter(|h| h[0].as_str() == Some(name))
                    .filter_map(|h| h[1].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    }
}

async fn collect(resp: Response<hyper::body::Incoming>) -> Result<Reply, hyper::Error> {
    let (parts, body) = resp.into_parts();
    let body = body.collect().await?.to_bytes();
    Ok(Reply {
        status: parts.status,
        version: parts.version,
        headers: parts.headers,
        body,
    })
}

/// HTTP/1.1 requests, one after another, over one connection.
pub async fn send_h1<S>(
    io: S,
    requests: Vec<Request<Full<Bytes>>>,
) -> Result<Vec<Reply>, hyper::Error>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io)).await?;
    tokio::spawn(conn);
    let mut out = Vec::new();
    for req in requests {
        sender.ready().await?;
        out.push(collect(sender.send_request(req).await?).await?);
    }
    Ok(out)
}

/// HTTP/2 requests, concurrently, over one connection. URIs must be absolute (they carry
/// `:authority`).
pub async fn send_h2<S>(
    io: S,
    requests: Vec<Request<Full<Bytes>>>,
) -> Result<Vec<Reply>, hyper::Error>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(io)).await?;
    tokio::spawn(conn);
    let futures = requests.into_iter().map(|req| {
        let mut sender = sender.clone();
        async move { collect(sender.send_request(req).await?).await }
    });
    futures_util::future::join_all(futures)
        .await
        .into_iter()
        .collect()
}

/// `GET path` with a Host header, as HTTP/1.1.
pub fn get(host: &str, path: &str) -> Request<Full<Bytes>> {
    Request::get(path)
        .header("host", host)
        .body(Full::new(Bytes::new()))
        .expect("request")
}

/// `GET https://authority/path`, as HTTP/2 sends it.
pub fn get_h2(authority: &str, path: &str) -> Request<Full<Bytes>> {
    Request::get(format!("https://{authority}{path}"))
        .version(Version::HTTP_2)
        .body(Full::new(Bytes::new()))
        .expect("request")
}
