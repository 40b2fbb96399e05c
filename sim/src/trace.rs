//! The trace: one line per event, `time_ms node what`, written only when asked. Two runs of
//! one seed write the same bytes.

use std::fmt::Arguments;
use std::sync::{Arc, Mutex};
use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::Path;

pub(crate) struct Trace {
    out: Option<BufWriter<File>>,
    lines: u64,
    /// The first write error; the run goes on and the report says the trace is incomplete.
    error: Option<io::Error>,
}

impl Trace {
    pub(crate) fn off() -> Self {
        Self { out: None, lines: 0, error: None }
    }

    pub(crate) fn to_file(path: &Path) -> Self {
        match File::create(path) {
            Ok(f) => Self { out: Some(BufWriter::with_capacity(1 << 16, f)), lines: 0, error: None },
            Err(e) => Self { out: None, lines: 0, error: Some(e) },
        }
    }

    /// Whether lines are wanted: callers skip formatting when not.
    pub(crate) fn on(&self) -> bool {
        self.out.is_some()
    }

    pub(crate) fn line(&mut self, now_ms: u64, who: &str, what: Arguments<'_>) {
        let Some(out) = self.out.as_mut() else { return };
        self.lines += 1;
        if let Err(e) = writeln!(out, "{now_ms:>10} {who:<8} {what}") {
            self.error.get_or_insert(e);
            self.out = None;
        }
    }

    /// A line without time or node (the plan at the top).
    pub(crate) fn raw(&mut self, text: &str) {
        let Some(out) = self.out.as_mut() else { return };
        for l in text.lines() {
            self.lines += 1;
            if let Err(e) = writeln!(out, "# {l}") {
                self.error.get_or_insert(e);
                self.out = None;
                return;
            }
        }
    }

    /// Flushes; returns the number of lines and the first error, if any.
    pub(crate) fn finish(mut self) -> (u64, Option<String>) {
        if let Some(mut out) = self.out.take() {
            if let Err(e) = out.flush() {
                self.error.get_or_insert(e);
            }
        }
        (self.lines, self.error.map(|e| e.to_string()))
    }
}

/// What the cores log through `tracing` while a traced run goes on: captured on this thread
/// only, then copied into the trace after each call into a core, under that node's name.
#[derive(Clone, Default)]
pub(crate) struct CoreLogs(Arc<Mutex<Vec<u8>>>);

/// The log levels copied into the trace. Fixed here: the environment never changes a trace.
const CORE_LOG_FILTER: &str = "foca=debug,shoal_discovery=debug";

struct CoreLogWriter(Arc<Mutex<Vec<u8>>>);

impl Write for CoreLogWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl CoreLogs {
    /// A subscriber that writes plain lines (no time, no colours, no thread) into `self`.
    pub(crate) fn subscriber(&self) -> impl tracing::Subscriber + Send + Sync + 'static {
        let buf = self.0.clone();
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(CORE_LOG_FILTER))
            .without_time()
            .with_ansi(false)
            .with_thread_ids(false)
            .with_thread_names(false)
            .with_writer(move || CoreLogWriter(buf.clone()))
            .finish()
    }

    /// Takes what was logged since the last call.
    pub(crate) fn take(&self) -> Vec<u8> {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(|p| p.into_inner()))
    }
}
