//! Logs: router log lines (target `terminus::access`) go to stdout as `<time> <logfmt line>`,
//! batched (written by a thread every 100 ms, or sooner once 64 KiB wait, so a busy router does
//! not make one system call per request); everything else goes to stderr, filtered by `RUST_LOG` (default `info`).

use std::fmt;
use std::io::{IsTerminal, Write};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
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
/// Wake the writer thread early once this much is waiting.
const FLUSH_AT: usize = 64 * 1024;
/// Past this much waiting (stdout is not keeping up), requests write the batch themselves:
/// back-pressure rather than unbounded memory.
const MAX_PENDING: usize = 16 * 1024 * 1024;

static BATCH: OnceLock<Batched> = OnceLock::new();

/// Router log lines waiting to be written to stdout by the `terminus-log` thread, so the request
/// path appends to memory and makes no system call.
#[derive(Clone, Default)]
struct Batched(Arc<Pending>);

#[derive(Default)]
struct Pending {
    lines: Mutex<Vec<u8>>,
    full: Condvar,
}

impl Batched {
    fn lines(&self) -> MutexGuard<'_, Vec<u8>> {
        self.0.lines.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Writes out what is waiting. Taken under stdout's lock, so batches keep their order
    /// whichever thread writes them.
    fn write_out(&self) {
        let mut out = std::io::stdout().lock();
        let data = std::mem::take(&mut *self.lines());
        if !data.is_empty() {
            let _ = out.write_all(&data);
            let _ = out.flush();
        }
    }

    /// The writer thread: every FLUSH_EVERY, or sooner when FLUSH_AT is waiting.
    fn run(&self) {
        loop {
            let lines = self.lines();
            let (lines, _) = self
                .0
                .full
                .wait_timeout(lines, FLUSH_EVERY)
                .unwrap_or_else(|p| p.into_inner());
            drop(lines);
            self.write_out();
        }
    }
}

impl Write for Batched {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        let pending = {
            let mut lines = self.lines();
            lines.extend_from_slice(bytes);
            lines.len()
        };
        if pending >= MAX_PENDING {
            self.write_out();
        } else if pending >= FLUSH_AT {
            self.0.full.notify_one();
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
        let writer = batch.clone();
        let _ = std::thread::Builder::new()
            .name("terminus-log".into())
            .spawn(move || writer.run());
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
