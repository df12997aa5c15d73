//! One PGlite instance in its own wasmtime store: the boot sequence, message execution and
//! shutdown of §3.5, §4 and §9 of the ABI notes, single-threaded and synchronous.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use wasmtime::{AsContextMut, Caller, Func, Global, Ref, Store, TypedFunc, Val, WasmParams, WasmResults};

use super::dylink::{self, DylinkSnapshot};
use super::imports::with_memory;
use super::interrupt::{FlagAddresses, InterruptFlags};
use super::memory::{self, MemoryImage};
use super::rewrite::{self, START_EXPORT};
use super::sjlj::{self, ProcessExit};
use super::state::{Exports, HostState, MoreInput};
use super::{MAX_WASM_STACK, Runtime, guest, guest_error};
use crate::vfs::Vfs;

/// `exit` status with which `main()` reports a started single-user backend.
const EXIT_STARTED: i32 = 99;
/// `exit` status PGlite uses for a top-level ERROR (recovered by `PostgresMainLongJmp`).
const EXIT_TOP_LEVEL_ERROR: i32 = 100;

/// How a call into the instance failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum CallError {
    /// The guest called `exit(status)`.
    Exit(i32),
    /// A trap: a wasm fault, a stack overflow, an import refusing to continue.
    Trap(String),
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallError::Exit(code) => write!(f, "the backend exited with status {code}"),
            CallError::Trap(reason) => write!(f, "the backend trapped: {reason}"),
        }
    }
}

/// Exported functions the host drives the backend with.
struct Entry {
    ctors: TypedFunc<(), ()>,
    set_rw_cbs: TypedFunc<(i32, i32), ()>,
    set_system_fn: TypedFunc<i32, ()>,
    set_popen_fn: TypedFunc<i32, ()>,
    set_pclose_fn: TypedFunc<i32, ()>,
    set_active: TypedFunc<i32, i32>,
    main: TypedFunc<(i32, i32), i32>,
    start: TypedFunc<(), ()>,
    /// The batch loop the rewrite adds: every message, then ReadyForQuery and a flush.
    run_batch: TypedFunc<(), ()>,
    long_jmp: TypedFunc<(), ()>,
    flush: TypedFunc<(), ()>,
    stack_alloc: TypedFunc<i32, i32>,
    run_atexit: TypedFunc<(), ()>,
    is_transaction_block: TypedFunc<(), i32>,
    my_proc_port: TypedFunc<(), i32>,
    process_startup_packet: TypedFunc<(i32, i32, i32), i32>,
    send_conn_data: TypedFunc<(), ()>,
    fopen: TypedFunc<(i32, i32), i32>,
    fclose: TypedFunc<i32, i32>,
    /// The module's former start function (zeroes the bss of a fresh memory).
    harness_start: TypedFunc<(), ()>,
}

/// A PGlite instance: a store with the main module instantiated and its host state.
pub(crate) struct PgInstance {
    store: Store<HostState>,
    entry: Entry,
    /// The mutable globals, by global index (exported by the rewrite).
    globals: Vec<(u32, Global)>,
    /// Table slots of the host callbacks, in the order they were added.
    callback_slots: Vec<u32>,
}

/// A booted, idle instance frozen: what [`PgInstance::restore`] starts a new instance from.
///
/// Only instances whose filesystem is all in memory can be frozen. Side modules loaded by
/// `dlopen` are recorded by the linker and loaded again, at the same places, on restore.
pub(crate) struct InstanceSnapshot {
    pub(super) memory: Arc<MemoryImage>,
    pub(super) memory_size: usize,
    pub(super) globals: Vec<(u32, GlobalValue)>,
    pub(super) callback_slots: Vec<u32>,
    pub(super) table_size: u64,
    /// Libraries loaded and table slots added by the dynamic linker.
    pub(super) dylink: DylinkSnapshot,
    /// The filesystem, forked for each restore (a mutex only because `Vfs` is not `Sync`).
    pub(super) vfs: Mutex<Vfs>,
    pub(super) environ: Vec<Vec<u8>>,
    pub(super) monotonic: Duration,
}

