//! Postgres' CRC-32C computed by the host, with the CPU's CRC instruction.
//!
//! Built for wasm, Postgres computes CRC-32C (every WAL record, the control file) with its
//! slicing-by-8 fallback, `pg_comp_crc32c_sb8(crc, data, len)`, which the module does not export.
//! This pass finds it by the table it reads (the CRC-32C table, whose first entries are known),
//! and points every call of it at a host import, `pglite_harness.crc32c`, of the same type
//! (`crate::runtime::imports::crc32c`).
//!
//! Adding an import would move every function index, so the import takes the slot of one the
//! [`longjmp`](super::longjmp) pass left uncalled: `env.invoke_iii`, of the same type
//! `[i32 i32 i32] -> [i32]`. The pass checks that nothing refers to that slot any more.

use std::ops::Range;

use wasmparser::{ElementItems, ExternalKind, Operator, Parser, Payload, TypeRef, ValType};

use super::RewriteError;
use super::append::{Additions, append};
use crate::runtime::imports::crc32c::{IMPORT_MODULE, IMPORT_NAME, table_prefix};

/// The import whose slot the host's CRC function takes.
const FREED_IMPORT: &str = "invoke_iii";

/// Postgres' tables for slicing-by-8: eight tables of 256 four-byte entries.
const TABLES_LEN: u32 = 8 * 256 * 4;

/// Returns `wasm` (after the longjmp pass) with its CRC-32C function's calls sent to the host.
/// `image` is the module's initial memory (where its CRC table is).
pub(super) fn use_host_crc32c(wasm: &[u8], image: &[(u32, &[u8])]) -> Result<Vec<u8>, RewriteError> {
    let table = find_table(image)?;
    let plan = Plan::of(wasm, table)?;
    let mut added = Additions::default();
    added.redirect.insert(plan.software_crc, plan.freed_import);
    added.rename_imports.push((
        plan.freed_import,
        IMPORT_MODULE.to_owned(),
        IMPORT_NAME.to_owned(),
    ));
    append(wasm, &added)
}

/// Where in memory the CRC-32C tables start.
fn find_table(image: &[(u32, &[u8])]) -> Result<Range<u32>, RewriteError> {
    let prefix = table_prefix();
    let mut found = image.iter().flat_map(|(offset, bytes)| {
        bytes
            .windows(prefix.len())
            .enumerate()
            .filter(|(_, window)| *window == prefix.as_slice())
            .map(move |(at, _)| offset + at as u32)
    });
    match (found.next(), found.next()) {
        (Some(start), None) => Ok(start..start + TABLES_LEN),
        (None, _) => Err(RewriteError::Unexpected("no CRC-32C table in the data".into())),
        (Some(_), Some(_)) => Err(RewriteError::Unexpected("two CRC-32C tables in the data".into())),
    }
}

struct Plan {
    /// `pg_comp_crc32c_sb8`.
    software_crc: u32,
    /// `env.invoke_iii`.
    freed_import: u32,
}

