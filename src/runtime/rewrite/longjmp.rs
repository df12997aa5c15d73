//! Catches Emscripten's longjmp inside the module, with a wasm exception, instead of in the host.
//!
//! Emscripten compiles a call that may longjmp, in a function that calls setjmp, into a call of
//! the import `invoke_<sig>(fnptr, args...)`, and a longjmp into `setThrew(env, value)` followed
//! by the import `_emscripten_throw_longjmp()`. Served by the host, every such call leaves wasm
//! and enters it again (dozens per query), though almost none of them longjmps.
//!
//! This pass adds, in wasm:
//! * one exception tag, `longjmp`;
//! * for each `invoke_<sig>` import, a function of the same type that saves the C stack pointer,
//!   calls `table[fnptr](args...)` inside `try_table`, and on `longjmp` restores the stack
//!   pointer, calls `setThrew(1, 0)` and returns zero — what the host trampoline
//!   (`super::super::sjlj`) does;
//! * a function that throws `longjmp`, in place of `_emscripten_throw_longjmp`;
//!
//! and points every call of those imports at the new functions, which it exports under the
//! imports' names so that side modules (whose imports resolve to the main module's exports first)
//! use them too. The imports themselves stay, uncalled, so that no index changes; the host
//! still catches a longjmp that reaches one of its own trampolines, as a wasm exception.

use wasm_encoder::{BlockType, Catch, ExportKind, Function, TagKind, TagType, ValType};
use wasmparser::{CompositeInnerType, ExternalKind, FuncType, Parser, Payload, TypeRef};

use super::RewriteError;
use super::append::{Additions, Counts, append};

/// The import that raises a longjmp.
const THROW_LONGJMP: &str = "_emscripten_throw_longjmp";

/// Returns `wasm` (the main module, after `prepare_main_module`) with longjmp caught in wasm.
pub(crate) fn catch_longjmp_in_wasm(wasm: &[u8]) -> Result<Vec<u8>, RewriteError> {
    append(wasm, &Plan::of(wasm)?.additions()?)
}

/// What the pass adds, and where.
struct Plan {
    counts: Counts,
    /// One per `invoke_<sig>` import.
    invokes: Vec<InvokeImport>,
    /// The types of the functions the invokes call (their own, without the function pointer),
    /// added after the module's: `invoke.callee_type` indexes into it.
    callee_types: Vec<FuncType>,
    throw_import: u32,
    stack_pointer: u32,
    set_threw: u32,
}

struct InvokeImport {
    name: String,
    import_index: u32,
    type_index: u32,
    /// The index of its callee's type among `Plan::callee_types`.
    callee_type: usize,
    params: Vec<ValType>,
    result: Option<ValType>,
}

impl Plan {
    fn of(wasm: &[u8]) -> Result<Plan, RewriteError> {
        let mut types: Vec<Option<FuncType>> = Vec::new();
        let mut imported = Vec::new();
        let mut throw_import = None;
        let mut function_imports = 0u32;
        let (mut stack_pointer, mut set_threw) = (None, None);
        for payload in Parser::new(0).parse_all(wasm) {
            match payload? {
                Payload::TypeSection(reader) => {
                    for group in reader {
                        for sub in group?.into_types() {
                            types.push(match sub.composite_type.inner {
                                CompositeInnerType::Func(f) => Some(f),
                                _ => None,
                            });
                        }
                    }
                }
                Payload::ImportSection(reader) => {
                    for import in reader.into_imports() {
                        let import = import?;
                        let TypeRef::Func(type_index) = import.ty else {
                            continue;
                        };
                        if import.module == "env" && import.name.starts_with("invoke_") {
                            imported.push((import.name.to_owned(), type_index, function_imports));
                        } else if import.module == "env" && import.name == THROW_LONGJMP {
                            throw_import = Some(function_imports);
                        }
                        function_imports += 1;
                    }
                }
                Payload::ExportSection(reader) => {
                    for export in reader {
                        let export = export?;
                        match (export.name, export.kind) {
                            ("__stack_pointer", ExternalKind::Global) => stack_pointer = Some(export.index),
                            ("setThrew", ExternalKind::Func) => set_threw = Some(export.index),
                            _ => {}
                        }
                    }
                }
                _ => {}
            }
        }
        let missing = |what: &str| RewriteError::Unexpected(format!("no {what}"));
        let mut callee_types: Vec<FuncType> = Vec::new();
        let mut invokes = Vec::new();
        for (name, type_index, import_index) in imported {
            let ty = types
                .get(type_index as usize)
                .cloned()
                .flatten()
                .ok_or_else(|| RewriteError::Unexpected(format!("{name} has no function type")))?;
            let (Some((&pointer, args)), results) = (ty.params().split_first(), ty.results()) else {
                return Err(RewriteError::Unexpected(format!(
                    "{name} takes no function pointer"
                )));
            };
            if pointer != wasmparser::ValType::I32 || results.len() > 1 {
                return Err(RewriteError::Unexpected(format!("{name} has type {ty}")));
            }
            let callee = FuncType::new(args.iter().copied(), results.iter().copied());
            let callee_type = match callee_types.iter().position(|t| *t == callee) {
                Some(at) => at,
                None => {
                    callee_types.push(callee);
                    callee_types.len() - 1
                }
            };
            invokes.push(InvokeImport {
                name,
                import_index,
                type_index,
                callee_type,
                params: args.iter().map(val_type).collect::<Result<_, _>>()?,
                result: results.first().map(val_type).transpose()?,
            });
        }
        Ok(Plan {
            counts: Counts::of(wasm)?,
            invokes,
            callee_types,
            throw_import: throw_import.ok_or_else(|| missing("_emscripten_throw_longjmp import"))?,
            stack_pointer: stack_pointer.ok_or_else(|| missing("__stack_pointer export"))?,
            set_threw: set_threw.ok_or_else(|| missing("setThrew export"))?,
        })
    }

