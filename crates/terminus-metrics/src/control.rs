//! Control-plane metrics: API changes, quarantined store entries, and certificate expiry
//! computed at scrape time.

use std::fmt;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::names;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ApiChangeLabels {
    /// `certs:add`, `certs:update`, `domains:add`, ...
    pub kind: &'static str,
    /// `ok` or the error id.
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReloadLabels {
    /// `ok` or `rejected`.
    pub result: &'static str,
}

#[derive(Clone, Debug)]
pub struct ControlMetrics {
    /// Config reloads (SIGHUP, `terminus reload`), by result.
    pub config_reloads: Family<ReloadLabels, Counter>,
    /// When the config file was last applied (start or reload), in Unix seconds.
    pub config_last_reload: Gauge,
    pub api_changes: Family<ApiChangeLabels, Counter>,
    /// Stored certificates not served (R17): the checksum failed, the record does not decode,
    /// or the private key cannot be used (a fleet router holding another fleet key).
    pub quarantined: Counter,
    /// 1 while the store is open and loaded, 0 when it is damaged or unreadable (or none is
    /// configured): the API cannot change anything then.
    pub store_available: Gauge,
}

impl ControlMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self {
            config_reloads: Family::default(),
            config_last_reload: Gauge::default(),
            api_changes: Family::default(),
            quarantined: Counter::default(),
            store_available: Gauge::default(),
        };
        registry.register(
            names::API_CHANGES,
            "Changes through the admin API, by kind and result",
            m.api_changes.clone(),
        );
        registry.register(
            names::STORE_QUARANTINED,
            "Stored certificates quarantined (R17: checksum mismatch, undecodable, or a private key that cannot be used)",
            m.quarantined.clone(),
        );
        registry.register(
            names::STORE_AVAILABLE,
            "1 while the store is open and loaded; 0 when it is damaged or unreadable, or none is configured",
            m.store_available.clone(),
        );
        registry.register(
            names::CONFIG_RELOADS,
            "Config reloads (SIGHUP or POST /v1/reload), by result: ok, or rejected (the running config stayed)",
            m.config_reloads.clone(),
        );
        registry.register(
            names::CONFIG_LAST_RELOAD,
            "When the config file was last applied, at start or by a reload (Unix seconds)",
            m.config_last_reload.clone(),
        );
        // Both results exist from the start, so a rate() over them never starts from nothing.
        for result in ["ok", "rejected"] {
            let _ = m.config_reloads.get_or_create(&ReloadLabels { result });
        }
        m
    }

    /// Counts a reload; a successful one also sets the last-success time.
    pub fn reload(&self, ok: bool, now: i64) {
        let result = if ok { "ok" } else { "rejected" };
        self.config_reloads
            .get_or_create(&ReloadLabels { result })
            .inc();
        if ok {
            self.config_last_reload.set(now);
        }
    }

    pub fn change(&self, kind: &'static str, result: &'static str) {
        self.api_changes
            .get_or_create(&ApiChangeLabels { kind, result })
            .inc();
    }
}

/// Something that can list certificates as (name, not-after in Unix seconds).
pub trait ExpirySource: Send + Sync + 'static {
    fn each(&self, f: &mut dyn FnMut(&str, i64));
    fn count(&self) -> usize;
}

/// `terminus_certificate_expiry_seconds{name}`: seconds until each certificate expires, computed
/// when scraped. Above `limit` certificates, only those expiring within 60 days get a series
/// (the alert that matters stays possible; a million series per scrape would not be), and
/// `terminus_certificates_expiring{within}` counts the rest.
pub struct ExpiryCollector {
    source: Box<dyn ExpirySource>,
    limit: usize,
    now: fn() -> i64,
}

impl fmt::Debug for ExpiryCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ExpiryCollector")
            .field("limit", &self.limit)
            .finish()
    }
}

const SIXTY_DAYS: i64 = 60 * 86_400;

impl ExpiryCollector {
    pub fn register(
        registry: &mut Registry,
        source: impl ExpirySource,
        limit: usize,
        now: fn() -> i64,
    ) {
        registry.register_collector(Box::new(Self {
            source: Box::new(source),
            limit,
            now,
        }));
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NameLabel {
    name: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WithinLabel {
    within: &'static str,
}

impl Collector for ExpiryCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        let now = (self.now)();
        let all = self.source.count() <= self.limit;
        let mut buckets = [0i64; 4];
        {
            let mut family = encoder.encode_descriptor(
                names::CERTIFICATE_EXPIRY,
                "Seconds until each certificate expires (negative once expired)",
                None,
                MetricType::Gauge,
            )?;
            let mut result = Ok(());
            self.source.each(&mut |name, not_after| {
                let left = not_after - now;
                for (i, days) in [7, 30, 60].iter().enumerate() {
                    if left < days * 86_400 {
                        buckets[i] += 1;
                    }
                }
                if left < 0 {
                    buckets[3] += 1;
                }
                if result.is_ok() && (all || left < SIXTY_DAYS) {
                    let labels = NameLabel {
                        name: name.to_owned(),
                    };
                    result = family
                        .encode_family(&labels)
                        .and_then(|m| ConstGauge::new(left).encode(m));
                }
            });
            result?;
        }
        let mut family = encoder.encode_descriptor(
            names::CERTIFICATES_EXPIRING,
            "Certificates expiring within 7, 30 or 60 days, or already expired",
            None,
            MetricType::Gauge,
        )?;
        for (within, n) in ["7d", "30d", "60d", "expired"].iter().zip(buckets) {
            ConstGauge::new(n).encode(family.encode_family(&WithinLabel { within })?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fixed(Vec<(String, i64)>);
    impl ExpirySource for Fixed {
        fn each(&self, f: &mut dyn FnMut(&str, i64)) {
            for (n, t) in &self.0 {
                f(n, *t);
            }
        }
        fn count(&self) -> usize {
            self.0.len()
        }
    }

    fn encode(limit: usize) -> String {
        let mut registry = Registry::default();
        let source = Fixed(vec![
            ("soon".into(), 1_000 + 10 * 86_400),
            ("later".into(), 1_000 + 365 * 86_400),
            ("gone".into(), 500),
        ]);
        ExpiryCollector::register(&mut registry, source, limit, || 1_000);
        let mut out = String::new();
        crate::encode_text(&mut out, &registry).unwrap();
        out
    }

    #[test]
    fn every_certificate_under_the_limit() {
        let out = encode(10);
        assert!(
            out.contains(r#"terminus_certificate_expiry_seconds{name="soon"} 864000"#),
            "{out}"
        );
        assert!(
            out.contains(r#"terminus_certificate_expiry_seconds{name="later"} 31536000"#),
            "{out}"
        );
        assert!(
            out.contains(r#"terminus_certificate_expiry_seconds{name="gone"} -500"#),
            "{out}"
        );
        assert!(
            out.contains(r#"terminus_certificates_expiring{within="30d"} 2"#),
            "{out}"
        );
        assert!(
            out.contains(r#"terminus_certificates_expiring{within="expired"} 1"#),
            "{out}"
        );
    }

    #[test]
    fn only_the_expiring_ones_over_the_limit() {
        let out = encode(2);
        assert!(out.contains(r#"{name="soon"}"#), "{out}");
        assert!(!out.contains(r#"{name="later"}"#), "{out}");
    }
}