impl Plan {
    fn of(wasm: &[u8], table: Range<u32>) -> Result<Plan, RewriteError> {
        // `[i32 i32 i32] -> [i32]`, by type index.
        let mut crc_shaped = Vec::new();
        let mut function_types = Vec::new();
        let mut freed_import = None;
        let mut imported = 0;
        let mut readers = Vec::new();
        // References to a function index other than by the calls the redirect rewrites.
        let mut referenced = Vec::new();
        for payload in Parser::new(0).parse_all(wasm) {
            match payload? {
                Payload::TypeSection(reader) => {
                    for ty in reader.into_iter_err_on_gc_types() {
                        let ty = ty?;
                        crc_shaped.push(ty.params() == [ValType::I32; 3] && ty.results() == [ValType::I32]);
                    }
                }
                Payload::ImportSection(reader) => {
                    for import in reader.into_imports() {
                        let import = import?;
                        if let TypeRef::Func(ty) = import.ty {
                            if import.module == "env" && import.name == FREED_IMPORT {
                                if !crc_shaped.get(ty as usize).copied().unwrap_or(false) {
                                    return Err(RewriteError::Unexpected(format!(
                                        "env.{FREED_IMPORT} is not [i32 i32 i32] -> [i32]"
                                    )));
                                }
                                freed_import = Some(imported);
                            }
                            function_types.push(ty);
                            imported += 1;
                        }
                    }
                }
                Payload::FunctionSection(reader) => {
                    for ty in reader {
                        function_types.push(ty?);
                    }
                }
                Payload::ExportSection(reader) => {
                    for export in reader {
                        let export = export?;
                        if export.kind == ExternalKind::Func {
                            referenced.push(export.index);
                        }
                    }
                }
                Payload::ElementSection(reader) => {
                    for element in reader {
                        match element?.items {
                            ElementItems::Functions(functions) => {
                                for function in functions {
                                    referenced.push(function?);
                                }
                            }
                            ElementItems::Expressions(_, expressions) => {
                                for expression in expressions {
                                    for op in expression?.get_operators_reader() {
                                        if let Operator::RefFunc { function_index } = op? {
                                            referenced.push(function_index);
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
                Payload::CodeSectionEntry(body) => readers.push(body),
                _ => {}
            }
        }
        let freed_import =
            freed_import.ok_or_else(|| RewriteError::Unexpected(format!("no env.{FREED_IMPORT} import")))?;
        let mut software_crc = Vec::new();
        for (defined, body) in readers.into_iter().enumerate() {
            let index = imported + defined as u32;
            let mut reads_table = false;
            for op in body.get_operators_reader()? {
                match op? {
                    Operator::I32Const { value } => reads_table |= table.contains(&(value as u32)),
                    Operator::I32Load { memarg } => {
                        reads_table |= u32::try_from(memarg.offset).is_ok_and(|at| table.contains(&at))
                    }
                    Operator::Call { function_index }
                    | Operator::ReturnCall { function_index }
                    | Operator::RefFunc { function_index }
                        if function_index == freed_import =>
                    {
                        referenced.push(freed_import)
                    }
                    _ => {}
                }
            }
            let ty = function_types[index as usize] as usize;
            if reads_table && crc_shaped.get(ty).copied().unwrap_or(false) {
                software_crc.push(index);
            }
        }
        if referenced.contains(&freed_import) {
            return Err(RewriteError::Unexpected(format!(
                "env.{FREED_IMPORT} is still referred to"
            )));
        }
        match software_crc.as_slice() {
            [one] => Ok(Plan {
                software_crc: *one,
                freed_import,
            }),
            found => Err(RewriteError::Unexpected(format!(
                "{} functions of the CRC-32C shape read its table",
                found.len()
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Calls of each function index in `wasm`'s bodies.
    fn calls(wasm: &[u8]) -> std::collections::HashMap<u32, usize> {
        let mut calls = std::collections::HashMap::new();
        for payload in Parser::new(0).parse_all(wasm) {
            if let Payload::CodeSectionEntry(body) = payload.unwrap() {
                for op in body.get_operators_reader().unwrap() {
                    if let Operator::Call { function_index } = op.unwrap() {
                        *calls.entry(function_index).or_default() += 1;
                    }
                }
            }
        }
        calls
    }

    #[test]
    fn every_call_of_the_software_crc_goes_to_the_host_import_in_a_freed_slot() {
        let image = super::super::initial_memory_image(crate::assets::PGLITE_WASM).unwrap();
        let before = super::super::longjmp::catch_longjmp_in_wasm(
            &super::super::own_memory(crate::assets::PGLITE_WASM).unwrap(),
        )
        .unwrap();
        let table = find_table(&image).unwrap();
        let plan = Plan::of(&before, table.clone()).unwrap();
        let calls_before = calls(&before);
        assert_eq!(
            calls_before.get(&plan.freed_import),
            None,
            "the longjmp pass freed it"
        );
        let sb8_calls = calls_before[&plan.software_crc];
        assert!(sb8_calls > 10, "{sb8_calls} calls of the software CRC");

        let after = use_host_crc32c(&before, &image).unwrap();
        wasmparser::Validator::new().validate_all(&after).unwrap();
        let calls_after = calls(&after);
        assert_eq!(calls_after.get(&plan.software_crc), None);
        assert_eq!(calls_after[&plan.freed_import], sb8_calls);
        let mut imports = Vec::new();
        for payload in Parser::new(0).parse_all(&after) {
            if let Payload::ImportSection(reader) = payload.unwrap() {
                for import in reader.into_imports() {
                    let import = import.unwrap();
                    imports.push((import.module.to_owned(), import.name.to_owned()));
                }
            }
        }
        assert_eq!(
            imports[plan.freed_import as usize],
            (IMPORT_MODULE.to_owned(), IMPORT_NAME.to_owned())
        );
        // Once taken, the slot is not free any more.
        let err = Plan::of(&after, table).err().expect("no env.invoke_iii now");
        assert!(err.to_string().contains(FREED_IMPORT), "{err}");
    }
}