    /// The callee types, then `[] -> []`; the tag; the invokes, then the thrower, exported under
    /// the names of the imports they replace, which every call now reaches instead.
    fn additions(&self) -> Result<Additions, RewriteError> {
        let mut added = Additions::default();
        for callee in &self.callee_types {
            let params = callee.params().iter().map(val_type).collect::<Result<_, _>>()?;
            let results = callee.results().iter().map(val_type).collect::<Result<_, _>>()?;
            added.types.push((params, results));
        }
        let empty_type = self.counts.types + self.callee_types.len() as u32;
        added.types.push((vec![], vec![]));
        added.tags.push(TagType {
            kind: TagKind::Exception,
            func_type_idx: empty_type,
        });
        let longjmp_tag = self.counts.tags;
        for invoke in &self.invokes {
            let index = self.counts.functions + added.functions.len() as u32;
            added
                .functions
                .push((invoke.type_index, self.invoke_body(invoke, longjmp_tag)));
            added.exports.push((invoke.name.clone(), ExportKind::Func, index));
            added.redirect.insert(invoke.import_index, index);
        }
        let thrower = self.counts.functions + added.functions.len() as u32;
        let mut body = Function::new([]);
        body.instructions().throw(longjmp_tag).end();
        added.functions.push((empty_type, body));
        added
            .exports
            .push((THROW_LONGJMP.to_owned(), ExportKind::Func, thrower));
        added.redirect.insert(self.throw_import, thrower);
        Ok(added)
    }

    /// `invoke_<sig>(fnptr, args...)`: `table[fnptr](args...)`, or after a longjmp out of it, the
    /// stack pointer restored, `setThrew(1, 0)` and zero.
    fn invoke_body(&self, invoke: &InvokeImport, longjmp_tag: u32) -> Function {
        let saved_sp = 1 + invoke.params.len() as u32;
        let mut f = Function::new([(1, ValType::I32)]);
        let mut body = f.instructions();
        body.global_get(self.stack_pointer)
            .local_set(saved_sp)
            .block(BlockType::Empty)
            // The label of a catch clause is counted from outside the try_table: 0 is the block.
            .try_table(
                BlockType::Empty,
                [Catch::One {
                    tag: longjmp_tag,
                    label: 0,
                }],
            );
        for arg in 1..=invoke.params.len() as u32 {
            body.local_get(arg);
        }
        body.local_get(0)
            .call_indirect(0, self.counts.types + invoke.callee_type as u32)
            .return_()
            .end()
            .end()
            .local_get(saved_sp)
            .global_set(self.stack_pointer)
            .i32_const(1)
            .i32_const(0)
            .call(self.set_threw);
        match invoke.result {
            None => &mut body,
            Some(ValType::I32) => body.i32_const(0),
            Some(ValType::I64) => body.i64_const(0),
            Some(ValType::F32) => body.f32_const(0.0.into()),
            Some(ValType::F64) => body.f64_const(0.0.into()),
            Some(other) => unreachable!("val_type admits no {other:?}"),
        }
        .end();
        f
    }
}

fn val_type(ty: &wasmparser::ValType) -> Result<ValType, RewriteError> {
    match ty {
        wasmparser::ValType::I32 => Ok(ValType::I32),
        wasmparser::ValType::I64 => Ok(ValType::I64),
        wasmparser::ValType::F32 => Ok(ValType::F32),
        wasmparser::ValType::F64 => Ok(ValType::F64),
        other => Err(RewriteError::Unexpected(format!(
            "an invoke with a {other} value"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_call_reaches_an_invoke_import_or_the_longjmp_import_any_more() {
        let out =
            catch_longjmp_in_wasm(&super::super::own_memory(crate::assets::PGLITE_WASM).unwrap()).unwrap();
        let mut features = wasmparser::WasmFeatures::default();
        features.insert(wasmparser::WasmFeatures::EXCEPTIONS);
        wasmparser::Validator::new_with_features(features)
            .validate_all(&out)
            .expect("the rewritten module is valid");
        let mut replaced = Vec::new();
        let mut index = 0u32;
        let (mut calls_to_replaced, mut exported) = (0, 0);
        for payload in Parser::new(0).parse_all(&out) {
            match payload.unwrap() {
                Payload::ImportSection(reader) => {
                    for import in reader.into_imports() {
                        let import = import.unwrap();
                        if let TypeRef::Func(_) = import.ty {
                            if import.name.starts_with("invoke_") || import.name == THROW_LONGJMP {
                                replaced.push(index);
                            }
                            index += 1;
                        }
                    }
                }
                Payload::ExportSection(reader) => {
                    exported += reader
                        .into_iter()
                        .filter(|e| {
                            let e = e.as_ref().unwrap();
                            e.name.starts_with("invoke_") || e.name == THROW_LONGJMP
                        })
                        .count();
                }
                Payload::CodeSectionEntry(body) => {
                    for op in body.get_operators_reader().unwrap() {
                        if let wasmparser::Operator::Call { function_index } = op.unwrap() {
                            calls_to_replaced += usize::from(replaced.contains(&function_index));
                        }
                    }
                }
                _ => {}
            }
        }
        assert_eq!(
            replaced.len(),
            57,
            "56 invokes and the longjmp import are still imported"
        );
        assert_eq!(
            exported, 57,
            "each has a wasm replacement, exported under its name"
        );
        assert_eq!(calls_to_replaced, 0);
    }
}
