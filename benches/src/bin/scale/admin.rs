//! The admin API through the typed client the CLI uses.

use std::net::SocketAddr;

use anyhow::Context;
use terminus_api::{Blocking, CertChange, ClientError};

#[derive(Debug)]
pub(crate) struct Admin {
    pub(crate) addr: SocketAddr,
    client: Blocking,
}

impl Admin {
    pub(crate) fn new(addr: SocketAddr, token: &str) -> anyhow::Result<Self> {
        Ok(Self {
            addr,
            client: Blocking::new(&format!("http://{addr}"), Some(token.into()))?,
        })
    }

    /// certs:add (`name`, new) or certs:update (`name`, existing) of a PEM pair.
    pub(crate) fn upload(
        &self,
        name: &str,
        update: bool,
        cert_pem: &str,
        key_pem: &str,
    ) -> Result<CertChange, ClientError> {
        let c = self.client.client();
        if update {
            let up = terminus_api::CertReplace {
                certificate_chain: cert_pem.into(),
                private_key: key_pem.into(),
                ..Default::default()
            };
            self.client.block_on(c.update_cert(name, &up))
        } else {
            let up = terminus_api::CertUpload {
                certificate_chain: cert_pem.into(),
                private_key: key_pem.into(),
                name: Some(name.into()),
                ..Default::default()
            };
            self.client.block_on(c.add_cert(&up))
        }
    }

    /// certs:remove, confirmed.
    pub(crate) fn remove(&self, name: &str) -> Result<(), ClientError> {
        let c = self.client.client();
        self.client.block_on(c.remove_cert(name, Some(name)))?;
        Ok(())
    }

    /// A counter or gauge from `/metrics`: the sum of the samples whose line starts with
    /// `prefix` (a metric name with some of its labels).
    pub(crate) fn metric(&self, prefix: &str) -> anyhow::Result<f64> {
        let c = self.client.client();
        let (status, _, body) = self
            .client
            .block_on(c.send(http::Method::GET, "/metrics", bytes::Bytes::new(), None))
            .context("GET /metrics")?;
        anyhow::ensure!(status == 200, "GET /metrics answered {status}");
        Ok(String::from_utf8_lossy(&body)
            .lines()
            .filter(|l| l.starts_with(prefix))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum())
    }
}
