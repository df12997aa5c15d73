//! A Postgres ERROR raised from the host, in the guest code that called it: what
//! `ereport(ERROR, (errcode(...), errmsg_internal(...)))` would do at that call.
//!
//! The host calls the main module's own `errstart`, `errcode`, `errmsg_internal` and `errfinish`.
//! `errfinish` longjmps, which the module does as a wasm exception (see `rewrite::longjmp`); that
//! exception leaves the host's call into wasm as a pending exception, and the error returned here
//! carries it on into the guest's frames, where the innermost `PG_TRY` (or the main loop's error
//! recovery) catches it. The statement fails; the backend lives on.

use wasmtime::{Caller, Extern, TypedFunc};

use super::guest;
use super::imports::with_memory;
use super::state::HostState;

/// Postgres' `ERROR` level.
const ERROR: i32 = 21;

/// Postgres' packed form of a five-character SQLSTATE (`MAKE_SQLSTATE`).
fn packed_sqlstate(sqlstate: &[u8; 5]) -> i32 {
    sqlstate
        .iter()
        .enumerate()
        .map(|(i, &c)| (i32::from(c.wrapping_sub(b'0')) & 0x3f) << (6 * i))
        .sum()
}

/// Raises `ERROR: message` with SQLSTATE `sqlstate` in the guest that called the host function
/// `caller` belongs to. Returns the error for that host function to return: it carries the
/// ERROR's unwinding into the guest. If the guest cannot raise one (the functions are missing,
/// or memory is exhausted), the error is a plain host error naming `message`, which traps.
pub(crate) fn raise(
    caller: &mut Caller<'_, HostState>,
    sqlstate: &[u8; 5],
    message: &str,
) -> wasmtime::Error {
    match try_raise(caller, sqlstate, message) {
        // `errfinish` returned: only for a level below ERROR, which this never asks for.
        Ok(()) => wasmtime::Error::msg(message.to_owned()),
        Err(e) => e,
    }
}

fn try_raise(caller: &mut Caller<'_, HostState>, sqlstate: &[u8; 5], message: &str) -> wasmtime::Result<()> {
    let instance = caller.data().exports().instance;
    let missing = |name: &str| wasmtime::Error::msg(format!("{message} (and the guest has no {name})"));
    macro_rules! func {
        ($name:literal, $params:ty, $results:ty) => {
            match instance.get_export(&mut *caller, $name) {
                Some(Extern::Func(f)) => f.typed::<$params, $results>(&*caller)?,
                _ => return Err(missing($name)),
            }
        };
    }
    let errstart: TypedFunc<(i32, i32), i32> = func!("errstart", (i32, i32), i32);
    let errcode: TypedFunc<i32, i32> = func!("errcode", i32, i32);
    let errmsg_internal: TypedFunc<(i32, i32), i32> = func!("errmsg_internal", (i32, i32), i32);
    let errfinish: TypedFunc<(i32, i32, i32), ()> = func!("errfinish", (i32, i32, i32), ());
    let malloc = caller.data().exports().malloc.clone();
    let free: TypedFunc<i32, ()> = func!("free", i32, ());

    // The message is a format string: its `%`s doubled, no arguments.
    let format = format!("{}\0", message.replace('%', "%%"));
    let text = malloc.call(&mut *caller, format.len() as i32)?;
    if text == 0 {
        return Err(wasmtime::Error::msg(message.to_owned()));
    }
    with_memory(caller, |mem, _| guest::write_bytes(mem, text, format.as_bytes()))
        .map_err(|_| wasmtime::Error::msg(message.to_owned()))?;
    if errstart.call(&mut *caller, (ERROR, 0))? == 0 {
        free.call(&mut *caller, text)?;
        return Ok(());
    }
    errcode.call(&mut *caller, packed_sqlstate(sqlstate))?;
    // The error data keeps a copy of the formatted message.
    errmsg_internal.call(&mut *caller, (text, 0))?;
    free.call(&mut *caller, text)?;
    // No file, line or function: the error comes from no source line of Postgres.
    errfinish.call(&mut *caller, (0, 0, 0))
}

#[cfg(test)]
mod tests {
    use super::packed_sqlstate;

    #[test]
    fn sqlstates_pack_as_postgres_packs_them() {
        // ERRCODE_FEATURE_NOT_SUPPORTED and ERRCODE_QUERY_CANCELED, from Postgres' errcodes.h
        // via MAKE_SQLSTATE: six bits a character, first character lowest.
        assert_eq!(packed_sqlstate(b"0A000"), (17 << 6));
        assert_eq!(packed_sqlstate(b"57014"), 5 | (7 << 6) | (1 << 18) | (4 << 24));
    }
}
