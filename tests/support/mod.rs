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
