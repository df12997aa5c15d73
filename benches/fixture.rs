//! Fixture benchmark (issue: "Test fixtures"): time from "I want a new database" to the first
//! `SELECT 1` answered over a new connection — first in a process, later in the same process, in
//! a fresh process with the disk caches warm (cargo-nextest's case) — the same with migrations,
//! RSS with 1, 8 and 64 idle instances, and 8 instances created at once.
//!
//! ```text
//! cargo bench --bench fixture
//! ```
//! Each measurement that needs a fresh process runs this binary again as a child
//! (`--child <case>`), which prints one line `RESULT <µs>` (or `RSS ...`).

use std::process::Command;
use std::time::{Duration, Instant};

use pglite_harness::{PgliteDb, PgliteDbBuilder};

const MIGRATIONS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/migrations");

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--child") {
        return child(&args[i + 1]);
    }
    println!("pglite-harness fixture benchmark: a fresh database to its first SELECT 1\n");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();

    // Fresh processes. The first child warms the disk caches (compiled module, snapshots).
    let _ = run_child("plain");
    for (case, label) in [
        ("plain", "fresh process, warm disk caches"),
        ("migrations", "fresh process, with migrations"),
    ] {
        let runs: Vec<Duration> = (0..5).map(|_| run_child(case)).collect();
        row(label, &runs, "target < 150 ms");
    }

    // The same process: the first start pays for the template, later ones clone it.
    for (label, builder) in [
        ("same process, first (template boot)", PgliteDb::builder()),
        (
            "same process, first with migrations",
            PgliteDb::builder().migrations(MIGRATIONS),
        ),
    ] {
        row(label, &[runtime.block_on(first_query(builder))], "");
    }
    for (label, builder) in [
        ("same process, later", PgliteDb::builder()),
        (
            "same process, later with migrations",
            PgliteDb::builder().migrations(MIGRATIONS),
        ),
        (
            "same process, later, temp_dir with migrations",
            PgliteDb::builder().temp_dir().migrations(MIGRATIONS),
        ),
    ] {
        let mut drops = Vec::new();
        let runs: Vec<Duration> = (0..20)
            .map(|_| {
                let started = Instant::now();
                let answered = runtime.block_on(first_query(builder.clone()));
                drops.push(started.elapsed() - answered);
                answered
            })
            .collect();
        row(label, &runs, "target < 10 ms");
        row("  ... and its teardown (drop)", &drops, "");
    }

    // 8 at once.
    let started = Instant::now();
    runtime.block_on(async {
        let starts = (0..8).map(|_| first_query(PgliteDb::builder()));
        futures_util::future::join_all(starts).await;
    });
    row("8 databases created at once (total)", &[started.elapsed()], "");

    println!();
    for n in [1, 8, 64] {
        let output = Command::new(std::env::current_exe().unwrap())
            .args(["--child", &format!("rss{n}")])
            .output()
            .unwrap();
        let line = String::from_utf8_lossy(&output.stdout)
            .lines()
            .find(|l| l.starts_with("RSS"))
            .map(str::to_owned)
            .unwrap_or_else(|| panic!("child rss{n}: {}", String::from_utf8_lossy(&output.stderr)));
        println!("{line}");
    }
}

/// Starts a database, connects, answers `SELECT 1`, and drops it; returns the time to the
/// answer (the drop is not counted).
async fn first_query(builder: PgliteDbBuilder) -> Duration {
    let started = Instant::now();
    let db = builder.start().await.unwrap();
    let client = db.client().await.unwrap();
    client.simple_query("SELECT 1").await.unwrap();
    let elapsed = started.elapsed();
    drop(client);
    drop(db);
    elapsed
}

fn child(case: &str) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    match case {
        "plain" | "migrations" => {
            let builder = match case {
                "plain" => PgliteDb::builder(),
                _ => PgliteDb::builder().migrations(MIGRATIONS),
            };
            runtime.block_on(async {
                let db = builder.start().await.unwrap();
                let client = db.client().await.unwrap();
                client.simple_query("SELECT 1").await.unwrap();
                // When the answer came, on the wall clock the parent started the process by.
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap();
                println!("RESULT {}", now.as_micros());
            });
        }
        rss if rss.starts_with("rss") => {
            let n: usize = rss[3..].parse().unwrap();
            // Warm everything shared first, then count what each idle instance adds.
            runtime.block_on(first_query(PgliteDb::builder()));
            let before = rss_kib();
            let dbs: Vec<PgliteDb> = runtime.block_on(async {
                let mut dbs = Vec::new();
                for _ in 0..n {
                    let db = PgliteDb::start().await.unwrap();
                    db.client().await.unwrap().simple_query("SELECT 1").await.unwrap();
                    dbs.push(db);
                }
                dbs
            });
            std::thread::sleep(Duration::from_millis(200));
            let after = rss_kib();
            println!(
                "RSS with {n:>2} idle instances: {:>7.1} MiB total, {:>5.1} MiB more than before them, {:.1} MiB each (target < 15 MiB)",
                after as f64 / 1024.0,
                (after - before) as f64 / 1024.0,
                (after - before) as f64 / 1024.0 / n as f64
            );
            drop(dbs);
        }
        other => panic!("unknown child case {other}"),
    }
}

/// Runs `--child case` and returns the time from spawning the process to the answer of its
/// first query (process start, module load, template and all).
fn run_child(case: &str) -> Duration {
    let spawned = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    let output = Command::new(std::env::current_exe().unwrap())
        .args(["--child", case])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let answered: u64 = stdout
        .lines()
        .find_map(|l| l.strip_prefix("RESULT "))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("child {case} failed: {}", String::from_utf8_lossy(&output.stderr)));
    Duration::from_micros(answered) - spawned
}

fn rss_kib() -> i64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

fn row(label: &str, runs: &[Duration], target: &str) {
    let mut sorted = runs.to_vec();
    sorted.sort();
    let median = sorted[sorted.len() / 2];
    let (min, max) = (sorted[0], sorted[sorted.len() - 1]);
    println!(
        "{label:<42} {:>9.2} ms  (min {:.2}, max {:.2}, n={})  {target}",
        ms(median),
        ms(min),
        ms(max),
        runs.len()
    );
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
