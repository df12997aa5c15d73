//! The backend's instance as its own thread holds it: runs messages, notes the instance's death,
//! and can be lent, whole, to code that runs on that thread (see [`Backend::lend`]).
//!
//! [`Backend::lend`]: super::Backend::lend

use std::sync::Arc;

use super::log::ServerLog;
use super::{BackendError, fatal_reason, protocol};
use crate::runtime::{MoreInput, PgInstance};

/// One PGlite instance and whether it died. It lives on the backend's thread, whose stack is
/// sized for it; whoever holds it there runs messages on it directly, without a thread hop.
pub(crate) struct Engine {
    instance: PgInstance,
    /// Why the instance died (a FATAL error or a trap); it runs nothing more then.
    dead: Option<String>,
    log: Arc<ServerLog>,
    /// A memory:// instance, whose files vanish with it: no shutdown checkpoint is needed.
    in_memory: bool,
}

impl Engine {
    pub(super) fn new(instance: PgInstance, log: Arc<ServerLog>, in_memory: bool) -> Self {
        Self {
            instance,
            dead: None,
            log,
            in_memory,
        }
    }

    /// Runs complete frontend messages and returns the backend's reply bytes; see
    /// [`Backend::exec`](super::Backend::exec). Malformed bytes are refused without reaching
    /// Postgres; a Terminate and whatever follows it are dropped.
    ///
    /// When the backend reads past `messages` (a COPY FROM STDIN whose data the client sends only
    /// after the CopyInResponse), `more_input` gets the reply bytes produced so far — deliver them
    /// to the client — and returns the client's next complete messages, or `None` to end the COPY
    /// with an error.
    pub(crate) fn exec(
        &mut self,
        messages: &[u8],
        more_input: Option<MoreInput>,
    ) -> Result<Vec<u8>, BackendError> {
        self.check_alive()?;
        let end = protocol::runnable_len(messages)?;
        if end == 0 {
            return Ok(Vec::new());
        }
        let (output, result) = self.instance.exec(&messages[..end], more_input);
        match result {
            Ok(()) => Ok(output),
            Err(e) => {
                let reason = fatal_reason(&output).unwrap_or_else(|| e.to_string());
                tracing::debug!(
                    target: "pglite_harness::backend",
                    "backend died: {e}; log: {:?}",
                    self.log.last_problem()
                );
                self.dead = Some(reason.clone());
                Err(BackendError::Fatal { reason, output })
            }
        }
    }

    /// Answers a StartupMessage like a fresh connection.
    pub(super) fn startup(&mut self, packet: &[u8]) -> Result<Vec<u8>, BackendError> {
        self.check_alive()?;
        let (output, result) = self.instance.startup(packet);
        match result {
            Ok(()) => Ok(output),
            Err(e) => {
                let reason = fatal_reason(&output).unwrap_or_else(|| e.to_string());
                self.dead = Some(reason.clone());
                Err(BackendError::Fatal { reason, output })
            }
        }
    }

    /// Whether a transaction block is open.
    pub(super) fn in_transaction(&mut self) -> Result<bool, BackendError> {
        self.check_alive()?;
        self.instance.in_transaction_block().map_err(|e| {
            let reason = e.to_string();
            self.dead = Some(reason.clone());
            BackendError::Dead { reason }
        })
    }

    /// Size of the linear memory in bytes.
    pub(crate) fn memory_size(&self) -> usize {
        self.instance.memory_size()
    }

    /// Why the instance died, if it did.
    pub(crate) fn dead_reason(&self) -> Option<&str> {
        self.dead.as_deref()
    }

    pub(super) fn instance_mut(&mut self) -> &mut PgInstance {
        &mut self.instance
    }

    /// Ends the instance: a shutdown checkpoint for a data directory, nothing for memory (its
    /// files go with it) or a dead instance.
    pub(super) fn shut_down(&mut self) -> Result<(), BackendError> {
        if self.dead.is_some() || self.in_memory {
            return Ok(());
        }
        // Whatever happens, this instance serves nothing more.
        self.dead = Some("the backend was shut down".into());
        self.instance
            .shutdown()
            .map_err(|e| BackendError::Shutdown(e.to_string()))
    }

    fn check_alive(&self) -> Result<(), BackendError> {
        match &self.dead {
            Some(reason) => Err(BackendError::Dead {
                reason: reason.clone(),
            }),
            None => Ok(()),
        }
    }
}
