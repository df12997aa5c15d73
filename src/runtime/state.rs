//! The per-instance host state kept in each wasmtime `Store`.

use std::sync::Arc;
use std::time::Instant;

use wasmtime::{Global, Instance, Memory, Table, TypedFunc};

use super::dylink::Dylinker;
use super::interrupt::InterruptFlags;
use crate::vfs::Vfs;

/// Everything the imports of one PGlite instance need, owned by its `Store`.
pub(crate) struct HostState {
    /// The filesystem behind the syscalls.
    pub vfs: Vfs,
    /// `K=V` strings handed to libc by `environ_get`.
    pub environ: Vec<Vec<u8>>,
    /// Exports the imports call back into, set right after instantiation.
    pub exports: Option<Exports>,
    /// The wire-protocol bytes of the current `exec`.
    pub io: ProtocolIo,
    /// Side modules loaded by `dlopen`.
    pub dylinker: Dylinker,
    /// Armed interval timers (`_setitimer_js`), by timer id.
    pub timers: [Option<Instant>; 3],
    /// Origin of `emscripten_get_now` and monotonic clocks.
    pub epoch: Instant,
    /// Cancel requests from other threads (a CancelRequest); see `super::interrupt`.
    pub interrupts: Arc<InterruptFlags>,
    /// Added to the monotonic clock: Postgres' waits (pg_sleep, lock waits) spin on that clock
    /// in PGlite, so a delivered cancel moves it forward to end the wait and reach the check.
    pub monotonic_skip: std::time::Duration,
    /// Table slots already checked by the `invoke_*` trampolines.
    pub invoke_checks: super::sjlj::InvokeChecks,
    /// While a call into wasm runs: the native stack address below which the guest's stack
    /// check raises "stack depth limit exceeded" (`rewrite::stack_check`); 0 between calls.
    pub native_stack_floor: usize,
}

impl HostState {
    pub fn new(vfs: Vfs, environ: Vec<Vec<u8>>) -> Self {
        Self {
            vfs,
            environ,
            exports: None,
            io: ProtocolIo::default(),
            dylinker: Dylinker::default(),
            timers: [None; 3],
            epoch: Instant::now(),
            interrupts: Arc::new(InterruptFlags::default()),
            monotonic_skip: std::time::Duration::ZERO,
            native_stack_floor: 0,
            invoke_checks: Default::default(),
        }
    }

    /// The monotonic clock as the guest sees it.
    pub fn monotonic(&self) -> std::time::Duration {
        self.epoch.elapsed() + self.monotonic_skip
    }

    /// Delivers a pending cancel request to a wait: the flags Postgres' SIGINT handler sets
    /// (`QueryCancelPending`, `InterruptPending`; already written by the request itself, see
    /// `super::interrupt`) and a jump of the monotonic clock, so that a wait spinning on it ends
    /// and reaches `CHECK_FOR_INTERRUPTS()`, which raises "canceling statement due to user
    /// request" (57014). Called from the imports Postgres reaches while it waits (poll, clocks).
    pub fn deliver_cancel(&mut self, mem: &mut [u8]) {
        if !self.interrupts.take_request() {
            return;
        }
        let Some(exports) = &self.exports else { return };
        for address in [exports.query_cancel_pending, exports.interrupt_pending] {
            let _ = crate::runtime::guest::write_i32(mem, address, 1);
        }
        self.monotonic_skip += std::time::Duration::from_secs(24 * 3600);
    }

    /// The exports; imports only run after they are set.
    pub fn exports(&self) -> &Exports {
        self.exports
            .as_ref()
            .expect("exports are set before any import can run")
    }
}

/// Input and output of the protocol callbacks (`pgl_set_rw_cbs`).
#[derive(Default)]
pub(crate) struct ProtocolIo {
    /// Frontend bytes of the current exec.
    pub input: Vec<u8>,
    /// How many of them the backend has read.
    pub input_pos: usize,
    /// Backend bytes written so far.
    pub output: Vec<u8>,
    /// How many times this exec answered a read past its input (see `install_callbacks`).
    pub copy_fail_injected: u8,
    /// Where more frontend bytes come from when the backend reads past this exec's input (a COPY
    /// FROM STDIN whose data the client sends only after seeing CopyInResponse). Called with the
    /// backend's output so far, which the caller must deliver to the client first.
    pub more_input: Option<MoreInput>,
}

impl ProtocolIo {
    /// Starts a call with `input` as the frontend bytes and no output yet.
    pub fn begin(&mut self, input: &[u8], more_input: Option<MoreInput>) {
        self.input.clear();
        self.input.extend_from_slice(input);
        self.input_pos = 0;
        self.output.clear();
        self.copy_fail_injected = 0;
        self.more_input = more_input;
    }
}

/// A source of further frontend bytes during one exec; `None` means there are none.
pub(crate) type MoreInput = Box<dyn FnMut(Vec<u8>) -> Option<Vec<u8>> + Send>;

/// Exports of the main module used by the host.
#[derive(Clone)]
pub(crate) struct Exports {
    pub instance: Instance,
    pub memory: Memory,
    pub table: Table,
    pub stack_pointer: Global,
    /// Whether the host still holds input the backend has not read (see `rewrite::batch`).
    pub input_pending: Global,
    pub set_threw: TypedFunc<(i32, i32), ()>,
    pub malloc: TypedFunc<i32, i32>,
    pub calloc: TypedFunc<(i32, i32), i32>,
    pub memalign: TypedFunc<(i32, i32), i32>,
    pub dl_seterr: TypedFunc<(i32, i32), ()>,
    /// Addresses of Postgres' `QueryCancelPending` and `InterruptPending` flags.
    pub query_cancel_pending: i32,
    pub interrupt_pending: i32,
}
