//! Stage two: defaults and meaning, one function per section of the file. Sections that refer to
//! others (a domain's app, the default certificate) are checked after what they refer to.

mod acme;
mod admin;
mod apps;
mod certificates;
mod domains;
mod listeners;
mod proxy;
mod router;
mod store;
mod timeouts;
mod tls;

#[cfg(test)]
mod tests;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::raw::RawConfig;
use crate::{parse_duration, Config, ConfigError, Name, Result};

pub(crate) use admin::default_admin_address;

pub(crate) fn parse_raw(text: &str, path: &Path) -> Result<RawConfig> {
    let syntax = |key: String, err: &toml::de::Error| ConfigError::Syntax {
        file: path.to_path_buf(),
        line: err
            .span()
            .map(|span| line_of(text, span.start))
            .unwrap_or(1),
        key,
        message: err.message().trim().to_owned(),
    };
    let de = toml::Deserializer::parse(text).map_err(|e| syntax("(document)".into(), &e))?;
    serde_path_to_error::deserialize(de).map_err(|e| {
        let key = match e.path().to_string() {
            p if p == "." => "(top level)".to_owned(),
            p => p,
        };
        syntax(key, e.inner())
    })
}

fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

pub(crate) fn validate(raw: RawConfig, file: &Path) -> Result<Config> {
    let c = Checker { file };
    let listeners = listeners::validate(&c, &raw.listeners)?;
    let admin = admin::validate(&c, &raw.admin, &listeners)?;
    let certificates = certificates::validate(&c, &raw.certificates)?;
    let store = raw
        .store
        .as_ref()
        .map(|s| store::validate(&c, s))
        .transpose()?;
    let acme = raw
        .acme
        .as_ref()
        .map(|a| acme::validate(&c, a, store.is_some(), &listeners))
        .transpose()?;
    let tls = tls::validate(&c, &raw.tls, &certificates, store.is_some())?;
    let timeouts = timeouts::validate(&c, &raw.timeouts)?;
    let proxy = proxy::validate(&c, &raw.proxy)?;
    let apps = apps::validate(&c, &raw.apps)?;
    let router = router::validate(&c, &raw.router, &apps)?;
    let domains = domains::validate(&c, &raw.domains, &apps, &certificates)?;
    Ok(Config {
        source: Some(file.to_path_buf()),
        router,
        listeners,
        admin,
        tls,
        timeouts,
        proxy,
        store,
        acme,
        certificates,
        apps,
        domains,
    })
}

/// Builds errors that name the file and the key.
struct Checker<'a> {
    file: &'a Path,
}

impl Checker<'_> {
    fn err(&self, key: impl Into<String>, message: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            file: self.file.to_path_buf(),
            key: key.into(),
            message: message.into(),
        }
    }

    fn addr(&self, key: &str, text: &str) -> Result<SocketAddr> {
        text.trim().parse().map_err(|_| {
            self.err(
                key,
                format!("'{text}' is not an address: write IP:PORT, e.g. 0.0.0.0:443 or [::]:443"),
            )
        })
    }

    fn backend(&self, key: &str, text: &str) -> Result<crate::BackendAddr> {
        crate::BackendAddr::parse(text)
            .map_err(|why| self.err(key, format!("'{text}' is not a backend: {why}")))
    }

    fn duration(&self, key: &str, text: Option<&String>, default: Duration) -> Result<Duration> {
        let Some(text) = text else {
            return Ok(default);
        };
        let d = parse_duration(text).map_err(|e| self.err(key, e.to_string()))?;
        if d.is_zero() {
            return Err(self.err(key, "must be greater than zero"));
        }
        Ok(d)
    }

    fn name(&self, key: &str, text: &str) -> Result<Name> {
        Name::parse(text).map_err(|e| self.err(key, e.to_string()))
    }

    fn path(&self, text: &str) -> PathBuf {
        let p = PathBuf::from(text);
        if p.is_absolute() {
            return p;
        }
        match self.file.parent() {
            Some(dir) => dir.join(p),
            None => p,
        }
    }
}
