//! Logs: router log lines (target `terminus::access`) go to stdout as `<time> <logfmt line>`,
//! batched (written every 100 ms or every 64 KiB, so a busy router does not make one system call
//! per request); everything else goes to stderr, filtered by `RUST_LOG` (default `info`).

use std::fmt;
use std::io::{IsTerminal, Write};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use terminus_proxy::ACCESS_TARGET;
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::filter::{EnvFilter, FilterExt, Targets};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::Layer;

const FLUSH_EVERY: Duration = Duration::from_millis(100);
const FLUSH_AT: usize = 64 * 1024;

static BATCH: OnceLock<Batched> = OnceLock::new();

/// Router log lines waiting to be written to stdout.
#[derive(Clone, Default)]
struct Batched(Arc<Mutex<Vec<u8>>>);

impl Batched {
    fn write_out(&self) {
        let data = std::mem::take(&mut *self.0.lock().unwrap_or_else(|p| p.into_inner()));
        if !data.is_empty() {
            let mut out = std::io::stdout().lock();
            let _ = out.write_all(&data);
            let _ = out.flush();
        }
    }
}

impl Write for Batched {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        let full = {
            let mut buf = self.0.lock().unwrap_or_else(|p| p.into_inner());
            buf.extend_from_slice(bytes);
            buf.len() >= FLUSH_AT
        };
        if full {
            self.write_out();
        }
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Batched {
    type Writer = Batched;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

/// Writes out router log lines still buffered (call before exiting).
pub fn flush() {
    if let Some(b) = BATCH.get() {
        b.write_out();
    }
}

/// Installs the global subscriber. Safe to call once per process.
pub fn init() {
    let batch = BATCH.get_or_init(|| {
        let batch = Batched::default();
        let flusher = batch.clone();
        let _ = std::thread::Builder::new()
            .name("terminus-log".into())
            .spawn(move || loop {
                std::thread::sleep(FLUSH_EVERY);
                flusher.write_out();
            });
        batch
    });
    let access = tracing_subscriber::fmt::layer()
        .with_writer(batch.clone())
        .event_format(AccessLine)
        .with_filter(Targets::new().with_target(ACCESS_TARGET, tracing::Level::TRACE));
    let env = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let not_access = Targets::new()
        .with_default(tracing::Level::TRACE)
        .with_target(ACCESS_TARGET, tracing::level_filters::LevelFilter::OFF);
    let other = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_filter(env.and(not_access));
    let _ = tracing_subscriber::registry()
        .with(access)
        .with(other)
        .try_init();
}

struct AccessLine;

impl<S, N> FormatEvent<S, N> for AccessLine
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _ctx: &FmtContext<'_, S, N>,
        mut w: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let now = time::OffsetDateTime::now_utc();
        let mut message = Message(String::new());
        event.record(&mut message);
        writeln!(
            w,
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:06}Z {}",
            now.year(),
            u8::from(now.month()),
            now.day(),
            now.hour(),
            now.minute(),
            now.second(),
            now.microsecond(),
            message.0
        )
    }
}

struct Message(String);

impl Visit for Message {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.0.push_str(value);
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if field.name() == "message" {
            use fmt::Write;
            let _ = write!(self.0, "{value:?}");
        }
    }
}
