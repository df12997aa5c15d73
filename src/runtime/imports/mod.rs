//! The 135 function imports of `pglite.wasm` (`env.*` and `wasi_snapshot_preview1.*`), defined once
//! on a `Linker` shared by every instance.
//!
//! The module's WASI imports share one fd table with its Emscripten syscalls, so both are served
//! by this crate's [`Vfs`](crate::vfs::Vfs) rather than by wasmtime-wasi.

mod control;
mod fs;
mod net;
mod system;
mod wasi;

use wasmtime::{Caller, Engine, Linker};

use super::sjlj;
use super::state::HostState;
use crate::vfs::Errno;

/// Builds the linker with every import of `module` defined (instantiate_pre then proves that
/// nothing is missing).
pub(crate) fn linker(engine: &Engine, module: &wasmtime::Module) -> wasmtime::Result<Linker<HostState>> {
    let mut linker = Linker::new(engine);
    control::define(&mut linker)?;
    fs::define(&mut linker)?;
    net::define(&mut linker)?;
    system::define(&mut linker)?;
    wasi::define(&mut linker)?;
    // setjmp/longjmp trampolines, one per signature the module imports.
    for import in module.imports() {
        if import.module() == "env"
            && let Some((ty, invoke)) = sjlj::Invoke::new(engine, import.name())
        {
            // SAFETY: `Invoke::call` reads its arguments and writes its result as `ty` lays them
            // out (`Invoke::new` derived both from the name).
            unsafe {
                linker.func_new_unchecked("env", import.name(), ty, move |caller, space| {
                    invoke.call(caller, space)
                })?
            };
        }
    }
    Ok(linker)
}

/// Runs `f` with the guest memory and the host state borrowed together.
pub(crate) fn with_memory<R>(
    caller: &mut Caller<'_, HostState>,
    f: impl FnOnce(&mut [u8], &mut HostState) -> R,
) -> R {
    let memory = caller.data().exports().memory;
    let (mem, state) = memory.data_and_store_mut(caller);
    f(mem, state)
}

/// An Emscripten syscall: a non-negative result, or `-errno`.
pub(crate) fn syscall(
    caller: &mut Caller<'_, HostState>,
    f: impl FnOnce(&mut [u8], &mut HostState) -> Result<i32, Errno>,
) -> i32 {
    match with_memory(caller, f) {
        Ok(value) => value,
        Err(errno) => -i32::from(errno.0),
    }
}

/// A WASI call: 0, or a positive errno.
pub(crate) fn wasi_call(
    caller: &mut Caller<'_, HostState>,
    f: impl FnOnce(&mut [u8], &mut HostState) -> Result<(), Errno>,
) -> i32 {
    match with_memory(caller, f) {
        Ok(()) => 0,
        Err(errno) => i32::from(errno.0),
    }
}
