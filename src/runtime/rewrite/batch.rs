//! Runs a whole batch of frontend messages in one call into wasm.
//!
//! The host's loop (§4 of the ABI notes) calls `pq_buffer_remaining_data` before and
//! `PostgresMainLoopOnce` for each message, then `PostgresSendReadyForQueryIfNecessary` and
//! `pgl_pq_flush`: nine calls into wasm for a Bind/Execute/Sync, each costing more than a small
//! function's work. This pass adds the same loop in wasm, exported as [`RUN_BATCH_EXPORT`], and a
//! mutable global, exported as [`INPUT_PENDING_EXPORT`], in which the host keeps whether it still
//! holds input the backend has not read (the loop's other condition). A top-level ERROR still
//! leaves through `exit(100)` to the host, which recovers (`PostgresMainLongJmp`) and calls the
//! loop again for the rest of the batch.

use wasm_encoder::{BlockType, ConstExpr, ExportKind, Function, GlobalType, ValType};

use super::RewriteError;
use super::append::{Additions, Counts, append};

/// The export that runs the rest of the batch: `() -> ()`.
pub(crate) const RUN_BATCH_EXPORT: &str = "__harness_run_batch";

/// The exported `mut i32` the host sets while it holds unread input.
pub(crate) const INPUT_PENDING_EXPORT: &str = "__harness_input_pending";

/// Returns `wasm` with the batch loop and its global added.
pub(crate) fn add_batch_loop(wasm: &[u8]) -> Result<Vec<u8>, RewriteError> {
    append(wasm, &Plan::of(wasm)?.additions())
}

/// Where the loop goes and what it calls.
struct Plan {
    counts: Counts,
    loop_once: u32,
    remaining: u32,
    send_ready_for_query: u32,
    flush: u32,
}

impl Plan {
    fn of(wasm: &[u8]) -> Result<Plan, RewriteError> {
        let exports = super::function_exports(wasm)?;
        let func = |name: &str| super::exported_function(&exports, name);
        Ok(Plan {
            counts: Counts::of(wasm)?,
            loop_once: func("PostgresMainLoopOnce")?,
            remaining: func("pq_buffer_remaining_data")?,
            send_ready_for_query: func("PostgresSendReadyForQueryIfNecessary")?,
            flush: func("pgl_pq_flush")?,
        })
    }

    /// `[] -> []`, the global, the loop, and their exports.
    fn additions(&self) -> Additions {
        let mut added = Additions::default();
        added.types.push((vec![], vec![]));
        let ty = GlobalType {
            val_type: ValType::I32,
            mutable: true,
            shared: false,
        };
        added.globals.push((ty, ConstExpr::i32_const(0)));
        added.functions.push((self.counts.types, self.loop_body()));
        added.exports.push((
            RUN_BATCH_EXPORT.to_owned(),
            ExportKind::Func,
            self.counts.functions,
        ));
        added.exports.push((
            INPUT_PENDING_EXPORT.to_owned(),
            ExportKind::Global,
            self.counts.globals,
        ));
        added
    }

    /// While the host holds input or the backend has buffered bytes, one message; then the
    /// ReadyForQuery if one is due, and a flush.
    fn loop_body(&self) -> Function {
        let mut f = Function::new([]);
        f.instructions()
            .loop_(BlockType::Empty)
            .global_get(self.counts.globals)
            .i32_eqz()
            .if_(BlockType::Empty)
            .call(self.remaining)
            .i32_const(0)
            .i32_le_s()
            .if_(BlockType::Empty)
            .call(self.send_ready_for_query)
            .call(self.flush)
            .return_()
            .end()
            .end()
            .call(self.loop_once)
            .br(0)
            .end()
            .end();
        f
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wasmparser::{ExternalKind, Parser, Payload};

    #[test]
    fn the_loop_and_its_global_are_exported_after_everything_else() {
        // `prepare_main_module` ends with this pass.
        let out = super::super::prepare_main_module(crate::assets::PGLITE_WASM).unwrap();
        let counts = Counts::of(&out).unwrap();
        let (mut run_batch, mut input_pending) = (None, None);
        for payload in Parser::new(0).parse_all(&out) {
            if let Payload::ExportSection(reader) = payload.unwrap() {
                for e in reader {
                    let e = e.unwrap();
                    match e.name {
                        RUN_BATCH_EXPORT => run_batch = Some((e.kind, e.index)),
                        INPUT_PENDING_EXPORT => input_pending = Some((e.kind, e.index)),
                        _ => {}
                    }
                }
            }
        }
        // The loop is the last function and its global the last global.
        assert_eq!(run_batch, Some((ExternalKind::Func, counts.functions - 1)));
        assert_eq!(input_pending, Some((ExternalKind::Global, counts.globals - 1)));
    }
}
