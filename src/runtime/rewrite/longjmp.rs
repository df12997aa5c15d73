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

use std::collections::HashMap;

use wasm_encoder::reencode::{Reencode, RoundtripReencoder};
use wasm_encoder::{
    BlockType, Catch, CodeSection, ExportKind, ExportSection, Function, FunctionSection, RawSection, TagKind,
    TagSection, TagType, TypeSection, ValType,
};
use wasmparser::{CompositeInnerType, ExternalKind, FuncType, Parser, Payload, TypeRef};

use super::{RewriteError, reencode_error};

/// The import that raises a longjmp.
const THROW_LONGJMP: &str = "_emscripten_throw_longjmp";

/// Returns `wasm` (the main module, after `prepare_main_module`) with longjmp caught in wasm.
pub(crate) fn catch_longjmp_in_wasm(wasm: &[u8]) -> Result<Vec<u8>, RewriteError> {
    let plan = Plan::of(wasm)?;
    let mut out = wasm_encoder::Module::new();
    let mut tag_written = false;
    for payload in Parser::new(0).parse_all(wasm) {
        let payload = payload?;
        let Some((id, range)) = payload.as_section() else {
            continue;
        };
        // The tag section comes after the memory section and before the global section.
        if !tag_written && matches!(id, 6..=12) {
            let mut tags = TagSection::new();
            tags.tag(TagType {
                kind: TagKind::Exception,
                func_type_idx: plan.empty_type,
            });
            out.section(&tags);
            tag_written = true;
        }
        match payload {
            Payload::TypeSection(reader) => {
                let mut types = TypeSection::new();
                RoundtripReencoder
                    .parse_type_section(&mut types, reader)
                    .map_err(reencode_error)?;
                for callee in &plan.callee_types {
                    types.ty().function(
                        callee
                            .params()
                            .iter()
                            .map(val_type)
                            .collect::<Result<Vec<_>, _>>()?,
                        callee
                            .results()
                            .iter()
                            .map(val_type)
                            .collect::<Result<Vec<_>, _>>()?,
                    );
                }
                types.ty().function([], []);
                out.section(&types);
            }
            Payload::FunctionSection(reader) => {
                let mut functions = FunctionSection::new();
                RoundtripReencoder
                    .parse_function_section(&mut functions, reader)
                    .map_err(reencode_error)?;
                for invoke in &plan.invokes {
                    functions.function(invoke.type_index);
                }
                functions.function(plan.empty_type);
                out.section(&functions);
            }
            Payload::TagSection(_) => {
                return Err(RewriteError::Unexpected("a tag section already".into()));
            }
            Payload::ExportSection(reader) => {
                let mut exports = ExportSection::new();
                RoundtripReencoder
                    .parse_export_section(&mut exports, reader)
                    .map_err(reencode_error)?;
                for invoke in &plan.invokes {
                    exports.export(&invoke.name, ExportKind::Func, invoke.replacement);
                }
                exports.export(THROW_LONGJMP, ExportKind::Func, plan.throw_replacement);
                out.section(&exports);
            }
            Payload::CodeSectionStart { range, .. } => {
                out.section(&plan.code_section(wasm, range)?);
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

/// What the pass adds, and where.
struct Plan {
    /// One per `invoke_<sig>` import.
    invokes: Vec<InvokeImport>,
    /// The types of the functions the invokes call (their own, without the function pointer),
    /// added after the module's types: `invoke.callee_type` indexes into it from
    /// `first_new_type`.
    callee_types: Vec<FuncType>,
    first_new_type: u32,
    /// `[] -> []`, added last: the tag's type and the thrower's.
    empty_type: u32,
    /// Function indices to call instead, by import index.
    redirect: HashMap<u32, u32>,
    throw_replacement: u32,
    stack_pointer: u32,
    set_threw: u32,
}

struct InvokeImport {
    name: String,
    type_index: u32,
    /// The index of its callee's type among `Plan::callee_types`.
    callee_type: usize,
    params: Vec<ValType>,
    result: Option<ValType>,
    replacement: u32,
}

impl Plan {
    fn of(wasm: &[u8]) -> Result<Plan, RewriteError> {
        let mut types: Vec<Option<FuncType>> = Vec::new();
        let mut imported = Vec::new();
        let mut throw_import = None;
        let mut function_imports = 0u32;
        let mut defined_functions = 0u32;
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
                Payload::FunctionSection(reader) => defined_functions = reader.count(),
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
        let throw_import = throw_import.ok_or_else(|| missing("_emscripten_throw_longjmp import"))?;
        let stack_pointer = stack_pointer.ok_or_else(|| missing("__stack_pointer export"))?;
        let set_threw = set_threw.ok_or_else(|| missing("setThrew export"))?;

        let first_new_type = types.len() as u32;
        let mut callee_types: Vec<FuncType> = Vec::new();
        let mut invokes = Vec::new();
        let mut redirect = HashMap::new();
        let first_new_function = function_imports + defined_functions;
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
            let replacement = first_new_function + invokes.len() as u32;
            redirect.insert(import_index, replacement);
            invokes.push(InvokeImport {
                name,
                type_index,
                callee_type,
                params: args.iter().map(val_type).collect::<Result<_, _>>()?,
                result: results.first().map(val_type).transpose()?,
                replacement,
            });
        }
        let throw_replacement = first_new_function + invokes.len() as u32;
        redirect.insert(throw_import, throw_replacement);
        let empty_type = first_new_type + callee_types.len() as u32;
        Ok(Plan {
            invokes,
            callee_types,
            first_new_type,
            empty_type,
            redirect,
            throw_replacement,
            stack_pointer,
            set_threw,
        })
    }

    /// The code section: the module's bodies with their calls redirected, then the new bodies.
    fn code_section(&self, wasm: &[u8], range: std::ops::Range<usize>) -> Result<CodeSection, RewriteError> {
        let reader = wasmparser::CodeSectionReader::new(wasmparser::BinaryReader::new(
            &wasm[range.clone()],
            range.start,
        ))?;
        let mut code = CodeSection::new();
        let mut redirecting = Redirect(&self.redirect);
        for body in reader {
            redirecting
                .parse_function_body(&mut code, body?)
                .map_err(reencode_error)?;
        }
        for invoke in &self.invokes {
            code.function(&self.invoke_body(invoke));
        }
        let mut thrower = Function::new([]);
        thrower.instructions().throw(0).end();
        code.function(&thrower);
        Ok(code)
    }

    /// `invoke_<sig>(fnptr, args...)`: `table[fnptr](args...)`, or after a longjmp out of it, the
    /// stack pointer restored, `setThrew(1, 0)` and zero.
    fn invoke_body(&self, invoke: &InvokeImport) -> Function {
        let saved_sp = 1 + invoke.params.len() as u32;
        let mut f = Function::new([(1, ValType::I32)]);
        let mut body = f.instructions();
        body.global_get(self.stack_pointer)
            .local_set(saved_sp)
            .block(BlockType::Empty)
            // The label of a catch clause is counted from outside the try_table: 0 is the block.
            .try_table(BlockType::Empty, [Catch::One { tag: 0, label: 0 }]);
        for arg in 1..=invoke.params.len() as u32 {
            body.local_get(arg);
        }
        body.local_get(0)
            .call_indirect(0, self.first_new_type + invoke.callee_type as u32)
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

/// Re-encodes function bodies with calls of some functions pointed at others.
struct Redirect<'a>(&'a HashMap<u32, u32>);

impl Reencode for Redirect<'_> {
    type Error = std::convert::Infallible;

    fn function_index(&mut self, func: u32) -> Result<u32, wasm_encoder::reencode::Error<Self::Error>> {
        Ok(self.0.get(&func).copied().unwrap_or(func))
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
        // `prepare_main_module` ends with this pass.
        let out = super::super::prepare_main_module(crate::assets::PGLITE_WASM).unwrap();
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
