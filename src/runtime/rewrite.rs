//! Rewrites `pglite.wasm` so that its linear memory is defined by the module instead of imported.
//!
//! With an imported memory every store needs its own `Memory`, linker and `InstancePre`, and
//! wasmtime copies the 2.5 MB of data segments into each instance (~2.6 ms). With the memory
//! defined (and exported as `memory`, where side modules find it), one `InstancePre` serves every
//! store and wasmtime maps the data segments copy-on-write from the compiled artifact.
//! Function, table and global indices are unchanged: only the memory import moves into a memory
//! section.

use wasm_encoder::{ExportKind, ExportSection, ImportSection, MemorySection, MemoryType, RawSection};
use wasmparser::{ExternalKind, Parser, Payload, TypeRef};

/// Bump when the rewrite changes, so cached compiled modules of the old shape are not reused.
pub(crate) const REWRITE_VERSION: u32 = 1;

/// Errors of the rewrite: the input is not the module this crate was written for.
#[derive(Debug, thiserror::Error)]
pub enum RewriteError {
    /// The wasm could not be parsed.
    #[error("pglite.wasm could not be parsed: {0}")]
    Parse(#[from] wasmparser::BinaryReaderError),
    /// The module has a shape the rewrite does not handle.
    #[error("pglite.wasm has an unexpected shape: {0}")]
    Unexpected(String),
}

/// Returns `wasm` with `env.memory` turned into a defined memory exported as `memory`.
pub(crate) fn define_memory(wasm: &[u8]) -> Result<Vec<u8>, RewriteError> {
    let mut out = wasm_encoder::Module::new();
    let mut memory: Option<MemoryType> = None;
    let mut memory_written = false;

    for payload in Parser::new(0).parse_all(wasm) {
        let payload = payload?;
        let Some((id, range)) = payload.as_section() else {
            continue;
        };
        // Section ids after which the memory section must come (type, import, function, table).
        if !memory_written
            && id > 4
            && let Some(ty) = memory
        {
            let mut section = MemorySection::new();
            section.memory(ty);
            out.section(&section);
            memory_written = true;
        }
        match payload {
            Payload::ImportSection(reader) => {
                let mut section = ImportSection::new();
                for import in reader.into_imports() {
                    let import = import?;
                    match import.ty {
                        TypeRef::Memory(ty) if import.module == "env" && import.name == "memory" => {
                            memory = Some(MemoryType {
                                minimum: ty.initial,
                                maximum: ty.maximum,
                                memory64: ty.memory64,
                                shared: ty.shared,
                                page_size_log2: ty.page_size_log2,
                            });
                        }
                        TypeRef::Func(index) => {
                            section.import(
                                import.module,
                                import.name,
                                wasm_encoder::EntityType::Function(index),
                            );
                        }
                        other => {
                            return Err(RewriteError::Unexpected(format!(
                                "import {}.{} of kind {other:?}",
                                import.module, import.name
                            )));
                        }
                    }
                }
                out.section(&section);
            }
            Payload::MemorySection(_) => {
                return Err(RewriteError::Unexpected(
                    "a memory section besides env.memory".into(),
                ));
            }
            Payload::ExportSection(reader) => {
                let mut section = ExportSection::new();
                for export in reader {
                    let export = export?;
                    let kind = match export.kind {
                        ExternalKind::Func => ExportKind::Func,
                        ExternalKind::Table => ExportKind::Table,
                        ExternalKind::Memory => ExportKind::Memory,
                        ExternalKind::Global => ExportKind::Global,
                        ExternalKind::Tag => ExportKind::Tag,
                        other => {
                            return Err(RewriteError::Unexpected(format!("export kind {other:?}")));
                        }
                    };
                    section.export(export.name, kind, export.index);
                }
                if memory.is_some() {
                    section.export("memory", ExportKind::Memory, 0);
                }
                out.section(&section);
            }
            // Custom sections (dylink.0, names) mean nothing to wasmtime.
            Payload::CustomSection(_) => {}
            _ => {
                out.section(&RawSection {
                    id,
                    data: &wasm[range],
                });
            }
        }
    }
    if memory.is_none() {
        return Err(RewriteError::Unexpected("no env.memory import".into()));
    }
    Ok(out.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_memory_import_becomes_an_exported_definition() {
        let out = define_memory(crate::assets::PGLITE_WASM).unwrap();
        let mut saw_export = false;
        let mut imports = 0;
        for payload in Parser::new(0).parse_all(&out) {
            match payload.unwrap() {
                Payload::ImportSection(reader) => {
                    for import in reader.into_imports() {
                        let import = import.unwrap();
                        assert!(
                            !matches!(import.ty, TypeRef::Memory(_)),
                            "no memory import is left"
                        );
                        imports += 1;
                    }
                }
                Payload::MemorySection(reader) => {
                    let memories: Vec<_> = reader.into_iter().map(|m| m.unwrap()).collect();
                    assert_eq!((memories[0].initial, memories[0].maximum), (2048, Some(32768)));
                }
                Payload::ExportSection(reader) => {
                    saw_export = reader.into_iter().any(|e| {
                        let e = e.unwrap();
                        e.name == "memory" && e.kind == ExternalKind::Memory
                    });
                }
                _ => {}
            }
        }
        assert!(saw_export);
        assert_eq!(imports, 135, "every function import is kept");
        wasmparser::Validator::new().validate_all(&out).unwrap();
    }
}
