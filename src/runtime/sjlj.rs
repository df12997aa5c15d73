//! Emscripten's setjmp/longjmp and `exit`, as host errors that unwind wasm frames (§5 of the ABI
//! notes).
//!
//! * `_emscripten_throw_longjmp` raises [`Longjmp`]; the nearest `invoke_*` trampoline catches it,
//!   restores the C stack pointer, calls `setThrew(1, 0)` and returns a zero, after which the
//!   compiled code takes its setjmp branch.
//! * `exit`/`proc_exit` raise [`ProcessExit`], which no trampoline catches: it unwinds to the
//!   outermost host call, where the backend reads the status (99 = started, 100 = top-level ERROR,
//!   anything else = the process ended).

use wasmtime::{Caller, Func, FuncType, Val, ValType};

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

/// A zero of `ty`, what an `invoke_*` returns after catching a longjmp.
pub(crate) fn zero(ty: &ValType) -> Val {
    match ty {
        ValType::I32 => Val::I32(0),
        ValType::I64 => Val::I64(0),
        ValType::F32 => Val::F32(0),
        ValType::F64 => Val::F64(0),
        ValType::V128 => Val::V128(0u128.into()),
        ValType::Ref(r) => Val::null_ref(r.heap_type()),
    }
}

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

/// The body of every `invoke_*`: call `table[fnptr](args)`, catching only a longjmp.
pub(crate) fn invoke(
    mut caller: Caller<'_, HostState>,
    params: &[Val],
    results: &mut [Val],
) -> wasmtime::Result<()> {
    let exports = caller.data().exports();
    let (table, stack_pointer, set_threw) = (exports.table, exports.stack_pointer, exports.set_threw.clone());
    let index = params[0].unwrap_i32() as u32;
    let func: Func = table
        .get(&mut caller, u64::from(index))
        .and_then(|r| r.as_func().flatten().copied())
        .ok_or_else(|| wasmtime::format_err!("invoke: no function at table index {index}"))?;
    let saved_sp = stack_pointer.get(&mut caller);
    match func.call(&mut caller, &params[1..], results) {
        Ok(()) => Ok(()),
        Err(e) if e.is::<Longjmp>() => {
            stack_pointer.set(&mut caller, saved_sp)?;
            set_threw.call(&mut caller, (1, 0))?;
            let ty = func.ty(&caller);
            for (slot, ty) in results.iter_mut().zip(ty.results()) {
                *slot = zero(&ty);
            }
            Ok(())
        }
        Err(e) => Err(e),
    }
}
