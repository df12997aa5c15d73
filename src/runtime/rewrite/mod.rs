//! Rewrites `pglite.wasm` for this host:
//!
//! * its linear memory is defined by the module instead of imported. With an imported memory
//!   every store needs its own `Memory`, linker and `InstancePre`; with the memory defined (and
//!   exported as `memory`, where side modules find it), one `InstancePre` serves every store;
//! * its active data segments become passive and its start function (which zeroes the bss) is
//!   no longer run at instantiation but exported as [`START_EXPORT`]: the initial contents of the
//!   memory come from a memory image the host maps copy-on-write (`super::memory`), either the
//!   data segments laid out ([`initial_memory_image`]) or the snapshot of a booted instance, which
//!   instantiation must not overwrite;
//! * every mutable global is also exported as `__harness_global_N`, so a snapshot can record and
//!   restore them (3 of the 4 are otherwise hidden);
//! * Postgres' stack check also checks wasm's own stack ([`stack_check`]);
//! * calls of small functions are replaced by their bodies ([`inline`]);
//! * a longjmp is caught in wasm, by exception handling, not by host trampolines ([`longjmp`]);
//! * a batch of frontend messages runs in one call into wasm ([`batch`]).
//!
//! Function, table, global and data indices are unchanged: what is added comes after them, and
//! an inlined function stays where it was, for its other users (tables, exports, side modules).

use wasm_encoder::{
    DataSection, ExportKind, ExportSection, ImportSection, MemorySection, MemoryType, RawSection,
};
use wasmparser::{DataKind, ExternalKind, Operator, Parser, Payload, TypeRef};

mod append;
mod batch;
mod inline;
mod longjmp;
mod stack_check;

pub(crate) use batch::{INPUT_PENDING_EXPORT, RUN_BATCH_EXPORT};
pub(crate) use stack_check::STACK_CHECK_SLOT_EXPORT;

/// Identifies this rewrite in cache keys (compiled modules, templates): a hash of its source,
/// so that a module compiled from another rewrite is never reused, without a version to bump
/// by hand (a bump forgotten, or the same number given to two rewrites, serves stale modules).
pub(crate) const REWRITE_VERSION: u64 = fnv1a(&REWRITE_SOURCES);

/// The source files of the rewrite, every file of this directory (a test checks).
const REWRITE_SOURCES: [(&str, &[u8]); 6] = [
    ("mod.rs", include_bytes!("mod.rs")),
    ("append.rs", include_bytes!("append.rs")),
    ("batch.rs", include_bytes!("batch.rs")),
    ("inline.rs", include_bytes!("inline.rs")),
    ("longjmp.rs", include_bytes!("longjmp.rs")),
    ("stack_check.rs", include_bytes!("stack_check.rs")),
];

/// 64-bit FNV-1a over the contents of `files`, one after the other.
const fn fnv1a(files: &[(&str, &[u8])]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut file = 0;
    while file < files.len() {
        let bytes = files[file].1;
        let mut at = 0;
        while at < bytes.len() {
            hash ^= bytes[at] as u64;
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
            at += 1;
        }
        file += 1;
    }
    hash
}

/// The export under which the module's former start function is reachable.
pub(crate) const START_EXPORT: &str = "__harness_start";

/// Prefix of the exports added for mutable globals (followed by the global's index).
pub(crate) const GLOBAL_EXPORT_PREFIX: &str = "__harness_global_";

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

/// The memory contents the module's active data segments would have produced: `(offset, bytes)`
/// per segment, in order.
pub(crate) fn initial_memory_image(wasm: &[u8]) -> Result<Vec<(u32, &[u8])>, RewriteError> {
    let mut segments = Vec::new();
    for payload in Parser::new(0).parse_all(wasm) {
        if let Payload::DataSection(reader) = payload? {
            for data in reader {
                let data = data?;
                if let DataKind::Active {
                    memory_index: 0,
                    offset_expr,
                } = data.kind
                {
                    segments.push((constant_offset(&offset_expr)?, data.data));
                }
            }
        }
    }
    Ok(segments)
}

fn constant_offset(expr: &wasmparser::ConstExpr<'_>) -> Result<u32, RewriteError> {
    match expr.get_operators_reader().into_iter().next() {
        Some(Ok(Operator::I32Const { value })) => Ok(value as u32),
        other => Err(RewriteError::Unexpected(format!(
            "a data segment at a non-constant offset ({other:?})"
        ))),
    }
}

/// What the first pass learns: the start function and the mutable globals.
#[derive(Default)]
struct Shape {
    start: Option<u32>,
    mutable_globals: Vec<u32>,
}

fn shape(wasm: &[u8]) -> Result<Shape, RewriteError> {
    let mut shape = Shape::default();
    for payload in Parser::new(0).parse_all(wasm) {
        match payload? {
            Payload::StartSection { func, .. } => shape.start = Some(func),
            Payload::GlobalSection(reader) => {
                for (index, global) in reader.into_iter().enumerate() {
                    if global?.ty.mutable {
                        shape.mutable_globals.push(index as u32);
                    }
                }
            }
            _ => {}
        }
    }
    Ok(shape)
}

