//! The terminus binary's library half: startup from a config and logging, shared by `main`
//! and the end-to-end tests.

pub mod check;
pub mod cli;
pub mod fleet;
pub mod logging;
pub mod reload;
pub mod startup;

pub use startup::{
    start, start_with, unix_now, CertLoadError, Router, StartError, StartOptions, StoreStatus,
};