impl std::fmt::Debug for InstanceSnapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InstanceSnapshot")
            .field("memory_size", &self.memory_size)
            .field("table_size", &self.table_size)
            .finish_non_exhaustive()
    }
}

impl InstanceSnapshot {
    /// A new copy of the frozen filesystem.
    pub fn fork_vfs(&self) -> Result<Vfs, CallError> {
        self.vfs
            .lock()
            .map_err(|_| CallError::Trap("the snapshot's filesystem lock is poisoned".into()))?
            .fork()
            .map_err(|e| CallError::Trap(format!("cannot copy the snapshot's filesystem: {e}")))
    }

    /// The size of the linear memory when the snapshot was taken.
    pub fn memory_size(&self) -> usize {
        self.memory_size
    }
}

/// The value of a mutable global, independent of any store.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum GlobalValue {
    I32(i32),
    I64(i64),
    F32(u32),
    F64(u64),
}

impl GlobalValue {
    fn of(val: Val) -> Result<GlobalValue, CallError> {
        Ok(match val {
            Val::I32(v) => GlobalValue::I32(v),
            Val::I64(v) => GlobalValue::I64(v),
            Val::F32(v) => GlobalValue::F32(v),
            Val::F64(v) => GlobalValue::F64(v),
            other => return Err(CallError::Trap(format!("a mutable global of type {:?}", other))),
        })
    }

    fn val(self) -> Val {
        match self {
            GlobalValue::I32(v) => Val::I32(v),
            GlobalValue::I64(v) => Val::I64(v),
            GlobalValue::F32(v) => Val::F32(v),
            GlobalValue::F64(v) => Val::F64(v),
        }
    }
}

impl PgInstance {
    /// Instantiates the module over `vfs` with `environ`, its memory holding the module's data
    /// segments, and runs its former start function.
    pub fn instantiate(runtime: &Runtime, vfs: Vfs, environ: Vec<Vec<u8>>) -> Result<Self, CallError> {
        let mut instance =
            Self::instantiate_from(runtime, HostState::new(vfs, environ), runtime.initial_image())?;
        instance.call(instance.entry.harness_start.clone(), ())?;
        Ok(instance)
    }

    /// Starts a new instance from `snapshot`: its memory mapped copy-on-write from the snapshot's
    /// image, its globals and table as they were, its filesystem `vfs` (a fork of the snapshot's).
    pub fn restore(runtime: &Runtime, snapshot: &InstanceSnapshot, vfs: Vfs) -> Result<Self, CallError> {
        let mut state = HostState::new(vfs, snapshot.environ.clone());
        // The guest's monotonic clock carries on from where the snapshot's was.
        state.monotonic_skip = snapshot.monotonic;
        let mut instance = Self::instantiate_from(runtime, state, &snapshot.memory)?;
        let memory = instance.store.data().exports().memory;
        let pages = (snapshot.memory_size - memory.data_size(&instance.store)) as u64 / WASM_PAGE;
        memory.grow(&mut instance.store, pages).map_err(trap)?;
        for &(index, value) in &snapshot.globals {
            let global = instance
                .globals
                .iter()
                .find(|(i, _)| *i == index)
                .map(|(_, g)| *g)
                .ok_or_else(|| {
                    CallError::Trap(format!("the snapshot has global {index}, the module has not"))
                })?;
            global.set(&mut instance.store, value.val()).map_err(trap)?;
        }
        let slots = instance.add_callbacks()?;
        dylink::replay(&mut instance.store, &snapshot.dylink, &snapshot.memory).map_err(CallError::Trap)?;
        let table_size = instance.store.data().exports().table.size(&instance.store);
        if slots != snapshot.callback_slots || table_size != snapshot.table_size {
            return Err(CallError::Trap(format!(
                "the restored table differs from the snapshot's (callbacks at {slots:?}, size {table_size}; \
                 expected {:?}, {})",
                snapshot.callback_slots, snapshot.table_size
            )));
        }
        instance.callback_slots = slots;
        Ok(instance)
    }

