//! Readiness for `/readyz`: where the router is between starting and serving, and again while
//! it drains. `/healthz` says only that the process answers; `/readyz` says whether a load
//! balancer should send it traffic. Read without a lock (one atomic load per probe).

use std::sync::atomic::{AtomicU8, Ordering};

/// Where the router is. Only [`Stage::Ready`] answers 200.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Stage {
    /// The certificate index is being filled from the config file and the store.
    LoadingCertificates = 0,
    /// Certificates are loaded; the data-plane listeners are being bound.
    Binding = 1,
    /// Listeners bound, certificates loaded: serving.
    Ready = 2,
    /// Shutting down: no new connections, open ones finishing.
    Draining = 3,
}

impl Stage {
    /// The body `/readyz` answers with 503 in this stage: why the router is not ready.
    pub fn reason(self) -> &'static str {
        match self {
            Self::LoadingCertificates => {
                "not ready: loading certificates (config file and store)\n"
            }
            Self::Binding => "not ready: binding the listeners\n",
            Self::Ready => "ready\n",
            Self::Draining => "not ready: shutting down, draining connections\n",
        }
    }

    fn from_u8(v: u8) -> Self {
        match v {
            0 => Self::LoadingCertificates,
            1 => Self::Binding,
            2 => Self::Ready,
            _ => Self::Draining,
        }
    }
}

/// The router's current [`Stage`], shared between startup, shutdown and the admin listener.
#[derive(Debug)]
pub struct Readiness(AtomicU8);

impl Readiness {
    pub fn new(stage: Stage) -> Self {
        Self(AtomicU8::new(stage as u8))
    }

    pub fn set(&self, stage: Stage) {
        self.0.store(stage as u8, Ordering::Release);
    }

    pub fn stage(&self) -> Stage {
        Stage::from_u8(self.0.load(Ordering::Acquire))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stages_round_trip_and_only_ready_is_ready() {
        let r = Readiness::new(Stage::LoadingCertificates);
        for stage in [
            Stage::LoadingCertificates,
            Stage::Binding,
            Stage::Ready,
            Stage::Draining,
        ] {
            r.set(stage);
            assert_eq!(r.stage(), stage);
            assert_eq!(stage.reason() == "ready\n", stage == Stage::Ready);
        }
    }
}
