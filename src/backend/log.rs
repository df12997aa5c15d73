//! The server log (the backend's stdout and stderr), sent to `tracing` and kept briefly so that
//! a failed start or a fatal error can say why.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

/// How many recent log lines are kept for error reports.
const KEPT_LINES: usize = 40;

/// Line-buffers the backend's output and forwards complete lines to `tracing` (target
/// `pglite_harness::server_log`, quiet unless enabled).
#[derive(Debug, Default)]
pub(crate) struct ServerLog {
    inner: Mutex<LogState>,
    /// The instance's name, put on every line as the field `instance`.
    label: Option<String>,
}

#[derive(Debug, Default)]
struct LogState {
    partial: Vec<u8>,
    recent: VecDeque<String>,
}

impl ServerLog {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// A log whose lines carry the field `instance = label`.
    pub fn labelled(label: Option<String>) -> Arc<Self> {
        Arc::new(Self {
            label,
            ..Self::default()
        })
    }

    /// Accepts bytes written to fd 1 or 2.
    pub fn write(&self, bytes: &[u8]) {
        let mut state = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        state.partial.extend_from_slice(bytes);
        while let Some(end) = state.partial.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = state.partial.drain(..=end).collect();
            let line = String::from_utf8_lossy(&line[..line.len() - 1])
                .trim_end()
                .to_owned();
            if line.is_empty() || line == "backend>" {
                continue;
            }
            emit(&line, self.label.as_deref().unwrap_or(""));
            if state.recent.len() == KEPT_LINES {
                state.recent.pop_front();
            }
            state.recent.push_back(line);
        }
    }

    /// The most recent lines, oldest first.
    pub fn recent(&self) -> Vec<String> {
        let state = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        state.recent.iter().cloned().collect()
    }

    /// The most recent FATAL/PANIC/ERROR line, or else the last line.
    pub fn last_problem(&self) -> Option<String> {
        let recent = self.recent();
        recent
            .iter()
            .rev()
            .find(|l| l.contains("FATAL:") || l.contains("PANIC:"))
            .or_else(|| recent.iter().rev().find(|l| l.contains("ERROR:")))
            .or_else(|| recent.last())
            .cloned()
    }
}

fn emit(line: &str, instance: &str) {
    const TARGET: &str = "pglite_harness::server_log";
    if line.contains("PANIC:")
        || line.contains("FATAL:")
        || line.contains("ERROR:")
        || line.contains("WARNING:")
    {
        tracing::debug!(target: TARGET, instance, "{line}");
    } else {
        tracing::trace!(target: TARGET, instance, "{line}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_assembled_across_writes_and_the_fatal_one_is_found() {
        let log = ServerLog::new();
        log.write(b"LOG:  starting\nFATAL:  could not open ");
        log.write(b"file \"x\"\nLOG:  shutting down\n");
        assert_eq!(log.recent().len(), 3);
        assert_eq!(
            log.last_problem().as_deref(),
            Some("FATAL:  could not open file \"x\"")
        );
    }

    #[test]
    fn lines_carry_the_instance_name() {
        #[derive(Clone, Default)]
        struct Captured(Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Captured {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(buf);
                Ok(buf.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            ServerLog::labelled(Some("app".into())).write(b"ERROR:  relation \"x\" does not exist\n");
        });
        let text = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
        assert!(
            text.contains("instance=\"app\"") && text.contains("does not exist"),
            "{text}"
        );
    }
}
