//! Process control: `exit`, `abort`, assertions, longjmp, signal handlers.

use wasmtime::{Caller, Linker};

use super::super::sjlj::{Longjmp, ProcessExit};
use super::super::state::HostState;
use super::with_memory;
use crate::runtime::guest;

pub(super) fn define(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    linker.func_wrap("env", "exit", |code: i32| -> wasmtime::Result<()> {
        Err(wasmtime::Error::new(ProcessExit(code)))
    })?;
    linker.func_wrap(
        "wasi_snapshot_preview1",
        "proc_exit",
        |code: i32| -> wasmtime::Result<()> { Err(wasmtime::Error::new(ProcessExit(code))) },
    )?;
    linker.func_wrap("env", "_emscripten_throw_longjmp", || -> wasmtime::Result<()> {
        Err(wasmtime::Error::new(Longjmp))
    })?;
    linker.func_wrap("env", "_abort_js", || -> wasmtime::Result<()> {
        wasmtime::bail!("PostgreSQL called abort()")
    })?;
    linker.func_wrap(
        "env",
        "__assert_fail",
        |mut caller: Caller<'_, HostState>,
         cond: i32,
         file: i32,
         line: i32,
         func: i32|
         -> wasmtime::Result<()> {
            let text = with_memory(&mut caller, |mem, _| {
                let s = |p| String::from_utf8_lossy(guest::cstr(mem, p).unwrap_or(b"?")).into_owned();
                format!(
                    "assertion `{}` failed at {}:{line} in {}",
                    s(cond),
                    s(file),
                    s(func)
                )
            });
            wasmtime::bail!("PostgreSQL {text}")
        },
    )?;
    // Only used by emscripten_force_exit; there is no keep-alive count to clear.
    linker.func_wrap("env", "_emscripten_runtime_keepalive_clear", || {})?;
    linker.func_wrap(
        "env",
        "__call_sighandler",
        |mut caller: Caller<'_, HostState>, handler: i32, signal: i32| -> wasmtime::Result<()> {
            let table = caller.data().exports().table;
            let func = table
                .get(&mut caller, u64::from(handler as u32))
                .and_then(|r| r.as_func().flatten().copied())
                .ok_or_else(|| wasmtime::format_err!("__call_sighandler: no handler at {handler}"))?;
            func.typed::<i32, ()>(&caller)?.call(&mut caller, signal)
        },
    )?;
    Ok(())
}
