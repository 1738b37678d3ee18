//! Putting challenge answers where the CA looks for them, and taking them away again.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use instant_acme::KeyAuthorization;
use rcgen::{CertificateParams, CustomExtension, KeyPair, PKCS_ECDSA_P256_SHA256};
use rustls::crypto::CryptoProvider;
use rustls::sign::CertifiedKey;
use rustls_pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use terminus_store::fleet::orders::OrderLock;
use terminus_tls::AcmeChallenges;
use tokio::io::AsyncReadExt;

use crate::error::{AcmeError, Result};

/// Most of a hook's stderr kept as the failure reason.
const HOOK_STDERR: usize = 2048;

/// The answers one order put up. HTTP-01 and TLS-ALPN-01 answers come down when this is
/// dropped, whatever way the order ended; DNS-01 records are cleared by [`Answers::clear`]
/// (it runs the hook). In a fleet each answer is also put in etcd under the order's lock
/// (see [`crate::fleet`]), so every router serves it, and comes down with the lock.
pub(crate) struct Answers {
    challenges: Arc<AcmeChallenges>,
    fleet: Option<Arc<OrderLock>>,
    http: Vec<String>,
    alpn: Vec<String>,
    pub(crate) dns: Vec<(String, String)>,
}

impl Answers {
    pub(crate) fn new(challenges: Arc<AcmeChallenges>, fleet: Option<Arc<OrderLock>>) -> Self {
        Self {
            challenges,
            fleet,
            http: Vec::new(),
            alpn: Vec::new(),
            dns: Vec::new(),
        }
    }

    pub(crate) async fn http(
        &mut self,
        host: &str,
        token: &str,
        ka: &KeyAuthorization,
    ) -> Result<()> {
        self.challenges.set_http(host, token, ka.as_str());
        self.http.push(token.to_owned());
        if let Some(lock) = &self.fleet {
            let (name, value) = crate::fleet::http_answer(host, token, ka.as_str());
            share(lock, &name, value).await?;
        }
        Ok(())
    }

    pub(crate) async fn tls_alpn(
        &mut self,
        host: &str,
        ka: &KeyAuthorization,
        provider: &CryptoProvider,
    ) -> Result<()> {
        let key = challenge_cert(host, ka.digest().as_ref(), provider)?;
        self.challenges.set_tls_alpn(host, key);
        self.alpn.push(host.to_owned());
        if let Some(lock) = &self.fleet {
            let (name, value) = crate::fleet::tls_alpn_answer(host, ka.digest().as_ref());
            share(lock, &name, value).await?;
        }
        Ok(())
    }

    pub(crate) async fn dns(
        &mut self,
        hook: &Path,
        timeout: Duration,
        fqdn: &str,
        value: &str,
    ) -> Result<()> {
        run_hook(hook, timeout, "set", fqdn, value).await?;
        self.dns.push((fqdn.to_owned(), value.to_owned()));
        Ok(())
    }

    /// Clears the DNS records this order set (failures are logged: the record is harmless).
    pub(crate) async fn clear(&mut self, hook: Option<&PathBuf>, timeout: Duration) {
        let Some(hook) = hook else { return };
        for (fqdn, value) in std::mem::take(&mut self.dns) {
            if let Err(e) = run_hook(hook, timeout, "clear", &fqdn, &value).await {
                tracing::warn!(record = %fqdn, error = %e, "the DNS hook could not clear a challenge record");
            }
        }
    }
}

impl Drop for Answers {
    fn drop(&mut self) {
        for token in &self.http {
            self.challenges.clear_http(token);
        }
        for host in &self.alpn {
            self.challenges.clear_tls_alpn(host);
        }
    }
}

/// Puts one answer in the fleet's store, for every router to serve.
async fn share(lock: &OrderLock, name: &str, value: Vec<u8>) -> Result<()> {
    lock.put_challenge(name, value).await.map_err(|e| {
        AcmeError::Unanswerable(format!(
            "the challenge answer cannot be shared with the fleet: {e}"
        ))
    })
}

/// The TLS-ALPN-01 certificate (RFC 8737 §3): self-signed for `host`, carrying `digest` (the
/// SHA-256 of the key authorization) in the critical acmeIdentifier extension. Any key will
/// do: only the extension is checked, so each router of a fleet makes its own.
pub(crate) fn challenge_cert(
    host: &str,
    digest: &[u8],
    provider: &CryptoProvider,
) -> Result<Arc<CertifiedKey>> {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(AcmeError::Key)?;
    let mut params = CertificateParams::new(vec![host.to_owned()]).map_err(AcmeError::Key)?;
    params.custom_extensions = vec![CustomExtension::new_acme_identifier(digest)];
    let cert = params.self_signed(&key).map_err(AcmeError::Key)?;
    let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let signer = provider
        .key_provider
        .load_private_key(der)
        .map_err(|e| AcmeError::Unanswerable(format!("challenge key: {e}")))?;
    Ok(Arc::new(CertifiedKey::new(
        vec![cert.der().clone()],
        signer,
    )))
}

/// Runs `HOOK ACTION FQDN VALUE` with a timeout; a non-zero exit is an error carrying its
/// stderr.
async fn run_hook(
    hook: &Path,
    timeout: Duration,
    action: &str,
    fqdn: &str,
    value: &str,
) -> Result<()> {
    let mut child = tokio::process::Command::new(hook)
        .args([action, fqdn, value])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| AcmeError::Hook(format!("cannot run {}: {e}", hook.display())))?;
    let mut stderr = child.stderr.take();
    let run = async {
        let mut text = Vec::new();
        if let Some(s) = stderr.as_mut() {
            let _ = s.take(HOOK_STDERR as u64).read_to_end(&mut text).await;
        }
        let status = child.wait().await;
        (status, text)
    };
    let (status, text) = tokio::time::timeout(timeout, run).await.map_err(|_| {
        AcmeError::Hook(format!(
            "{} {action} {fqdn} did not finish within {}s",
            hook.display(),
            timeout.as_secs()
        ))
    })?;
    let status = status.map_err(|e| AcmeError::Hook(e.to_string()))?;
    if status.success() {
        return Ok(());
    }
    let text = String::from_utf8_lossy(&text);
    let text = text.trim();
    Err(AcmeError::Hook(format!(
        "{} {action} {fqdn} exited with {status}{}{text}",
        hook.display(),
        if text.is_empty() { "" } else { ": " }
    )))
}