    /// Freezes this idle instance (between calls, so no wasm frame is live) into a snapshot.
    pub fn snapshot(&mut self) -> Result<InstanceSnapshot, CallError> {
        let dylink = dylink::snapshot(&mut self.store);
        let state = self.store.data();
        let vfs = state
            .vfs
            .fork()
            .map_err(|e| CallError::Trap(format!("only an in-memory filesystem can be frozen ({e})")))?;
        let (environ, monotonic) = (state.environ.clone(), state.monotonic());
        let exports = state.exports().clone();
        let memory_bytes = exports.memory.data(&self.store);
        let memory_size = memory_bytes.len();
        let memory = MemoryImage::from_memory(memory_bytes)
            .map_err(|e| CallError::Trap(format!("cannot write the memory snapshot: {e}")))?;
        let globals = self
            .globals
            .iter()
            .map(|(index, global)| Ok((*index, GlobalValue::of(global.get(&mut self.store))?)))
            .collect::<Result<Vec<_>, CallError>>()?;
        Ok(InstanceSnapshot {
            memory: Arc::new(memory),
            memory_size,
            globals,
            callback_slots: self.callback_slots.clone(),
            table_size: exports.table.size(&self.store),
            dylink,
            vfs: Mutex::new(vfs),
            environ,
            monotonic,
        })
    }

    fn instantiate_from(
        runtime: &Runtime,
        state: HostState,
        image: &Arc<MemoryImage>,
    ) -> Result<Self, CallError> {
        let mut store = Store::new(runtime.engine(), state);
        let instance = memory::with_image(image, runtime.memory_type(), || {
            runtime.instance_pre().instantiate(&mut store)
        })
        .map_err(trap)?;
        let missing = |what: &str| CallError::Trap(format!("pglite.wasm does not export {what}"));
        macro_rules! func {
            ($name:expr) => {
                instance
                    .get_typed_func(&mut store, $name)
                    .map_err(|_| missing($name))?
            };
        }
        let exports = Exports {
            instance,
            memory: instance
                .get_memory(&mut store, "memory")
                .ok_or_else(|| missing("memory"))?,
            table: instance
                .get_table(&mut store, "__indirect_function_table")
                .ok_or_else(|| missing("the table"))?,
            stack_pointer: instance
                .get_global(&mut store, "__stack_pointer")
                .ok_or_else(|| missing("__stack_pointer"))?,
            input_pending: instance
                .get_global(&mut store, rewrite::INPUT_PENDING_EXPORT)
                .ok_or_else(|| missing(rewrite::INPUT_PENDING_EXPORT))?,
            set_threw: func!("setThrew"),
            malloc: func!("malloc"),
            calloc: func!("calloc"),
            memalign: func!("emscripten_builtin_memalign"),
            dl_seterr: func!("__dl_seterr"),
            query_cancel_pending: address(&mut store, instance, "QueryCancelPending")?,
            interrupt_pending: address(&mut store, instance, "InterruptPending")?,
        };
        let entry = Entry {
            ctors: func!("__wasm_call_ctors"),
            set_rw_cbs: func!("pgl_set_rw_cbs"),
            set_system_fn: func!("pgl_set_system_fn"),
            set_popen_fn: func!("pgl_set_popen_fn"),
            set_pclose_fn: func!("pgl_set_pclose_fn"),
            set_active: func!("pgl_setPGliteActive"),
            main: func!("__main_argc_argv"),
            start: func!("pgl_startPGlite"),
            run_batch: func!(rewrite::RUN_BATCH_EXPORT),
            long_jmp: func!("PostgresMainLongJmp"),
            flush: func!("pgl_pq_flush"),
            stack_alloc: func!("_emscripten_stack_alloc"),
            run_atexit: func!("pgl_run_atexit_funcs"),
            is_transaction_block: func!("IsTransactionBlock"),
            my_proc_port: func!("pgl_getMyProcPort"),
            process_startup_packet: func!("ProcessStartupPacket"),
            send_conn_data: func!("pgl_sendConnData"),
            fopen: func!("fopen"),
            fclose: func!("fclose"),
            harness_start: func!(START_EXPORT),
        };
        let globals = runtime
            .mutable_globals()
            .iter()
            .map(|(index, name)| {
                let global = instance
                    .get_global(&mut store, name)
                    .ok_or_else(|| missing(name))?;
                Ok((*index, global))
            })
            .collect::<Result<_, CallError>>()?;
        let memory = exports.memory;
        let flags = FlagAddresses::new(
            memory.data_ptr(&store),
            memory.data_size(&store),
            exports.query_cancel_pending,
            exports.interrupt_pending,
        );
        store.data().interrupts.attach(flags);
        store.data_mut().exports = Some(exports);
        Ok(Self {
            store,
            entry,
            globals,
            callback_slots: Vec::new(),
        })
    }

