//! Emscripten's setjmp/longjmp and `exit`, as host errors that unwind wasm frames (§5 of the ABI
//! notes).
//!
//! * a longjmp is a wasm exception, thrown and caught in the module itself (`rewrite::longjmp`
//!   adds the code). A side module's `invoke_*` of a signature the main module has none of is
//!   served here: it catches that exception (and the host's [`Longjmp`], which
//!   `_emscripten_throw_longjmp` raises if ever called from the host's side), restores the C stack
//!   pointer, calls `setThrew(1, 0)` and returns a zero, after which the compiled code takes its
//!   setjmp branch, as the module's own invokes do.
//! * `exit`/`proc_exit` raise [`ProcessExit`], which no trampoline catches: it unwinds to the
//!   outermost host call, where the backend reads the status (99 = started, 100 = top-level ERROR,
//!   anything else = the process ended).

use std::mem::MaybeUninit;

use wasmtime::{Caller, Func, FuncType, ValRaw, ValType};

use super::state::HostState;

/// The marker of a longjmp in flight.
#[derive(Debug)]
pub(crate) struct Longjmp;

impl std::fmt::Display for Longjmp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("longjmp reached the top level without a matching setjmp")
    }
}

impl std::error::Error for Longjmp {}

/// `exit(status)` called by the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ProcessExit(pub i32);

impl std::fmt::Display for ProcessExit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the guest called exit({})", self.0)
    }
}

impl std::error::Error for ProcessExit {}

/// The wasm type of `invoke_<sig>`: first letter the result, the rest the parameters, after the
/// function pointer. Returns `None` for a name that is not an invoke.
pub(crate) fn invoke_type(engine: &wasmtime::Engine, name: &str) -> Option<FuncType> {
    let sig = name.strip_prefix("invoke_")?;
    let letter = |c: char| match c {
        'i' | 'p' => Some(ValType::I32),
        'j' => Some(ValType::I64),
        'f' => Some(ValType::F32),
        'd' => Some(ValType::F64),
        _ => None,
    };
    let mut chars = sig.chars();
    let result = match chars.next()? {
        'v' => None,
        c => Some(letter(c)?),
    };
    let mut params = vec![ValType::I32];
    for c in chars {
        params.push(letter(c)?);
    }
    Some(FuncType::new(engine, params, result))
}

/// Most arguments an `invoke_*` passes on without a heap allocation (PGlite's longest has 17).
const INLINE_ARGS: usize = 24;

/// One `invoke_<sig>` trampoline: what it calls, and how.
pub(crate) struct Invoke {
    /// The type of the functions it calls: its own without the leading function pointer.
    callee: FuncType,
    /// Its place in [`InvokeChecks`].
    id: u8,
    params: usize,
    has_result: bool,
}

impl Invoke {
    /// The trampoline for the import `name` and its type (`None` if `name` is not an
    /// `invoke_*`, or one signature too many).
    pub(crate) fn new(engine: &wasmtime::Engine, name: &str) -> Option<(FuncType, Invoke)> {
        let ty = invoke_type(engine, name)?;
        let id = signature_id(name)?;
        let callee = FuncType::new(engine, ty.params().skip(1), ty.results());
        let invoke = Invoke {
            params: ty.params().len() - 1,
            has_result: ty.results().len() == 1,
            callee,
            id,
        };
        Some((ty, invoke))
    }

