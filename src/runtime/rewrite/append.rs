//! Adds types, functions, globals, tags and exports after a module's own, so that no index of
//! the module changes, and optionally points its calls of some functions at others: what the
//! [`longjmp`](super::longjmp) and [`batch`](super::batch) passes write.

use std::collections::HashMap;

use wasm_encoder::reencode::{Reencode, RoundtripReencoder};
use wasm_encoder::{
    CodeSection, ConstExpr, ExportKind, ExportSection, Function, FunctionSection, GlobalSection, GlobalType,
    RawSection, TagSection, TagType, TypeSection, ValType,
};
use wasmparser::{Parser, Payload, TypeRef};

use super::{RewriteError, reencode_error};

/// The sizes of a module's index spaces: where what is added goes.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct Counts {
    pub types: u32,
    pub functions: u32,
    pub globals: u32,
    pub tags: u32,
}

impl Counts {
    pub fn of(wasm: &[u8]) -> Result<Counts, RewriteError> {
        let mut counts = Counts::default();
        for payload in Parser::new(0).parse_all(wasm) {
            match payload? {
                Payload::TypeSection(reader) => {
                    for group in reader {
                        counts.types += group?.types().len() as u32;
                    }
                }
                Payload::ImportSection(reader) => {
                    for import in reader.into_imports() {
                        match import?.ty {
                            TypeRef::Func(_) | TypeRef::FuncExact(_) => counts.functions += 1,
                            TypeRef::Global(_) => counts.globals += 1,
                            TypeRef::Tag(_) => counts.tags += 1,
                            TypeRef::Table(_) | TypeRef::Memory(_) => {}
                        }
                    }
                }
                Payload::FunctionSection(reader) => counts.functions += reader.count(),
                Payload::GlobalSection(reader) => counts.globals += reader.count(),
                Payload::TagSection(reader) => counts.tags += reader.count(),
                _ => {}
            }
        }
        Ok(counts)
    }
}

/// What a pass adds. Each kind takes the indices after the module's, in order.
#[derive(Default)]
pub(super) struct Additions {
    /// Function types: (parameters, results).
    pub types: Vec<(Vec<ValType>, Vec<ValType>)>,
    /// Functions: (type index, body).
    pub functions: Vec<(u32, Function)>,
    pub globals: Vec<(GlobalType, ConstExpr)>,
    pub tags: Vec<TagType>,
    pub exports: Vec<(String, ExportKind, u32)>,
    /// The module's calls (and other references) of a function to point at another instead.
    pub redirect: HashMap<u32, u32>,
}

/// Returns `wasm` with `additions` made.
pub(super) fn append(wasm: &[u8], additions: &Additions) -> Result<Vec<u8>, RewriteError> {
    let mut out = wasm_encoder::Module::new();
    let mut tags_written = additions.tags.is_empty();
    for payload in Parser::new(0).parse_all(wasm) {
        let payload = payload?;
        let Some((id, range)) = payload.as_section() else {
            continue;
        };
        // The tag section comes after the memory section and before the global section.
        if !tags_written && matches!(id, 6..=12) {
            let mut tags = TagSection::new();
            for tag in &additions.tags {
                tags.tag(*tag);
            }
            out.section(&tags);
            tags_written = true;
        }
        match payload {
            Payload::TypeSection(reader) => {
                let mut types = TypeSection::new();
                RoundtripReencoder
                    .parse_type_section(&mut types, reader)
                    .map_err(reencode_error)?;
                for (params, results) in &additions.types {
                    types
                        .ty()
                        .function(params.iter().copied(), results.iter().copied());
                }
                out.section(&types);
            }
            Payload::FunctionSection(reader) => {
                let mut functions = FunctionSection::new();
                RoundtripReencoder
                    .parse_function_section(&mut functions, reader)
                    .map_err(reencode_error)?;
                for (ty, _) in &additions.functions {
                    functions.function(*ty);
                }
                out.section(&functions);
            }
            Payload::GlobalSection(reader) if !additions.globals.is_empty() => {
                let mut globals = GlobalSection::new();
                RoundtripReencoder
                    .parse_global_section(&mut globals, reader)
                    .map_err(reencode_error)?;
                for (ty, init) in &additions.globals {
                    globals.global(*ty, init);
                }
                out.section(&globals);
            }
            Payload::TagSection(_) if !additions.tags.is_empty() => {
                return Err(RewriteError::Unexpected("a tag section already".into()));
            }
            Payload::ExportSection(reader) => {
                let mut exports = ExportSection::new();
                RoundtripReencoder
                    .parse_export_section(&mut exports, reader)
                    .map_err(reencode_error)?;
                for (name, kind, index) in &additions.exports {
                    exports.export(name, *kind, *index);
                }
                out.section(&exports);
            }
            Payload::CodeSectionStart { range, .. } => {
                let reader = wasmparser::CodeSectionReader::new(wasmparser::BinaryReader::new(
                    &wasm[range.clone()],
                    range.start,
                ))?;
                let mut code = CodeSection::new();
                let mut redirecting = Redirect(&additions.redirect);
                for body in reader {
                    let body = body?;
                    if additions.redirect.is_empty() {
                        code.raw(&wasm[body.range()]);
                    } else {
                        redirecting
                            .parse_function_body(&mut code, body)
                            .map_err(reencode_error)?;
                    }
                }
                for (_, body) in &additions.functions {
                    code.function(body);
                }
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

/// Re-encodes function bodies with references to some functions pointed at others.
struct Redirect<'a>(&'a HashMap<u32, u32>);

impl Reencode for Redirect<'_> {
    type Error = std::convert::Infallible;

    fn function_index(&mut self, func: u32) -> Result<u32, wasm_encoder::reencode::Error<Self::Error>> {
        Ok(self.0.get(&func).copied().unwrap_or(func))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_is_added_comes_after_what_was_there() {
        let before = super::super::prepare_main_module(crate::assets::PGLITE_WASM).unwrap();
        let counts = Counts::of(&before).unwrap();
        let mut added = Additions::default();
        added.types.push((vec![ValType::I32], vec![ValType::I32]));
        let mut identity = Function::new([]);
        identity.instructions().local_get(0).end();
        added.functions.push((counts.types, identity));
        added
            .exports
            .push(("identity".into(), ExportKind::Func, counts.functions));
        let after = append(&before, &added).unwrap();
        wasmparser::Validator::new().validate_all(&after).unwrap();
        let now = Counts::of(&after).unwrap();
        assert_eq!(
            (now.types, now.functions, now.globals),
            (counts.types + 1, counts.functions + 1, counts.globals)
        );
    }
}
