//! The terminus binary's library half: startup from a config, reload, the zero-downtime
//! upgrade hand-over ([`upgrade`]) and logging, shared by `main` and the end-to-end tests.

pub mod check;
pub mod cli;
pub mod fleet;
pub mod logging;
pub mod reload;
pub mod startup;
pub mod upgrade;

pub use startup::{
    start, start_inheriting, start_with, unix_now, CertLoadError, Inherited, Router, StartError,
    StartOptions, StoreStatus,
};
