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

use wasm_encoder::reencode::{Reencode, RoundtripReencoder};
use wasm_encoder::{
    BlockType, CodeSection, ConstExpr, ExportKind, ExportSection, Function, FunctionSection, GlobalSection,
    GlobalType, RawSection, TypeSection, ValType,
};
use wasmparser::{ExternalKind, Parser, Payload, TypeRef};

use super::{RewriteError, reencode_error};

/// The export that runs the rest of the batch: `() -> ()`.
pub(crate) const RUN_BATCH_EXPORT: &str = "__harness_run_batch";

/// The exported `mut i32` the host sets while it holds unread input.
pub(crate) const INPUT_PENDING_EXPORT: &str = "__harness_input_pending";

/// Returns `wasm` with the batch loop and its global added. Function, global and type indices
/// of the module are unchanged: what is added comes last.
pub(crate) fn add_batch_loop(wasm: &[u8]) -> Result<Vec<u8>, RewriteError> {
    let plan = Plan::of(wasm)?;
    let mut out = wasm_encoder::Module::new();
    for payload in Parser::new(0).parse_all(wasm) {
        let payload = payload?;
        let Some((id, range)) = payload.as_section() else {
            continue;
        };
        match payload {
            Payload::TypeSection(reader) => {
                let mut types = TypeSection::new();
                RoundtripReencoder
                    .parse_type_section(&mut types, reader)
                    .map_err(reencode_error)?;
                types.ty().function([], []);
                out.section(&types);
            }
            Payload::FunctionSection(reader) => {
                let mut functions = FunctionSection::new();
                RoundtripReencoder
                    .parse_function_section(&mut functions, reader)
                    .map_err(reencode_error)?;
                functions.function(plan.loop_type);
                out.section(&functions);
            }
            Payload::GlobalSection(reader) => {
                let mut globals = GlobalSection::new();
                RoundtripReencoder
                    .parse_global_section(&mut globals, reader)
                    .map_err(reencode_error)?;
                globals.global(
                    GlobalType {
                        val_type: ValType::I32,
                        mutable: true,
                        shared: false,
                    },
                    &ConstExpr::i32_const(0),
                );
                out.section(&globals);
            }
            Payload::ExportSection(reader) => {
                let mut exports = ExportSection::new();
                RoundtripReencoder
                    .parse_export_section(&mut exports, reader)
                    .map_err(reencode_error)?;
                exports.export(RUN_BATCH_EXPORT, ExportKind::Func, plan.loop_function);
                exports.export(INPUT_PENDING_EXPORT, ExportKind::Global, plan.input_pending);
                out.section(&exports);
            }
            Payload::CodeSectionStart { range, .. } => {
                let reader = wasmparser::CodeSectionReader::new(wasmparser::BinaryReader::new(
                    &wasm[range.clone()],
                    range.start,
                ))?;
                let mut code = CodeSection::new();
                for body in reader {
                    code.raw(&wasm[body?.range()]);
                }
                code.function(&plan.loop_body());
                out.section(&code);
            }
            _ => {
                out.section(&RawSection {
                    id,
                    data: &wasm[range],
                });
            }
        }
    }
    Ok(out.finish())
}

/// Where the loop goes and what it calls.
struct Plan {
    loop_type: u32,
    loop_function: u32,
    input_pending: u32,
    loop_once: u32,
    remaining: u32,
    send_ready_for_query: u32,
    flush: u32,
}

impl Plan {
    fn of(wasm: &[u8]) -> Result<Plan, RewriteError> {
        let (mut types, mut function_imports, mut functions, mut globals) = (0u32, 0u32, 0u32, 0u32);
        let mut export = std::collections::HashMap::new();
        for payload in Parser::new(0).parse_all(wasm) {
            match payload? {
                Payload::TypeSection(reader) => {
                    for group in reader {
                        types += group?.types().len() as u32;
                    }
                }
                Payload::ImportSection(reader) => {
                    for import in reader.into_imports() {
                        match import?.ty {
                            TypeRef::Func(_) => function_imports += 1,
                            TypeRef::Global(_) => globals += 1,
                            _ => {}
                        }
                    }
                }
                Payload::FunctionSection(reader) => functions = reader.count(),
                Payload::GlobalSection(reader) => globals += reader.count(),
                Payload::ExportSection(reader) => {
                    for e in reader {
                        let e = e?;
                        if e.kind == ExternalKind::Func {
                            export.insert(e.name.to_owned(), e.index);
                        }
                    }
                }
                _ => {}
            }
        }
        let func = |name: &str| {
            export
                .get(name)
                .copied()
                .ok_or_else(|| RewriteError::Unexpected(format!("no export {name}")))
        };
        Ok(Plan {
            loop_type: types,
            loop_function: function_imports + functions,
            input_pending: globals,
            loop_once: func("PostgresMainLoopOnce")?,
            remaining: func("pq_buffer_remaining_data")?,
            send_ready_for_query: func("PostgresSendReadyForQueryIfNecessary")?,
            flush: func("pgl_pq_flush")?,
        })
    }

    /// While the host holds input or the backend has buffered bytes, one message; then the
    /// ReadyForQuery if one is due, and a flush.
    fn loop_body(&self) -> Function {
        let mut f = Function::new([]);
        f.instructions()
            .loop_(BlockType::Empty)
            .global_get(self.input_pending)
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

    #[test]
    fn the_loop_and_its_global_are_exported_after_everything_else() {
        // `prepare_main_module` ends with this pass.
        let out = super::super::prepare_main_module(crate::assets::PGLITE_WASM).unwrap();
        let plan = Plan::of(&out).unwrap();
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
        assert_eq!(run_batch, Some((ExternalKind::Func, plan.loop_function - 1)));
        assert_eq!(
            input_pending,
            Some((ExternalKind::Global, plan.input_pending - 1))
        );
    }
}
