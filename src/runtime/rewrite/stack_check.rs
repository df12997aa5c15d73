//! Lets Postgres' stack check see wasm's own stack.
//!
//! Postgres guards every recursion with `check_stack_depth()`, which raises "stack depth limit
//! exceeded" (54001) once the C stack has grown by `max_stack_depth`. In PGlite the C stack is a
//! region of linear memory that only grows for locals whose address is taken; most frames live
//! on wasm's own stack, which wasmtime bounds separately and, when it runs out, ends the call with
//! a trap that no `PG_CATCH` sees, killing the backend. A recursion such as
//! `CREATE FUNCTION f(n int) ... SELECT f(n - 1)` with `f(1000000)` did that.
//!
//! This pass points every call of `check_stack_depth` in the module at a new function that, on
//! every [`SAMPLE`]th call, first calls the host through the table slot in the exported global
//! [`STACK_CHECK_SLOT_EXPORT`] (zero: no check), and then runs Postgres' own check. The host
//! function raises the same ERROR when wasm's stack is nearly used up, with every guest frame
//! still there for Postgres' error handling to unwind (see `PgInstance::add_callbacks`).
//! Side modules keep calling the export, Postgres' check alone; their recursions pass through
//! the main module's checked callers.

use wasm_encoder::{BlockType, ConstExpr, ExportKind, Function, GlobalType, ValType};

use super::append::{Additions, Counts, append};
use super::{RewriteError, exported_function, function_exports};

/// The exported `mut i32` holding the table slot of the host's stack check (0 until set).
pub(crate) const STACK_CHECK_SLOT_EXPORT: &str = "__harness_stack_check_slot";

/// The host is asked on one `check_stack_depth` call in this many: each ask costs a call out
/// of wasm, and a recursion calls the check at least once a level, so between two asks the stack
/// grows by at most this many levels (which the host's margin covers many times over).
pub(crate) const SAMPLE: i32 = 32;

/// Returns `wasm` with its calls of `check_stack_depth` checking wasm's stack too.
pub(crate) fn check_wasm_stack_too(wasm: &[u8]) -> Result<Vec<u8>, RewriteError> {
    let counts = Counts::of(wasm)?;
    let check_stack_depth = exported_function(&function_exports(wasm)?, "check_stack_depth")?;
    let mut added = Additions::default();
    // [] -> [], for the wrapper and the host function.
    added.types.push((vec![], vec![]));
    let void = counts.types;
    let counter_global = GlobalType {
        val_type: ValType::I32,
        mutable: true,
        shared: false,
    };
    let (calls, slot) = (counts.globals, counts.globals + 1);
    added.globals.push((counter_global, ConstExpr::i32_const(0)));
    added.globals.push((counter_global, ConstExpr::i32_const(0)));
    let mut checked = Function::new([]);
    checked
        .instructions()
        // calls += 1; if calls % SAMPLE == 0 && slot != 0 { table[slot]() }
        .global_get(calls)
        .i32_const(1)
        .i32_add()
        .global_set(calls)
        .global_get(calls)
        .i32_const(SAMPLE - 1)
        .i32_and()
        .i32_eqz()
        .if_(BlockType::Empty)
        .global_get(slot)
        .if_(BlockType::Empty)
        .global_get(slot)
        .call_indirect(0, void)
        .end()
        .end()
        .call(check_stack_depth)
        .end();
    added.functions.push((void, checked));
    added.redirect.insert(check_stack_depth, counts.functions);
    added
        .exports
        .push((STACK_CHECK_SLOT_EXPORT.to_owned(), ExportKind::Global, slot));
    append(wasm, &added)
}

#[cfg(test)]
mod tests {
    use super::*;
    use wasmparser::{ExternalKind, Parser, Payload};

    #[test]
    fn no_call_reaches_check_stack_depth_but_through_the_wrapper() {
        let wasm = super::super::own_memory(crate::assets::PGLITE_WASM).unwrap();
        let out = check_wasm_stack_too(&wasm).unwrap();
        wasmparser::Validator::new().validate_all(&out).unwrap();
        let original = exported_function(&function_exports(&out).unwrap(), "check_stack_depth").unwrap();
        let callers = super::super::calls_of(&out, original);
        let slot_exported = Parser::new(0)
            .parse_all(&out)
            .any(|payload| match payload.unwrap() {
                Payload::ExportSection(reader) => reader.into_iter().any(|e| {
                    let e = e.unwrap();
                    e.name == STACK_CHECK_SLOT_EXPORT && e.kind == ExternalKind::Global
                }),
                _ => false,
            });
        assert_eq!(callers, 1, "only the wrapper calls Postgres' check");
        assert!(slot_exported);
    }
}