    /// Runs the boot sequence of §3.5 up to a ready backend: ctors, callbacks, `main(argv)`
    /// (which must exit with 99) and `pgl_startPGlite`.
    pub fn boot(&mut self, argv: &[String]) -> Result<(), CallError> {
        self.call(self.entry.ctors.clone(), ())?;
        self.install_callbacks()?;
        self.call(self.entry.set_active.clone(), 1)?;
        let (argc, argv_ptr) = self.push_argv(argv)?;
        match self.call(self.entry.main.clone(), (argc, argv_ptr)) {
            Err(CallError::Exit(EXIT_STARTED)) => {}
            Err(e) => return Err(e),
            Ok(code) => return Err(CallError::Exit(code)),
        }
        self.call(self.entry.start.clone(), ())
    }

    /// Executes complete frontend messages and returns the backend's bytes. On a fatal error the
    /// bytes produced before it are returned with the error.
    ///
    /// When the backend reads past `input` (COPY FROM STDIN), `more_input` is asked for further
    /// bytes, given the output so far; without it, or when it has none, the COPY fails with an
    /// error and the backend carries on.
    pub fn exec(&mut self, input: &[u8], more_input: Option<MoreInput>) -> (Vec<u8>, Result<(), CallError>) {
        self.store.data_mut().io.begin(input, more_input);
        // Every top-level call starts from the same C stack pointer: read it once.
        let sp = self.stack_pointer();
        let result = self.run_batch(sp);
        self.store.data_mut().io.more_input = None;
        (std::mem::take(&mut self.store.data_mut().io.output), result)
    }

    /// Runs the batch in wasm (`rewrite::batch`); after a top-level ERROR, recovers and runs the
    /// rest of it, as the backend skips to the next Sync.
    fn run_batch(&mut self, sp: Val) -> Result<(), CallError> {
        let (store, entry) = (&mut self.store, &self.entry);
        loop {
            set_input_pending(&mut *store).map_err(trap)?;
            match call_at(store, sp, &entry.run_batch, ()) {
                Ok(()) => return Ok(()),
                Err(CallError::Exit(EXIT_TOP_LEVEL_ERROR)) => recover(store, sp, &entry.long_jmp)?,
                Err(e) => return Err(e),
            }
        }
    }

    /// Handles a StartupMessage the way the official client does (§4.5): authentication is the
    /// host's business, the backend answers with its ParameterStatus, BackendKeyData and
    /// ReadyForQuery.
    pub fn startup(&mut self, packet: &[u8]) -> (Vec<u8>, Result<(), CallError>) {
        self.store.data_mut().io.begin(packet, None);
        let result = (|| {
            let port = self.call(self.entry.my_proc_port.clone(), ())?;
            let status = self.call(self.entry.process_startup_packet.clone(), (port, 1, 1))?;
            if status != 0 {
                return Err(CallError::Trap(format!("ProcessStartupPacket returned {status}")));
            }
            self.call(self.entry.send_conn_data.clone(), ())?;
            self.call(self.entry.flush.clone(), ())
        })();
        (std::mem::take(&mut self.store.data_mut().io.output), result)
    }