/// The function exports of `wasm`: name to function index.
fn function_exports(wasm: &[u8]) -> Result<std::collections::HashMap<String, u32>, RewriteError> {
    let mut exports = std::collections::HashMap::new();
    for payload in Parser::new(0).parse_all(wasm) {
        if let Payload::ExportSection(reader) = payload? {
            for export in reader {
                let export = export?;
                if export.kind == ExternalKind::Func {
                    exports.insert(export.name.to_owned(), export.index);
                }
            }
        }
    }
    Ok(exports)
}

/// The index of the function `exports` (from [`function_exports`]) names `name`.
fn exported_function(
    exports: &std::collections::HashMap<String, u32>,
    name: &str,
) -> Result<u32, RewriteError> {
    exports
        .get(name)
        .copied()
        .ok_or_else(|| RewriteError::Unexpected(format!("no export {name}")))
}

/// How many `call` instructions of function `index` the function bodies of `wasm` hold.
#[cfg(test)]
fn calls_of(wasm: &[u8], index: u32) -> usize {
    let mut calls = 0;
    for payload in Parser::new(0).parse_all(wasm) {
        if let Payload::CodeSectionEntry(body) = payload.unwrap() {
            let mut reader = body.get_operators_reader().unwrap();
            while !reader.eof() {
                calls += usize::from(matches!(reader.read().unwrap(),
                    Operator::Call { function_index } if function_index == index));
            }
        }
    }
    calls
}

/// Returns `wasm` rewritten as the module docs say.
pub(crate) fn prepare_main_module(wasm: &[u8]) -> Result<Vec<u8>, RewriteError> {
    let out = stack_check::check_wasm_stack_too(&own_memory(wasm)?)?;
    let out = inline::inline_small_functions(&out)?;
    let out = longjmp::catch_longjmp_in_wasm(&out)?;
    batch::add_batch_loop(&out)
}

/// The first step: the memory defined, data segments passive, no start function, mutable
/// globals exported.
fn own_memory(wasm: &[u8]) -> Result<Vec<u8>, RewriteError> {
    let shape = shape(wasm)?;
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
                if let Some(start) = shape.start {
                    section.export(START_EXPORT, ExportKind::Func, start);
                }
                for &global in &shape.mutable_globals {
                    section.export(
                        &format!("{GLOBAL_EXPORT_PREFIX}{global}"),
                        ExportKind::Global,
                        global,
                    );
                }
                out.section(&section);
            }
            // Run by the host on a fresh memory only (see `START_EXPORT`).
            Payload::StartSection { .. } => {}
            Payload::DataSection(reader) => {
                let mut section = DataSection::new();
                for data in reader {
                    let data = data?;
                    match data.kind {
                        DataKind::Active { memory_index: 0, .. } | DataKind::Passive => {
                            section.passive(data.data.iter().copied());
                        }
                        DataKind::Active { memory_index, .. } => {
                            return Err(RewriteError::Unexpected(format!(
                                "a data segment for memory {memory_index}"
                            )));
                        }
                    }
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

fn reencode_error<E: std::fmt::Debug>(e: wasm_encoder::reencode::Error<E>) -> RewriteError {
    RewriteError::Unexpected(format!("cannot re-encode: {e:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_memory_import_becomes_an_exported_definition() {
        let out = prepare_main_module(crate::assets::PGLITE_WASM).unwrap();
        let mut saw_export = false;
        let mut imports = 0;
        let (mut start_export, mut globals_exported, mut has_start, mut active_segments) =
            (false, 0, false, 0);
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
                    for e in reader {
                        let e = e.unwrap();
                        saw_export |= e.name == "memory" && e.kind == ExternalKind::Memory;
                        start_export |= e.name == START_EXPORT;
                        globals_exported += usize::from(e.name.starts_with(GLOBAL_EXPORT_PREFIX));
                    }
                }
                Payload::StartSection { .. } => has_start = true,
                Payload::DataSection(reader) => {
                    active_segments += reader
                        .into_iter()
                        .filter(|d| matches!(d.as_ref().unwrap().kind, DataKind::Active { .. }))
                        .count();
                }
                _ => {}
            }
        }
        assert!(saw_export);
        assert!(
            start_export && globals_exported >= 4,
            "start and mutable globals are exported"
        );
        assert!(
            !has_start && active_segments == 0,
            "nothing writes memory at instantiation"
        );
        assert_eq!(imports, 135, "every function import is kept");
        wasmparser::Validator::new().validate_all(&out).unwrap();
    }

    #[test]
    fn the_rewrite_version_covers_every_file_of_the_rewrite() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/runtime/rewrite");
        let mut on_disk: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        on_disk.sort();
        let mut hashed: Vec<&str> = REWRITE_SOURCES.iter().map(|(name, _)| *name).collect();
        hashed.sort();
        assert_eq!(on_disk, hashed);
        // Any byte counts.
        let mut changed = REWRITE_SOURCES;
        changed[1].1 = b"";
        assert_ne!(fnv1a(&changed), REWRITE_VERSION);
    }

    #[test]
    fn the_initial_image_holds_every_active_segment() {
        let image = initial_memory_image(crate::assets::PGLITE_WASM).unwrap();
        assert!(!image.is_empty());
        let end = image
            .iter()
            .map(|(at, bytes)| *at as usize + bytes.len())
            .max()
            .unwrap();
        // §0 of the ABI notes: the active data segments end at 2,775,535 (exclusive).
        assert_eq!(end, 2_775_535);
    }
}