    /// Calls `table[fnptr](args)` (`space` holds `fnptr, args...` and receives the result),
    /// catching only a longjmp. The callee's type is checked once per table slot, then the call
    /// goes straight through (`call_unchecked`). Only side-module invokes of a signature the main
    /// module has none of come here; the module's own run in wasm (`rewrite::longjmp`).
    pub(crate) fn call(
        &self,
        mut caller: Caller<'_, HostState>,
        space: &mut [MaybeUninit<ValRaw>],
    ) -> wasmtime::Result<()> {
        // SAFETY: wasmtime initialises the parameters of an unchecked host function, per its
        // type: an i32 function pointer, then `self.params` arguments.
        let index = unsafe { space[0].assume_init() }.get_u32();
        let (table, stack_pointer) = {
            let exports = caller.data().exports();
            (exports.table, exports.stack_pointer)
        };
        let func: Func = table
            .get(&mut caller, u64::from(index))
            .and_then(|r| r.as_func().flatten().copied())
            .ok_or_else(|| wasmtime::format_err!("invoke: no function at table index {index}"))?;
        if caller.data().invoke_checks.get(index) != self.id {
            if !func.matches_ty(&caller, &self.callee) {
                let found = func.ty(&caller);
                wasmtime::bail!(
                    "invoke: the function at table index {index} has type {found}, expected {}",
                    self.callee
                );
            }
            caller.data_mut().invoke_checks.set(index, self.id);
        }
        let saved_sp = stack_pointer.get(&mut caller);
        let mut inline = [ValRaw::v128(0); INLINE_ARGS];
        let mut heap = Vec::new();
        let args: &mut [ValRaw] = if self.params <= INLINE_ARGS {
            &mut inline[..self.params.max(1)]
        } else {
            heap.resize(self.params, ValRaw::v128(0));
            &mut heap
        };
        for (arg, given) in args.iter_mut().zip(&space[1..=self.params]) {
            // SAFETY: initialised by wasmtime, as above.
            *arg = unsafe { given.assume_init() };
        }
        // SAFETY: `func` has type `self.callee` (checked above for this slot, whose function never
        // changes: slots are filled by element segments and by the dynamic linker, which only
        // fills new ones), `args` holds its parameters in order with room for its one result,
        // and `func` belongs to this store (it came from this instance's table).
        let called = unsafe { func.call_unchecked(&mut caller, args as *mut [ValRaw]) };
        match called {
            Ok(()) => {
                if self.has_result {
                    space[0] = MaybeUninit::new(args[0]);
                }
                Ok(())
            }
            Err(e) if is_longjmp(&mut caller, &e) => {
                stack_pointer.set(&mut caller, saved_sp)?;
                let set_threw = caller.data().exports().set_threw.clone();
                set_threw.call(&mut caller, (1, 0))?;
                if self.has_result {
                    // All-zero bits: 0 of any numeric type.
                    space[0] = MaybeUninit::new(ValRaw::v128(0));
                }
                Ok(())
            }
            Err(e) => Err(e),
        }
    }
}

/// Whether `error`, out of a call into wasm, is a longjmp: the host's [`Longjmp`], or the wasm
/// exception the module throws for one (see `rewrite::longjmp`; the module throws no other), which
/// this takes out of the store.
pub(crate) fn is_longjmp(mut store: impl wasmtime::AsContextMut, error: &wasmtime::Error) -> bool {
    if error.is::<Longjmp>() {
        return true;
    }
    if error.is::<wasmtime::ThrownException>() {
        let mut scope = wasmtime::RootScope::new(&mut store);
        return wasmtime::AsContextMut::as_context_mut(&mut scope)
            .take_pending_exception()
            .is_some();
    }
    false
}

/// The number of the invoke signature `name` in [`InvokeChecks`], the same for every module of
/// the process: 1, 2, ... in order of first use (`None` past 255 signatures).
fn signature_id(name: &str) -> Option<u8> {
    static IDS: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
    let mut ids = IDS.lock().unwrap_or_else(|e| e.into_inner());
    let at = match ids.iter().position(|known| known == name) {
        Some(at) => at,
        None => {
            ids.push(name.to_owned());
            ids.len() - 1
        }
    };
    u8::try_from(at + 1).ok()
}

/// Makes the trampoline `invoke_<sig>` for a store (a side module's import the main module does
/// not have).
pub(crate) fn invoke_func(store: impl wasmtime::AsContextMut<Data = HostState>, name: &str) -> Option<Func> {
    let (ty, invoke) = Invoke::new(store.as_context().engine(), name)?;
    // SAFETY: `Invoke::call` reads its arguments and writes its result as `ty` lays them out
    // (`Invoke::new` derived both from the name).
    Some(unsafe { Func::new_unchecked(store, ty, move |caller, space| invoke.call(caller, space)) })
}

/// Which invoke signature each table slot's function was last checked against (0: none yet), so
/// that each slot is checked once per signature rather than on every call.
#[derive(Default)]
pub(crate) struct InvokeChecks(Vec<u8>);

impl InvokeChecks {
    fn get(&self, slot: u32) -> u8 {
        self.0.get(slot as usize).copied().unwrap_or(0)
    }

    fn set(&mut self, slot: u32, id: u8) {
        let slot = slot as usize;
        if slot >= self.0.len() {
            self.0.resize(slot + 1, 0);
        }
        self.0[slot] = id;
    }
}