    /// Whether a transaction block is open.
    pub fn in_transaction_block(&mut self) -> Result<bool, CallError> {
        Ok(self.call(self.entry.is_transaction_block.clone(), ())? != 0)
    }

    /// Clean shutdown (§9): deactivate, run Postgres' exit callbacks (shutdown checkpoint, removal
    /// of postmaster.pid), close every file.
    pub fn shutdown(&mut self) -> Result<(), CallError> {
        let result = self
            .call(self.entry.set_active.clone(), 0)
            .map(drop)
            .and_then(|()| match self.call(self.entry.run_atexit.clone(), ()) {
                Ok(()) | Err(CallError::Exit(0)) => Ok(()),
                Err(e) => Err(e),
            });
        self.store.data_mut().vfs.close_all();
        result
    }

    /// The instance's filesystem, taken out of it (after [`shutdown`](Self::shutdown)), to boot a
    /// new instance on.
    pub fn into_vfs(mut self) -> Vfs {
        let mut vfs = std::mem::take(&mut self.store.data_mut().vfs);
        vfs.start_new_process();
        vfs
    }

    /// What cancels the running statement (see `super::interrupt`).
    pub fn interrupts(&self) -> Arc<InterruptFlags> {
        self.store.data().interrupts.clone()
    }

    /// The instance's filesystem (for `/dev/blob`).
    pub fn vfs_mut(&mut self) -> &mut Vfs {
        &mut self.store.data_mut().vfs
    }

    /// Size of the linear memory in bytes.
    pub fn memory_size(&self) -> usize {
        self.store.data().exports().memory.data_size(&self.store)
    }

    /// Calls an export, restoring the C stack pointer if the call unwinds (an `exit` or a trap
    /// skips the epilogues that would have restored it).
    fn call<P: WasmParams, R: WasmResults>(
        &mut self,
        func: TypedFunc<P, R>,
        params: P,
    ) -> Result<R, CallError> {
        let sp = self.stack_pointer();
        call_at(&mut self.store, sp, &func, params)
    }

    /// The C stack pointer now.
    fn stack_pointer(&mut self) -> Val {
        let sp_global = self.store.data().exports().stack_pointer;
        sp_global.get(&mut self.store)
    }

    /// Registers the protocol read/write callbacks and the subprocess hooks (§3.1 step 7).
    fn install_callbacks(&mut self) -> Result<(), CallError> {
        let slots = self.add_callbacks()?;
        let &[read, write, system, popen, pclose, _stack_check] = slots.as_slice() else {
            unreachable!("six callbacks")
        };
        self.callback_slots = slots;
        let slot = |s: u32| s as i32;
        self.call(self.entry.set_rw_cbs.clone(), (slot(read), slot(write)))?;
        self.call(self.entry.set_system_fn.clone(), slot(system))?;
        self.call(self.entry.set_popen_fn.clone(), slot(popen))?;
        self.call(self.entry.set_pclose_fn.clone(), slot(pclose))
    }

