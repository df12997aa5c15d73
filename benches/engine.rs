//! Engine benchmark (issue: "Run PGlite inside the process on wasmtime"): compile, cached module
//! load, boot from the template, reopen of a data directory, `SELECT 1` through `exec`, and 25,000
//! single-row INSERTs in one transaction, side by side with the same messages sent to native
//! PostgreSQL 18.6 over loopback.
//!
//! ```text
//! cargo bench --bench engine            # everything
//! cargo bench --bench engine -- --quick # skip the 10-30 s fresh compile
//! ```

mod support;

use support::native;

use std::time::{Duration, Instant};

use bytes::BytesMut;
use pglite_harness::Backend;
use pglite_harness::runtime::{ModuleCache, Runtime};
use postgres_protocol::message::frontend;

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    println!("pglite-harness engine benchmark (PGlite 0.5.16 / PostgreSQL 18.6 on wasmtime 48)\n");

    if !quick {
        let dir = tempfile::tempdir().unwrap();
        let started = Instant::now();
        let runtime = Runtime::new(Some(ModuleCache::at(dir.path()).unwrap())).unwrap();
        row(
            "compile pglite.wasm (Cranelift, empty cache)",
            started.elapsed(),
            &format!("{:?}", runtime.module_source()),
        );
    }
    // Warm the shared cache, then time loads of the cached artifact by fresh engines.
    Runtime::global().unwrap();
    let loads: Vec<Duration> = (0..5)
        .map(|_| {
            let started = Instant::now();
            let runtime = Runtime::new(Some(ModuleCache::from_env().unwrap())).unwrap();
            assert_eq!(
                runtime.module_source(),
                pglite_harness::runtime::ModuleSource::Disk
            );
            started.elapsed()
        })
        .collect();
    row(
        "cached module load (engine + deserialize + link)",
        median(loads),
        "target < 100 ms",
    );

    let boots: Vec<Duration> = (0..10)
        .map(|_| {
            let started = Instant::now();
            let backend = Backend::builder().open().unwrap();
            let elapsed = started.elapsed();
            drop(backend);
            elapsed
        })
        .collect();
    row(
        "boot from template (memory://), open to ready",
        median(boots),
        "target < 300 ms",
    );

    let dir = tempfile::tempdir().unwrap();
    Backend::builder()
        .data_dir(dir.path())
        .open()
        .unwrap()
        .close()
        .unwrap();
    let reopens: Vec<Duration> = (0..10)
        .map(|_| {
            let started = Instant::now();
            let backend = Backend::builder().data_dir(dir.path()).open().unwrap();
            let elapsed = started.elapsed();
            backend.close().unwrap();
            elapsed
        })
        .collect();
    row("reopen of a data directory", median(reopens), "");

    let mut backend = Backend::builder().open().unwrap();
    let select1 = message(|m| frontend::query("SELECT 1", m).unwrap());
    for _ in 0..500 {
        backend.exec(&select1).unwrap();
    }
    let n = 20_000;
    let started = Instant::now();
    for _ in 0..n {
        backend.exec(&select1).unwrap();
    }
    row(
        "SELECT 1 round trip through exec",
        started.elapsed() / n,
        "target < 50 µs",
    );

    let inserts: Vec<BytesMut> = (0..25_000)
        .map(|i| {
            message(|m| frontend::query(&format!("INSERT INTO bench VALUES ({i}, 'row {i}')"), m).unwrap())
        })
        .collect();
    let setup = message(|m| frontend::query("CREATE TABLE bench(id int PRIMARY KEY, body text)", m).unwrap());
    backend.exec(&setup).unwrap();
    let pglite = in_one_transaction(&inserts, |m| drop(backend.exec(m).unwrap()));
    row("25,000 single-row INSERTs in one transaction (exec)", pglite, "");

    // What sqlx sends for each execution of a prepared statement: Bind, Execute, Sync.
    let prepare = message(|m| {
        frontend::parse("ins", "INSERT INTO bench_prepared VALUES ($1, $2)", [], m).unwrap();
        frontend::sync(m);
    });
    let executions: Vec<BytesMut> = (0..25_000)
        .map(|i: i32| {
            message(|m| {
                let (id, body) = (i.to_be_bytes(), format!("row {i}"));
                let params = [&id[..], body.as_bytes()];
                frontend::bind(
                    "",
                    "ins",
                    [1, 1],
                    params,
                    |p, buf| {
                        buf.extend_from_slice(p);
                        Ok(postgres_protocol::IsNull::No)
                    },
                    [1],
                    m,
                )
                .map_err(|_| ())
                .unwrap();
                frontend::execute("", 0, m).unwrap();
                frontend::sync(m);
            })
        })
        .collect();
    backend
        .exec(&message(|m| {
            frontend::query("CREATE TABLE bench_prepared(id int PRIMARY KEY, body text)", m).unwrap()
        }))
        .unwrap();
    backend.exec(&prepare).unwrap();
    let prepared = in_one_transaction(&executions, |m| drop(backend.exec(m).unwrap()));
    row(
        "25,000 prepared INSERTs (Bind/Execute/Sync each, exec)",
        prepared,
        "",
    );
    drop(backend);

    // The same messages to native PostgreSQL 18.6, with PGlite's settings (fsync off, 16 MB of
    // shared buffers), over a loopback TCP connection.
    match native::NativePostgres::start(&["fsync=off", "shared_buffers=16MB"]) {
        Ok(server) => {
            let mut conn = server.connect().unwrap();
            conn.exec(&setup).unwrap();
            let native = in_one_transaction(&inserts, |m| drop(conn.exec(m).unwrap()));
            row(
                "25,000 single-row INSERTs, native PostgreSQL 18.6 (TCP)",
                native,
                "",
            );
            conn.exec(&message(|m| {
                frontend::query("CREATE TABLE bench_prepared(id int PRIMARY KEY, body text)", m).unwrap()
            }))
            .unwrap();
            conn.exec(&prepare).unwrap();
            let native_prepared = in_one_transaction(&executions, |m| drop(conn.exec(m).unwrap()));
            row(
                "25,000 prepared INSERTs, native PostgreSQL 18.6 (TCP)",
                native_prepared,
                &format!(
                    "PGlite exec / native {:.2}x",
                    prepared.as_secs_f64() / native_prepared.as_secs_f64()
                ),
            );
            let ratio = pglite.as_secs_f64() / native.as_secs_f64();
            println!(
                "{:<58} {ratio:>10.2}x   target <= 1.5x",
                "ratio PGlite exec / native"
            );
            let mut times = Vec::new();
            for _ in 0..2000 {
                let started = Instant::now();
                conn.exec(&select1).unwrap();
                times.push(started.elapsed());
            }
            row(
                "SELECT 1 round trip, native PostgreSQL 18.6 (TCP)",
                median(times),
                "",
            );
        }
        Err(e) => println!("native PostgreSQL baseline unavailable: {e}"),
    }
}

/// The time to send `batches` one by one through `exec`, between BEGIN and COMMIT.
fn in_one_transaction(batches: &[BytesMut], mut exec: impl FnMut(&[u8])) -> Duration {
    let started = Instant::now();
    exec(&message(|m| frontend::query("BEGIN", m).unwrap()));
    for batch in batches {
        exec(batch);
    }
    exec(&message(|m| frontend::query("COMMIT", m).unwrap()));
    started.elapsed()
}

fn message(build: impl FnOnce(&mut BytesMut)) -> BytesMut {
    let mut buf = BytesMut::new();
    build(&mut buf);
    buf
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn row(what: &str, took: Duration, note: &str) {
    let shown = if took < Duration::from_millis(1) {
        format!("{:.1} µs", took.as_secs_f64() * 1e6)
    } else {
        format!("{:.1} ms", took.as_secs_f64() * 1e3)
    };
    println!("{what:<58} {shown:>12}   {note}");
}
