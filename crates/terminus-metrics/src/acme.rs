//! Automated certificate management: orders by result, domains by status, the next renewal.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::names;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AcmeOrderLabels {
    /// `issued`, `invalid` (the CA refused a validation), `rate_limited`, `error`.
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AcmeStatusLabels {
    /// `waiting`, `in_progress`, `dns_verified`, `cert_issued`, `failing`, `failed`.
    pub status: &'static str,
}

#[derive(Clone, Debug)]
pub struct AcmeMetrics {
    pub orders: Family<AcmeOrderLabels, Counter>,
    pub domains: Family<AcmeStatusLabels, Gauge>,
    /// Unix time of the earliest scheduled renewal; 0 when none is scheduled.
    pub next_renewal: Gauge,
}

impl AcmeMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self::unregistered();
        registry.register(
            names::ACME_ORDERS,
            "ACME orders finished, by result",
            m.orders.clone(),
        );
        registry.register(
            names::ACME_DOMAINS,
            "Domains under automated certificate management, by status",
            m.domains.clone(),
        );
        registry.register(
            names::ACME_NEXT_RENEWAL,
            "Unix time of the next scheduled certificate renewal (0: none)",
            m.next_renewal.clone(),
        );
        m
    }

    /// Handles that count but are exported nowhere (for tools and tests).
    pub fn unregistered() -> Self {
        Self {
            orders: Family::default(),
            domains: Family::default(),
            next_renewal: Gauge::default(),
        }
    }

    pub fn order(&self, result: &'static str) {
        self.orders.get_or_create(&AcmeOrderLabels { result }).inc();
    }
}