    /// Adds the host callbacks to the table: read, write, system, popen, pclose, and the check of
    /// wasm's stack (whose slot goes into the global the rewrite's `stack_check` reads). Returns
    /// their slots.
    fn add_callbacks(&mut self) -> Result<Vec<u32>, CallError> {
        let read = Func::wrap(
            &mut self.store,
            |mut c: Caller<'_, HostState>, ptr: i32, max: i32| -> i32 {
                let read = with_memory(&mut c, |mem, st| {
                    let io = &mut st.io;
                    if io.input_pos >= io.input.len()
                        && let Some(source) = io.more_input.as_mut()
                    {
                        match source(std::mem::take(&mut io.output)) {
                            Some(more) if !more.is_empty() => {
                                io.input = more;
                                io.input_pos = 0;
                            }
                            _ => io.more_input = None,
                        }
                    }
                    let mut pending = &io.input[io.input_pos.min(io.input.len())..];
                    if pending.is_empty() {
                        // The backend wants more input than this exec carries: only a COPY FROM STDIN
                        // whose data was not sent along does that. End the COPY with an error instead of
                        // the EOF that would kill the backend; then end the protocol cycle.
                        io.copy_fail_injected += 1;
                        pending = match io.copy_fail_injected {
                            1 => COPY_FAIL_MISSING_DATA,
                            2 => SYNC,
                            _ => return 0,
                        };
                        let n = pending.len().min(max.max(0) as usize);
                        return match guest::write_bytes(mem, ptr, &pending[..n]) {
                            Ok(()) => n as i32,
                            Err(_) => 0,
                        };
                    }
                    let n = pending.len().min(max.max(0) as usize);
                    match guest::write_bytes(mem, ptr, &pending[..n]) {
                        Ok(()) => {
                            io.input_pos += n;
                            n as i32
                        }
                        Err(_) => 0,
                    }
                });
                // The batch loop reads this to know whether to go on.
                let _ = set_input_pending(&mut c);
                read
            },
        );
        let write = Func::wrap(
            &mut self.store,
            |mut c: Caller<'_, HostState>, ptr: i32, len: i32| -> i32 {
                with_memory(&mut c, |mem, st| {
                    match guest::slice(mem, ptr, len.max(0) as usize) {
                        Ok(bytes) => {
                            st.io.output.extend_from_slice(bytes);
                            len
                        }
                        Err(_) => -1,
                    }
                })
            },
        );
        let system = Func::wrap(&mut self.store, |mut c: Caller<'_, HostState>, cmd: i32| -> i32 {
            let command = with_memory(&mut c, |mem, _| {
                guest::cstr(mem, cmd).map(|s| String::from_utf8_lossy(s).into_owned())
            });
            tracing::debug!(target: "pglite_harness::backend", "system({command:?}) refused: no subprocesses");
            1
        });
        let fopen = self.entry.fopen.clone();
        let popen = Func::wrap(
            &mut self.store,
            move |mut c: Caller<'_, HostState>, cmd: i32, mode: i32| -> wasmtime::Result<i32> {
                let (command, mode) = with_memory(&mut c, |mem, _| {
                    (
                        guest::cstr(mem, cmd).unwrap_or_default().to_vec(),
                        guest::cstr(mem, mode).unwrap_or_default().to_vec(),
                    )
                });
                // Only `locale -a` (initdb) is served, from the packaged answer file.
                if !command.starts_with(b"locale -a") || mode != b"r" {
                    return Ok(0);
                }
                let malloc = c.data().exports().malloc.clone();
                let path = malloc.call(&mut c, 32)?;
                with_memory(&mut c, |mem, _| {
                    let _ = guest::write_bytes(mem, path, b"/pglite/locale-a\0r\0");
                });
                fopen.call(&mut c, (path, path + 17))
            },
        );
        let fclose = self.entry.fclose.clone();
        let pclose = Func::wrap(
            &mut self.store,
            move |mut c: Caller<'_, HostState>, file: i32| -> wasmtime::Result<i32> {
                fclose.call(&mut c, file)
            },
        );
        // The guest's stack check, on wasm's stack: Postgres' ERROR, raised in the guest frames
        // that are too deep, rather than wasmtime's trap when the stack is gone.
        let stack_check = Func::wrap(
            &mut self.store,
            |mut c: Caller<'_, HostState>| -> wasmtime::Result<()> {
                if native_stack_pointer() < c.data().native_stack_floor {
                    return Err(guest_error::raise(&mut c, b"54001", "stack depth limit exceeded"));
                }
                Ok(())
            },
        );
        let table = self.store.data().exports().table;
        let slots = [read, write, system, popen, pclose, stack_check]
            .into_iter()
            .map(|f| {
                table
                    .grow(&mut self.store, 1, Ref::Func(Some(f)))
                    .map(|i| i as u32)
                    .map_err(trap)
            })
            .collect::<Result<Vec<_>, _>>()?;
        let instance = self.store.data().exports().instance;
        let slot_global = instance
            .get_global(&mut self.store, rewrite::STACK_CHECK_SLOT_EXPORT)
            .ok_or_else(|| {
                CallError::Trap(format!(
                    "pglite.wasm does not export {}",
                    rewrite::STACK_CHECK_SLOT_EXPORT
                ))
            })?;
        slot_global
            .set(&mut self.store, Val::I32(slots[5] as i32))
            .map_err(trap)?;
        Ok(slots)
    }

    /// Writes `argv` (strings and pointer array) on the C stack; returns (argc, argv).
    fn push_argv(&mut self, argv: &[String]) -> Result<(i32, i32), CallError> {
        let strings: usize = argv.iter().map(|a| a.len() + 1).sum();
        let total = (strings + 4 * (argv.len() + 1)).next_multiple_of(16) as i32;
        let base = self.call(self.entry.stack_alloc.clone(), total)?;
        let memory = self.store.data().exports().memory;
        let mem = memory.data_mut(&mut self.store);
        let array = base;
        let mut at = base + 4 * (argv.len() as i32 + 1);
        let fault = |_| CallError::Trap("argv does not fit in linear memory".into());
        for (i, arg) in argv.iter().enumerate() {
            guest::write_i32(mem, array + 4 * i as i32, at).map_err(fault)?;
            guest::write_bytes(mem, at, arg.as_bytes()).map_err(fault)?;
            guest::write_bytes(mem, at + arg.len() as i32, &[0]).map_err(fault)?;
            at += arg.len() as i32 + 1;
        }
        guest::write_i32(mem, array + 4 * argv.len() as i32, 0).map_err(fault)?;
        Ok((argv.len() as i32, array))
    }
}

