//! Instructions per statement through `Backend::exec`, counted by valgrind's callgrind: a figure
//! that, unlike a time, the load of a shared machine does not move. For comparing two versions of
//! the engine (the rewrite, the host imports, wasmtime settings) where timings drown in noise.
//!
//! ```text
//! cargo bench --bench instructions             # needs valgrind (Debian: valgrind)
//! cargo bench --bench instructions -- --n=4000 # more statements per count
//! cargo bench --bench instructions -- --only=select1,pkselect   # a subset, by key
//! ```
//!
//! Each workload runs twice in a child process under callgrind, counting only inside the engine's
//! `exec`: [`WARM_UP`] statements, then [`WARM_UP`] and `n` more; the difference divided by `n` is
//! the figure, a warm backend's (the first statements fill caches, evicting and writing pages,
//! which the figure would otherwise spread over the rest). The bulk workload is one statement of
//! `WARM_UP` rows against one of `WARM_UP + n`, so its figure is per row.
//! Without valgrind it says so and exits successfully.

use std::process::Command;

use bytes::BytesMut;
use pglite_harness::Backend;
use postgres_protocol::IsNull;
use postgres_protocol::message::frontend;

/// Set in the child: `<workload>:<count>`.
const CHILD_ENV: &str = "PGLITE_HARNESS_INSTRUCTIONS_CHILD";

/// Statements (or bulk rows) run before those counted.
const WARM_UP: u64 = 500;

const WORKLOADS: [(&str, &str); 6] = [
    ("select1", "prepared SELECT 1 (Bind/Execute/Sync)"),
    ("query", "simple-query SELECT 1 (Query)"),
    ("insert", "prepared single-row INSERT (Bind/Execute/Sync)"),
    ("pkselect", "prepared SELECT by primary key, 25,000 rows"),
    (
        "update",
        "prepared UPDATE by primary key, 25,000 rows, one transaction",
    ),
    ("bulk", "a row of one INSERT ... SELECT FROM generate_series"),
];

fn main() {
    if let Ok(job) = std::env::var(CHILD_ENV) {
        let (workload, count) = job.split_once(':').expect("workload:count");
        run(workload, count.parse().expect("a count"));
        return;
    }
    let n: u64 = std::env::args()
        .find_map(|a| a.strip_prefix("--n=").map(|v| v.parse().expect("--n=<count>")))
        .unwrap_or(2000);
    let only: Option<Vec<String>> = std::env::args().find_map(|a| {
        a.strip_prefix("--only=")
            .map(|keys| keys.split(',').map(str::to_owned).collect())
    });
    println!(
        "pglite-harness instructions per statement (callgrind, {WARM_UP} + {n} statements less {WARM_UP})\n"
    );
    if Command::new("valgrind").arg("--version").output().is_err() {
        println!("valgrind is not installed: nothing counted (Debian: apt-get install valgrind)");
        return;
    }
    let me = std::env::current_exe().expect("own path");
    for (key, what) in WORKLOADS {
        if only.as_ref().is_some_and(|keys| !keys.iter().any(|k| k == key)) {
            continue;
        }
        let count = |statements: u64| -> u64 {
            let out = Command::new("valgrind")
                // Only what the backend thread runs for a batch: not the boot, nor the background
                // threads (template prewarming, checksums) whose share would vary from run to run.
                .args([
                    "--tool=callgrind",
                    "--callgrind-out-file=/dev/null",
                    "--toggle-collect=*backend::engine::Engine::exec*",
                ])
                .arg(&me)
                .env(CHILD_ENV, format!("{key}:{statements}"))
                .output()
                .expect("valgrind runs");
            let log = String::from_utf8_lossy(&out.stderr);
            assert!(out.status.success(), "{key} under callgrind failed:\n{log}");
            log.lines()
                .find_map(|l| l.split_once("Collected :").map(|(_, v)| v.trim().parse().ok()))
                .flatten()
                .unwrap_or_else(|| panic!("no instruction count in callgrind's output:\n{log}"))
        };
        let per_statement = (count(WARM_UP + n).saturating_sub(count(WARM_UP))) as f64 / n as f64;
        println!("{what:<58} {:>9.0} instructions", per_statement);
    }
}

/// The child: boots a backend, prepares, then runs `count` statements of `workload`.
fn run(workload: &str, count: u64) {
    let mut backend = Backend::builder().open().unwrap();
    backend
        .exec(&message(|m| {
            frontend::query("CREATE TABLE bench(id int PRIMARY KEY, body text)", m).unwrap()
        }))
        .unwrap();
    backend
        .exec(&message(|m| {
            frontend::parse("ins", "INSERT INTO bench VALUES ($1, $2)", [], m).unwrap();
            frontend::parse("one", "SELECT 1", [], m).unwrap();
            frontend::sync(m);
        }))
        .unwrap();
    if matches!(workload, "pkselect" | "update") {
        // The server bench's table: 25,000 rows, vacuumed and analyzed.
        for sql in [
            "CREATE TABLE rows(id int PRIMARY KEY, n int NOT NULL, body text NOT NULL);
             INSERT INTO rows SELECT i, 0, 'row ' || i FROM generate_series(0, 24999) i;",
            "VACUUM ANALYZE rows",
        ] {
            backend
                .exec(&message(|m| frontend::query(sql, m).unwrap()))
                .unwrap();
        }
        backend
            .exec(&message(|m| {
                frontend::parse("pk", "SELECT id, n, body FROM rows WHERE id = $1", [], m).unwrap();
                frontend::parse("upd", "UPDATE rows SET n = n + 1 WHERE id = $1", [], m).unwrap();
                frontend::sync(m);
            }))
            .unwrap();
    }
    let select1 = execution("one", &[]);
    let query = message(|m| frontend::query("SELECT 1", m).unwrap());
    if workload == "bulk" {
        // One statement of `count` rows: the figure is per row.
        let sql = format!("INSERT INTO bench SELECT g, 'row ' || g FROM generate_series(1, {count}) g");
        backend
            .exec(&message(|m| frontend::query(&sql, m).unwrap()))
            .unwrap();
        return;
    }
    if workload == "update" {
        // All in one transaction, as the server bench's updates are.
        backend
            .exec(&message(|m| frontend::query("BEGIN", m).unwrap()))
            .unwrap();
    }
    for i in 0..count as i32 {
        let batch = match workload {
            "select1" => select1.clone(),
            "query" => query.clone(),
            "insert" => execution("ins", &[&i.to_be_bytes(), format!("row {i}").as_bytes()]),
            // Ids scrambled as in the server bench (7919 is prime to 25,000).
            "pkselect" => execution("pk", &[&((i as i64 * 7919 % 25_000) as i32).to_be_bytes()]),
            "update" => execution("upd", &[&((i as i64 * 7919 % 25_000) as i32).to_be_bytes()]),
            other => panic!("unknown workload {other}"),
        };
        backend.exec(&batch).unwrap();
    }
}

/// Bind (binary parameters), Execute, Sync of the prepared statement `name`: what sqlx sends.
fn execution(name: &str, params: &[&[u8]]) -> BytesMut {
    message(|m| {
        frontend::bind(
            "",
            name,
            params.iter().map(|_| 1),
            params.iter().copied(),
            |p, buf| {
                buf.extend_from_slice(p);
                Ok(IsNull::No)
            },
            [1],
            m,
        )
        .map_err(|_| ())
        .unwrap();
        frontend::execute("", 0, m).unwrap();
        frontend::sync(m);
    })
}

fn message(build: impl FnOnce(&mut BytesMut)) -> BytesMut {
    let mut buf = BytesMut::new();
    build(&mut buf);
    buf
}
