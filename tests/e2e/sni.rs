//! Certificate selection by SNI through the real router.

use std::time::Duration;

use terminus_test_support::{Accept, AnyNameSessions, Backend, ClientOptions, KeyType, TlsClient};

use rustls::pki_types::CertificateDer;

use crate::harness::{served_names, Builder, TestRouter};

async fn names(r: &TestRouter, sni: &str) -> Vec<String> {
    served_names(&r.client(sni).connect(r.https()).await.expect(sni))
}

#[tokio::test]
async fn exact_wildcard_default_and_unknown() {
    let backend = Backend::echo("web").await;
    let mut b = Builder::new();
    b.cert("wild", &["*.example.com"], KeyType::EcdsaP256);
    b.cert("www", &["www.example.com"], KeyType::EcdsaP256);
    b.app("web", &[backend.addr]);
    let r = b.start().await;

    assert_eq!(names(&r, "www.example.com").await, ["www.example.com"]);
    assert_eq!(names(&r, "WWW.EXAMPLE.COM").await, ["www.example.com"]);
    assert_eq!(names(&r, "api.example.com").await, ["*.example.com"]);

    // One label only: neither the apex nor two labels match the wildcard, and there is no default.
    for sni in ["example.com", "a.b.example.com", "other.test"] {
        let err = TlsClient::new(ClientOptions::sni(sni))
            .connect(r.https())
            .await
            .unwrap_err();
        assert!(
            err.to_string().contains("UnrecognisedName")
                || err.to_string().contains("unrecognized"),
            "{sni}: {err}"
        );
    }
    let err = TlsClient::new(ClientOptions::no_sni())
        .connect(r.https())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("UnrecognisedName"), "{err}");
    assert_eq!(
        r.metric(
            r#"terminus_tls_handshakes_total{result="failed",version="",reason="unknown_sni"}"#
        )
        .await,
        4.0
    );
    r.shutdown().await;
}

#[tokio::test]
async fn trailing_dot_sni_is_the_same_name() {
    let mut b = Builder::new();
    b.cert("www", &["www.example.com"], KeyType::EcdsaP256);
    let r = b.start().await;
    // rustls clients drop the trailing dot themselves; openssl sends it verbatim (see tools.rs).
    let c = TlsClient::new(ClientOptions::sni("www.example.com."));
    assert_eq!(
        served_names(&c.connect(r.https()).await.unwrap()),
        ["www.example.com"]
    );
    r.shutdown().await;
}

#[tokio::test]
async fn default_certificate_for_no_sni_and_unknown_names() {
    let mut b = Builder::new();
    b.cert("platform", &["*.terminusapp.test"], KeyType::EcdsaP256);
    b.cert("www", &["www.example.com"], KeyType::EcdsaP256);
    b.default_cert("platform");
    let r = b.start().await;
    for opts in [
        ClientOptions::no_sni(),
        ClientOptions::sni("unknown.example.org"),
    ] {
        let conn = TlsClient::new(opts).connect(r.https()).await.unwrap();
        assert_eq!(served_names(&conn), ["*.terminusapp.test"]);
    }
    r.shutdown().await;
}

#[tokio::test]
async fn ecdsa_or_rsa_by_the_client_signature_schemes() {
    let mut b = Builder::new();
    let ec = b.cert("ec", &["both.example.com"], KeyType::EcdsaP256);
    let rsa = b.cert("rsa", &["both.example.com"], KeyType::Rsa2048);
    let r = b.start().await;
    async fn served(r: &TestRouter, accept: Accept, tls12: bool) -> CertificateDer<'static> {
        let mut opts = ClientOptions::sni("both.example.com").accept(accept);
        if tls12 {
            opts = opts.tls12();
        }
        TlsClient::new(opts)
            .connect(r.https())
            .await
            .unwrap()
            .served
            .unwrap()
    }
    assert_eq!(
        served(&r, Accept::Any, false).await,
        ec.cert_der,
        "ECDSA preferred when both work"
    );
    assert_eq!(served(&r, Accept::EcdsaOnly, false).await, ec.cert_der);
    assert_eq!(served(&r, Accept::RsaOnly, false).await, rsa.cert_der);
    assert_eq!(served(&r, Accept::RsaOnly, true).await, rsa.cert_der);
    assert_eq!(served(&r, Accept::EcdsaOnly, true).await, ec.cert_der);
    r.shutdown().await;
}

#[tokio::test]
async fn pinned_domain_gets_its_certificate() {
    let backend = Backend::echo("web").await;
    let mut b = Builder::new();
    b.cert("wild", &["*.example.com"], KeyType::EcdsaP256);
    let pinned = b.cert(
        "shop",
        &["shop.example.com", "*.example.com"],
        KeyType::EcdsaP256,
    );
    b.app("web", &[backend.addr]);
    b.domain("shop.example.com", "web", Some("shop"));
    let r = b.start().await;
    let conn = r
        .client("shop.example.com")
        .connect(r.https())
        .await
        .unwrap();
    assert_eq!(conn.served.unwrap(), pinned.cert_der);
    r.shutdown().await;
}

#[tokio::test]
async fn sessions_resume_but_never_under_another_name() {
    let mut b = Builder::new();
    b.cert("wild", &["*.example.com"], KeyType::EcdsaP256);
    let r = b.start().await;
    for tls12 in [false, true] {
        let mut opts = ClientOptions::sni("a.example.com");
        opts.shared_sessions = Some(std::sync::Arc::new(AnyNameSessions::default()));
        if tls12 {
            opts = opts.tls12();
        }
        let client = TlsClient::new(opts);
        let first = client.connect(r.https()).await.unwrap();
        assert!(!first.resumed);
        // TLS 1.3 tickets arrive after the handshake; let the client read them.
        read_tickets(first).await;
        let again = client.connect(r.https()).await.unwrap();
        assert!(again.resumed, "the same name resumes (tls12={tls12})");
        read_tickets(again).await;

        // The client offers a.example.com's session while asking for b.example.com: the
        // certificate covers both, but the server must do a full handshake.
        let other = client.connect_as(r.https(), "b.example.com").await.unwrap();
        assert!(
            !other.resumed,
            "a session never resumes under another SNI (tls12={tls12})"
        );
        assert!(other.served.is_some());
    }
    r.shutdown().await;
}

/// Lets the client process post-handshake messages (TLS 1.3 session tickets).
async fn read_tickets(mut conn: terminus_test_support::Connected) {
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 1];
    let _ = tokio::time::timeout(Duration::from_millis(100), conn.stream.read(&mut buf)).await;
}