impl Drop for PgInstance {
    fn drop(&mut self) {
        // The memory goes with the store: cancel requests must no longer write into it.
        self.store.data().interrupts.detach();
    }
}

/// Bytes in a wasm page.
const WASM_PAGE: u64 = 64 << 10;

/// A CopyFail message ('f') sent in place of COPY data the exec did not carry.
const COPY_FAIL_MISSING_DATA: &[u8] =
    b"f\x00\x00\x00\x40COPY data must be sent in the same exec as the COPY command\x00";
/// A Sync message.
const SYNC: &[u8] = b"S\x00\x00\x00\x04";

/// The value of an exported address global (a data symbol).
fn address(store: &mut Store<HostState>, instance: wasmtime::Instance, name: &str) -> Result<i32, CallError> {
    instance
        .get_global(&mut *store, name)
        .and_then(|g| g.get(&mut *store).i32())
        .ok_or_else(|| CallError::Trap(format!("pglite.wasm does not export {name}")))
}

/// Calls an export that starts with the C stack pointer at `sp`, putting it back there if the
/// call unwinds (an `exit` or a trap skips the epilogues that would have restored it).
fn call_at<P: WasmParams, R: WasmResults>(
    store: &mut Store<HostState>,
    sp: Val,
    func: &TypedFunc<P, R>,
    params: P,
) -> Result<R, CallError> {
    // wasmtime allows wasm `MAX_WASM_STACK` bytes below where this outermost call enters it; the
    // guest's stack check raises its ERROR with `STACK_CHECK_MARGIN` of them left.
    let outermost = store.data().native_stack_floor == 0;
    if outermost {
        store.data_mut().native_stack_floor =
            native_stack_pointer().saturating_sub(MAX_WASM_STACK - STACK_CHECK_MARGIN);
    }
    let result = func.call(&mut *store, params).map_err(|e| {
        let sp_global = store.data().exports().stack_pointer;
        let _ = sp_global.set(&mut *store, sp);
        classify(store, e)
    });
    if outermost {
        store.data_mut().native_stack_floor = 0;
    }
    result
}

