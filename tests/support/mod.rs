//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Command, Output};

use pglite_harness::{Backend, SimpleQueryOutput};

/// Runs `sql` and fails the test on an SQL error.
pub fn query(backend: &mut Backend, sql: &str) -> SimpleQueryOutput {
    let out = backend.simple_query(sql).unwrap_or_else(|e| panic!("{sql}: {e}"));
    if let Some(error) = &out.error {
        panic!("{sql}: {error}");
    }
    out
}

/// Runs `sql` and returns its single value.
pub fn scalar(backend: &mut Backend, sql: &str) -> String {
    query(backend, sql)
        .scalar()
        .unwrap_or_else(|| panic!("{sql}: no value"))
        .to_owned()
}

/// The message types of a backend reply, in order (`T`, `D`, `C`, `Z`, ...).
pub fn message_types(reply: &[u8]) -> String {
    let mut types = String::new();
    let mut at = 0;
    while at + 5 <= reply.len() {
        types.push(reply[at] as char);
        let len = u32::from_be_bytes(reply[at + 1..at + 5].try_into().unwrap()) as usize;
        at += 1 + len;
    }
    assert_eq!(at, reply.len(), "reply ends inside a message");
    types
}

/// Runs the `#[ignore]`d test `name` of this same test binary in a child process, with `env`.
pub fn run_child(name: &str, env: &[(&str, &str)]) -> Command {
    let mut command = Command::new(std::env::current_exe().unwrap());
    command.args(["--exact", name, "--ignored", "--nocapture", "--test-threads=1"]);
    for (k, v) in env {
        command.env(k, v);
    }
    command
}

/// Combined output of a child, for assertion messages.
pub fn describe(output: &Output) -> String {
    format!(
        "status {:?}\n--- stdout\n{}\n--- stderr\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// The directory of PostgreSQL 18.6's own clients (psql, pgbench), installed into the cache on
/// first use by `scripts/native-postgres`.
pub fn client_bin_dir() -> PathBuf {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/native-postgres");
    let output = Command::new(&script)
        .arg("bindir")
        .output()
        .expect("scripts/native-postgres runs");
    assert!(
        output.status.success(),
        "native-postgres bindir: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    PathBuf::from(String::from_utf8(output.stdout).unwrap().trim())
}

/// The bytes of a PostgreSQL 18 loadable library (an Emscripten side module, as PGlite's
/// extensions are) whose `_PG_init` executes `unreachable`: `LOAD` of it traps inside the
/// backend, as a buggy C extension would. It carries the magic block Postgres checks first.
pub fn trapping_library() -> Vec<u8> {
    use wasm_encoder::{
        CodeSection, ConstExpr, CustomSection, DataSection, EntityType, ExportKind, ExportSection, Function,
        FunctionSection, GlobalType, ImportSection, Instruction, MemoryType, Module, TypeSection, ValType,
    };
    // Pg_magic_struct of PostgreSQL 18 on wasm32: len, then Pg_abi_values (version 1800,
    // FUNC_MAX_ARGS 100, INDEX_MAX_KEYS 32, NAMEDATALEN 64, float8byval false, abi_extra
    // "PostgreSQL"), then the name and version pointers (none).
    let mut magic = Vec::new();
    for value in [64u32, 1800, 100, 32, 64, 0] {
        magic.extend_from_slice(&value.to_le_bytes());
    }
    let mut abi_extra = [0u8; 32];
    abi_extra[..10].copy_from_slice(b"PostgreSQL");
    magic.extend_from_slice(&abi_extra);
    magic.extend_from_slice(&[0; 8]);
    assert_eq!(magic.len(), 64);

    let mut module = Module::new();
    // dylink.0, WASM_DYLINK_MEM_INFO: memory size, its alignment (log2), table size, alignment.
    let mem_info = [64u8, 2, 0, 0];
    let mut dylink = vec![1u8, mem_info.len() as u8];
    dylink.extend_from_slice(&mem_info);
    module.section(&CustomSection {
        name: "dylink.0".into(),
        data: dylink.into(),
    });
    let mut types = TypeSection::new();
    types.ty().function([], [ValType::I32]); // Pg_magic_func
    types.ty().function([], []); // _PG_init
    module.section(&types);
    let mut imports = ImportSection::new();
    imports.import(
        "env",
        "memory",
        EntityType::Memory(MemoryType {
            minimum: 1,
            maximum: None,
            memory64: false,
            shared: false,
            page_size_log2: None,
        }),
    );
    imports.import(
        "env",
        "__memory_base",
        EntityType::Global(GlobalType {
            val_type: ValType::I32,
            mutable: false,
            shared: false,
        }),
    );
    module.section(&imports);
    let mut functions = FunctionSection::new();
    functions.function(0);
    functions.function(1);
    module.section(&functions);
    let mut exports = ExportSection::new();
    exports.export("Pg_magic_func", ExportKind::Func, 0);
    exports.export("_PG_init", ExportKind::Func, 1);
    module.section(&exports);
    let mut code = CodeSection::new();
    let mut magic_func = Function::new([]);
    magic_func
        .instruction(&Instruction::GlobalGet(0))
        .instruction(&Instruction::End);
    code.function(&magic_func);
    let mut init = Function::new([]);
    init.instruction(&Instruction::Unreachable)
        .instruction(&Instruction::End);
    code.function(&init);
    module.section(&code);
    let mut data = DataSection::new();
    data.active(0, &ConstExpr::global_get(0), magic);
    module.section(&data);
    module.finish()
}
