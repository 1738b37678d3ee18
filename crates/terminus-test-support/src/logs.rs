//! Captures router log lines (target `terminus::access`) from every thread of the test process,
//! so a test can find the line of its own request by a unique request id or path; and every
//! event of terminus' own targets, at every level, with all its fields, so a test can check what
//! the logs never contain.

use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::Layer;

const ACCESS_TARGET: &str = "terminus::access";

static LINES: OnceLock<Mutex<Vec<String>>> = OnceLock::new();
static ALL: Mutex<Vec<String>> = Mutex::new(Vec::new());

struct Capture;

struct Message(String);

/// Every field of an event, `name=value`.
struct Fields(String);

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.push_str(&format!(" {}={value:?}", field.name()));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.push_str(&format!(" {}={value}", field.name()));
    }
}

impl Visit for Message {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.0 = format!("{value:?}");
        }
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.0 = value.to_owned();
        }
    }
}

impl<S: Subscriber> Layer<S> for Capture {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let target = event.metadata().target();
        if target.starts_with("terminus") {
            let mut f = Fields(format!("{} {target}:", event.metadata().level()));
            event.record(&mut f);
            ALL.lock().unwrap_or_else(|p| p.into_inner()).push(f.0);
        }
        if target != ACCESS_TARGET {
            return;
        }
        let mut m = Message(String::new());
        event.record(&mut m);
        if let Some(lines) = LINES.get() {
            lines.lock().unwrap_or_else(|p| p.into_inner()).push(m.0);
        }
    }
}

/// Installs the capture (once per process; later calls do nothing). Other logs go to the test
/// output when `RUST_LOG` is set.
pub fn capture() {
    if LINES.set(Mutex::new(Vec::new())).is_ok() {
        let fmt = std::env::var("RUST_LOG").ok().map(|filter| {
            tracing_subscriber::fmt::layer()
                .with_test_writer()
                .with_filter(tracing_subscriber::EnvFilter::new(filter))
        });
        let _ = tracing_subscriber::registry()
            .with(Capture)
            .with(fmt)
            .try_init();
    }
}

/// Every event of terminus' own targets logged so far in this process, at every level, each
/// as `LEVEL target: field=value ...`.
pub fn all() -> Vec<String> {
    ALL.lock().unwrap_or_else(|p| p.into_inner()).clone()
}

/// Waits up to `timeout` for a log line containing `needle`.
pub async fn find(needle: &str, timeout: Duration) -> Option<String> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(lines) = LINES.get() {
            let lines = lines.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(l) = lines.iter().find(|l| l.contains(needle)) {
                return Some(l.clone());
            }
        }
        if tokio::time::Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