/// The native stack wasm may use after the guest's stack check has said "stack depth limit
/// exceeded": for raising the ERROR and for what runs until it is caught, with room to spare for
/// the levels a recursion can go between two of the checks (`rewrite::stack_check::SAMPLE`).
const STACK_CHECK_MARGIN: usize = 4 << 20;

/// An address on the current thread's native stack, near its top (the stack grows down).
#[inline(never)]
fn native_stack_pointer() -> usize {
    let marker = 0u8;
    std::hint::black_box(&marker) as *const u8 as usize
}

/// Runs the backend's recovery from a top-level ERROR (`long_jmp`: report the error, abort the
/// transaction). An ERROR raised during the recovery itself — reporting an error in a client
/// encoding whose conversion fails, say — ends in the same exit: the recovery runs again, as
/// Postgres' own error handler is entered again, until one completes (each nesting reports
/// more plainly) or Postgres gives up with a PANIC.
fn recover(store: &mut Store<HostState>, sp: Val, long_jmp: &TypedFunc<(), ()>) -> Result<(), CallError> {
    const MOST_NESTED: usize = 16;
    for _ in 1..MOST_NESTED {
        match call_at(store, sp, long_jmp, ()) {
            Err(CallError::Exit(EXIT_TOP_LEVEL_ERROR)) => continue,
            done => return done,
        }
    }
    call_at(store, sp, long_jmp, ())
}

/// Tells the batch loop whether the host still holds input the backend has not read.
fn set_input_pending(mut store: impl AsContextMut<Data = HostState>) -> wasmtime::Result<()> {
    let mut store = store.as_context_mut();
    let (io, exports) = (&store.data().io, store.data().exports());
    let (pending, global) = (io.input_pos < io.input.len(), exports.input_pending);
    global.set(&mut store, Val::I32(i32::from(pending)))
}

fn classify(store: &mut Store<HostState>, e: wasmtime::Error) -> CallError {
    if let Some(exit) = e.downcast_ref::<ProcessExit>() {
        return CallError::Exit(exit.0);
    }
    if sjlj::is_longjmp(store, &e) {
        return trap(wasmtime::Error::new(sjlj::Longjmp));
    }
    trap(e)
}

fn trap(e: wasmtime::Error) -> CallError {
    CallError::Trap(format!("{e:#}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A side module's invoke of a signature the main module has none of is the host's
    /// trampoline: a longjmp (the module's wasm exception) out of its callee is caught there.
    #[test]
    fn the_host_invoke_trampoline_catches_the_modules_longjmp() {
        let runtime = Runtime::global().unwrap();
        let mut pg = PgInstance::instantiate(runtime, Vfs::new(), Vec::new()).unwrap();
        let store = &mut pg.store;
        let exports = store.data().exports().clone();
        let thrower = exports
            .instance
            .get_func(&mut *store, "_emscripten_throw_longjmp")
            .expect("the rewrite exports the thrower");
        let slot = exports
            .table
            .grow(&mut *store, 1, Ref::Func(Some(thrower)))
            .unwrap();
        let threw = address(store, exports.instance, "__THREW__").unwrap() as usize;
        let sp = exports.stack_pointer.get(&mut *store).i32();

        // At the top level, the exception is a longjmp with no setjmp to catch it.
        let error = thrower.call(&mut *store, &[], &mut []).unwrap_err();
        assert!(sjlj::is_longjmp(&mut *store, &error), "{error:#}");

        let invoke = sjlj::invoke_func(&mut *store, "invoke_v").unwrap();
        invoke
            .call(&mut *store, &[Val::I32(slot as i32)], &mut [])
            .expect("the trampoline catches the longjmp");
        let memory = exports.memory.data(&*store);
        assert_eq!(
            memory[threw..threw + 4],
            1i32.to_le_bytes(),
            "setThrew(1, 0) was called"
        );
        assert_eq!(exports.stack_pointer.get(&mut *store).i32(), sp);
    }
}
