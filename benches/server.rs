//! Server benchmark (issue: "Serve PGlite over the PostgreSQL wire protocol"): the same sqlx
//! workloads against the PGlite server and against native PostgreSQL 18.6 with PGlite's settings
//! (fsync off, 16 MB of shared buffers) on loopback TCP, in one run. Target: every workload within
//! 1.2x of native, and a pool of 8 never slower in total than one client.
//!
//! Every workload uses sqlx's defaults: prepared statements (extended protocol), cached per
//! connection. Each timed workload runs on freshly created tables; the figure is the median of
//! `--reps=N` runs (default 3).
//!
//! ```text
//! cargo bench --profile dev --bench server
//! cargo bench --profile dev --bench server -- --reps=1
//! cargo bench --profile dev --bench server -- --only=inserts,updates   # a subset, by key
//! ```

mod support;

use support::native;

use std::time::{Duration, Instant};

use pglite_harness::{Backend, Server};
use sqlx::postgres::{PgConnection, PgPool, PgPoolOptions};
use sqlx::{Connection, Row};

/// Rows in the insert/update workloads.
const ROWS: i32 = 25_000;
/// Primary-key SELECTs.
const PK_SELECTS: i32 = 5_000;
/// Timed `SELECT 1` round trips (after a warm-up).
const SELECT1: usize = 2_000;
/// Tasks (and connections) in the pool workload.
const POOL_TASKS: i32 = 8;
/// Transactions per task in the pool workload.
const POOL_TXNS: i32 = 250;
/// The issue's target for every workload.
const TARGET: f64 = 1.2;

type Result<T> = std::result::Result<T, sqlx::Error>;

#[derive(Clone, Copy)]
enum Workload {
    Select1,
    Inserts,
    BulkInsert,
    IndexedInserts,
    PkSelects,
    PkUpdates,
    Pool8,
    Pool1,
}

impl Workload {
    const ALL: [Workload; 8] = [
        Workload::Select1,
        Workload::Inserts,
        Workload::BulkInsert,
        Workload::IndexedInserts,
        Workload::PkSelects,
        Workload::PkUpdates,
        Workload::Pool8,
        Workload::Pool1,
    ];

    /// The name `--only=` selects it by.
    fn key(self) -> &'static str {
        match self {
            Workload::Select1 => "select1",
            Workload::Inserts => "inserts",
            Workload::BulkInsert => "bulk",
            Workload::IndexedInserts => "indexed",
            Workload::PkSelects => "selects",
            Workload::PkUpdates => "updates",
            Workload::Pool8 => "pool8",
            Workload::Pool1 => "pool1",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Workload::Select1 => "SELECT 1 round trip (median of 2,000)",
            Workload::Inserts => "25,000 single-row INSERTs, one transaction",
            Workload::BulkInsert => "25,000 rows in one INSERT (UNNEST of bound arrays)",
            Workload::IndexedInserts => "25,000 single-row INSERTs, secondary index, one txn",
            Workload::PkSelects => "5,000 primary-key SELECTs",
            Workload::PkUpdates => "25,000 UPDATEs by primary key, one transaction",
            Workload::Pool8 => "pool of 8: 8 tasks x 250 txns (SELECT + UPDATE by PK)",
            Workload::Pool1 => "one client: the same 2,000 txns, pool of 1",
        }
    }

    async fn run(self, url: &str) -> Result<Duration> {
        match self {
            Workload::Select1 => select1(url).await,
            Workload::Inserts => inserts(url, false).await,
            Workload::BulkInsert => bulk_insert(url).await,
            Workload::IndexedInserts => inserts(url, true).await,
            Workload::PkSelects => pk_selects(url).await,
            Workload::PkUpdates => pk_updates(url).await,
            Workload::Pool8 => pool(url, POOL_TASKS as u32, POOL_TASKS).await,
            Workload::Pool1 => pool(url, 1, 1).await,
        }
    }
}

fn main() {
    let reps = std::env::args()
        .find_map(|a| a.strip_prefix("--reps=").map(|n| n.parse::<usize>().unwrap()))
        .unwrap_or(3)
        .max(1);
    let only: Option<Vec<String>> = std::env::args().find_map(|a| {
        a.strip_prefix("--only=")
            .map(|keys| keys.split(',').map(str::to_owned).collect())
    });
    let workloads: Vec<Workload> = Workload::ALL
        .into_iter()
        .filter(|w| only.as_ref().is_none_or(|keys| keys.iter().any(|k| k == w.key())))
        .collect();
    println!(
        "pglite-harness server benchmark: sqlx 0.9 against the PGlite server and native PostgreSQL 18.6"
    );
    println!(
        "(both on loopback TCP; native with fsync=off, shared_buffers=16MB; median of {reps} runs, taken in turns)\n"
    );

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();

    let started = Instant::now();
    let server = Server::builder()
        .start(Backend::builder().open().unwrap())
        .unwrap();
    let pglite_url = server.url();
    println!(
        "PGlite server:  {pglite_url} (started in {})",
        show(started.elapsed())
    );
    let started = Instant::now();
    let native = match native::NativePostgres::start(&["fsync=off", "shared_buffers=16MB"]) {
        Ok(native) => {
            println!(
                "native server:  postgresql://postgres@127.0.0.1:{}/postgres (started in {})",
                native.port,
                show(started.elapsed())
            );
            Some(native)
        }
        Err(e) => {
            println!("native PostgreSQL baseline unavailable: {e}");
            None
        }
    };
    let native_url = native
        .as_ref()
        .map(|n| format!("postgresql://postgres@127.0.0.1:{}/postgres", n.port));
    println!();

    // PGlite and native take turns, run by run, so that both see the same machine: on a shared
    // machine the load drifts within seconds. The ratio is the median of the runs' ratios.
    let measure = |workload: Workload| -> (Result<Duration>, Option<Result<Duration>>, Option<f64>) {
        let (mut pglite, mut native, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..reps {
            let p = match runtime.block_on(workload.run(&pglite_url)) {
                Ok(p) => p,
                Err(e) => return (Err(e), None, None),
            };
            pglite.push(p);
            if let Some(url) = native_url.as_deref() {
                match runtime.block_on(workload.run(url)) {
                    Ok(n) => {
                        native.push(n);
                        ratios.push(p.as_secs_f64() / n.as_secs_f64());
                    }
                    Err(e) => return (Ok(median(pglite)), Some(Err(e)), None),
                }
            }
        }
        let native = (!native.is_empty()).then(|| Ok(median(native)));
        ratios.sort_by(f64::total_cmp);
        (Ok(median(pglite)), native, ratios.get(ratios.len() / 2).copied())
    };

    println!(
        "{:<55} {:>11} {:>11} {:>8}   target <= {TARGET}x",
        "workload", "PGlite", "native", "ratio"
    );
    println!("{}", "-".repeat(110));
    let total = Instant::now();
    let mut pool_figures = Vec::new();
    for workload in workloads {
        let (pglite, native, ratio) = measure(workload);
        println!(
            "{:<55} {:>11} {:>11} {:>8}   {}",
            workload.label(),
            shown(&pglite),
            native.as_ref().map_or("-".into(), shown),
            ratio.map_or("-".into(), |r| format!("{r:.2}x")),
            match ratio {
                Some(r) if r <= TARGET => "ok",
                Some(_) => "OVER TARGET",
                None => "",
            }
        );
        for (who, result) in [("PGlite", Some(&pglite)), ("native", native.as_ref())] {
            if let Some(Err(e)) = result {
                println!("    {who} failed: {e}");
            }
        }
        if matches!(workload, Workload::Pool8 | Workload::Pool1) {
            pool_figures.push((pglite.ok(), native.and_then(|n| n.ok())));
        }
    }
    println!("{}", "-".repeat(110));

    // Target: a pool of 8 never slower in total than one client doing the same work.
    if let [(p8, n8), (p1, n1)] = pool_figures[..] {
        let ratio = |many: Option<Duration>, one: Option<Duration>| match (many, one) {
            (Some(m), Some(o)) => format!("{:.2}x", m.as_secs_f64() / o.as_secs_f64()),
            _ => "-".into(),
        };
        println!(
            "pool of 8 / one client, total time:  PGlite {}   native {}   target <= 1.00x (PGlite)",
            ratio(p8, p1),
            ratio(n8, n1)
        );
    }
    println!("(benchmark time {})", show(total.elapsed()));
    // How much of PGlite's time the backend itself ran, against the transport around it.
    let metrics = server.metrics();
    if metrics.queries > 0 {
        println!(
            "PGlite backend: {} batches run, {} busy in all ({:.1} µs per statement), {} waiting in the connection queue",
            metrics.queries,
            show(metrics.backend_busy),
            metrics.backend_busy.as_secs_f64() * 1e6 / metrics.queries as f64,
            show(metrics.queue_wait),
        );
    }

    drop(runtime);
    if let Err(e) = server.shutdown() {
        println!("PGlite server shutdown failed: {e}");
    }
    drop(native);
}

async fn connect(url: &str) -> Result<PgConnection> {
    PgConnection::connect(url).await
}

/// Runs `ddl` (one or more statements, simple protocol).
async fn setup(conn: &mut PgConnection, ddl: &'static str) -> Result<()> {
    sqlx::raw_sql(ddl).execute(&mut *conn).await.map(drop)
}

/// `ids` in a scrambled order (7919 is prime and does not divide `n`).
fn scrambled(n: i32) -> impl Iterator<Item = i32> {
    (0..n).map(move |i| ((i as i64 * 7919) % n as i64) as i32)
}

fn check(what: &str, got: i64, expected: i64) -> Result<()> {
    if got == expected {
        Ok(())
    } else {
        Err(sqlx::Error::Protocol(format!(
            "{what}: got {got}, expected {expected}"
        )))
    }
}

async fn count(conn: &mut PgConnection, query: &'static str) -> Result<i64> {
    sqlx::query_scalar::<_, i64>(query).fetch_one(&mut *conn).await
}

async fn select1(url: &str) -> Result<Duration> {
    let mut conn = connect(url).await?;
    for _ in 0..200 {
        sqlx::query_scalar::<_, i32>("SELECT 1")
            .fetch_one(&mut conn)
            .await?;
    }
    let mut times = Vec::with_capacity(SELECT1);
    for _ in 0..SELECT1 {
        let started = Instant::now();
        let one = sqlx::query_scalar::<_, i32>("SELECT 1")
            .fetch_one(&mut conn)
            .await?;
        times.push(started.elapsed());
        check("SELECT 1", one.into(), 1)?;
    }
    conn.close().await?;
    Ok(median(times))
}

async fn inserts(url: &str, indexed: bool) -> Result<Duration> {
    let mut conn = connect(url).await?;
    if indexed {
        setup(
            &mut conn,
            "DROP TABLE IF EXISTS bench_indexed;
             CREATE TABLE bench_indexed(id int PRIMARY KEY, k int NOT NULL, body text NOT NULL);
             CREATE INDEX bench_indexed_k ON bench_indexed(k);",
        )
        .await?;
    } else {
        setup(
            &mut conn,
            "DROP TABLE IF EXISTS bench_insert;
             CREATE TABLE bench_insert(id int PRIMARY KEY, body text NOT NULL);",
        )
        .await?;
    }
    let bodies: Vec<String> = (0..ROWS).map(|i| format!("row {i}")).collect();
    let started = Instant::now();
    let mut tx = conn.begin().await?;
    for (i, k) in (0..ROWS).zip(scrambled(ROWS)) {
        let body = bodies[i as usize].as_str();
        if indexed {
            sqlx::query("INSERT INTO bench_indexed(id, k, body) VALUES ($1, $2, $3)")
                .bind(i)
                .bind(k)
                .bind(body)
                .execute(&mut *tx)
                .await?;
        } else {
            sqlx::query("INSERT INTO bench_insert(id, body) VALUES ($1, $2)")
                .bind(i)
                .bind(body)
                .execute(&mut *tx)
                .await?;
        }
    }
    tx.commit().await?;
    let elapsed = started.elapsed();
    let rows = if indexed {
        count(&mut conn, "SELECT count(*) FROM bench_indexed").await?
    } else {
        count(&mut conn, "SELECT count(*) FROM bench_insert").await?
    };
    check("rows inserted", rows, ROWS.into())?;
    conn.close().await?;
    Ok(elapsed)
}

const BULK_INSERT: &str = "INSERT INTO bench_bulk(id, body) SELECT * FROM UNNEST($1::int4[], $2::text[])";

async fn bulk_insert(url: &str) -> Result<Duration> {
    let mut conn = connect(url).await?;
    setup(
        &mut conn,
        "DROP TABLE IF EXISTS bench_bulk;
         CREATE TABLE bench_bulk(id int PRIMARY KEY, body text NOT NULL);",
    )
    .await?;
    let ids: Vec<i32> = (0..ROWS).collect();
    let bodies: Vec<String> = (0..ROWS).map(|i| format!("row {i}")).collect();
    let started = Instant::now();
    let done = sqlx::query(BULK_INSERT)
        .bind(&ids)
        .bind(&bodies)
        .execute(&mut conn)
        .await?;
    let elapsed = started.elapsed();
    check("rows inserted", done.rows_affected() as i64, ROWS.into())?;
    conn.close().await?;
    Ok(elapsed)
}

/// Drops and fills `bench_rows(id, n, body)` with `ROWS` rows (untimed).
async fn fill_rows(conn: &mut PgConnection) -> Result<()> {
    setup(
        conn,
        "DROP TABLE IF EXISTS bench_rows;
         CREATE TABLE bench_rows(id int PRIMARY KEY, n int NOT NULL, body text NOT NULL);
         INSERT INTO bench_rows SELECT i, 0, 'row ' || i FROM generate_series(0, 24999) i;",
    )
    .await?;
    // VACUUM cannot run in the implicit transaction of a multi-statement query.
    setup(conn, "VACUUM ANALYZE bench_rows").await
}

async fn pk_selects(url: &str) -> Result<Duration> {
    let mut conn = connect(url).await?;
    fill_rows(&mut conn).await?;
    let started = Instant::now();
    for id in scrambled(ROWS).take(PK_SELECTS as usize) {
        let row = sqlx::query("SELECT id, n, body FROM bench_rows WHERE id = $1")
            .bind(id)
            .fetch_one(&mut conn)
            .await?;
        check("selected id", row.try_get::<i32, _>(0)?.into(), id.into())?;
    }
    let elapsed = started.elapsed();
    conn.close().await?;
    Ok(elapsed)
}

async fn pk_updates(url: &str) -> Result<Duration> {
    let mut conn = connect(url).await?;
    fill_rows(&mut conn).await?;
    let started = Instant::now();
    let mut tx = conn.begin().await?;
    for id in scrambled(ROWS) {
        let done = sqlx::query("UPDATE bench_rows SET n = n + 1 WHERE id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        check("rows updated", done.rows_affected() as i64, 1)?;
    }
    tx.commit().await?;
    let elapsed = started.elapsed();
    let updated = count(&mut conn, "SELECT count(*) FROM bench_rows WHERE n = 1").await?;
    check("rows updated", updated, ROWS.into())?;
    conn.close().await?;
    Ok(elapsed)
}

/// `tasks` tasks sharing a pool of `connections` run `POOL_TASKS * POOL_TXNS` transactions in all,
/// each `BEGIN; SELECT by PK; UPDATE by PK; COMMIT` on a row of its own (no lock waits).
async fn pool(url: &str, connections: u32, tasks: i32) -> Result<Duration> {
    let total = POOL_TASKS * POOL_TXNS;
    let mut conn = connect(url).await?;
    setup(
        &mut conn,
        "DROP TABLE IF EXISTS bench_accounts;
         CREATE TABLE bench_accounts(id int PRIMARY KEY, balance int NOT NULL);
         INSERT INTO bench_accounts SELECT i, 0 FROM generate_series(0, 1999) i;",
    )
    .await?;
    setup(&mut conn, "VACUUM ANALYZE bench_accounts").await?;
    check(
        "accounts",
        count(&mut conn, "SELECT count(*) FROM bench_accounts").await?,
        total.into(),
    )?;

    let pool = PgPoolOptions::new()
        .max_connections(connections)
        .min_connections(connections)
        .connect(url)
        .await?;
    // Open every connection and prepare the statements on each before timing.
    let mut warm = Vec::new();
    for _ in 0..connections {
        let mut c = pool.acquire().await?;
        transaction(&mut c, -1).await?;
        warm.push(c);
    }
    drop(warm);

    let per_task = total / tasks;
    let started = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for task in 0..tasks {
        let pool = pool.clone();
        set.spawn(async move {
            for j in 0..per_task {
                pool_transaction(&pool, task * per_task + j).await?;
            }
            Ok::<_, sqlx::Error>(())
        });
    }
    while let Some(done) = set.join_next().await {
        done.map_err(|e| sqlx::Error::Protocol(format!("task failed: {e}")))??;
    }
    let elapsed = started.elapsed();
    pool.close().await;

    let updated = count(&mut conn, "SELECT count(*) FROM bench_accounts WHERE balance = 1").await?;
    check("accounts updated", updated, total.into())?;
    conn.close().await?;
    Ok(elapsed)
}

async fn pool_transaction(pool: &PgPool, id: i32) -> Result<()> {
    let mut tx = pool.begin().await?;
    transaction(&mut tx, id).await?;
    tx.commit().await
}

/// The body of a pool transaction: read a balance by primary key, then update it.
async fn transaction(conn: &mut PgConnection, id: i32) -> Result<()> {
    let balance: Option<i32> = sqlx::query_scalar("SELECT balance FROM bench_accounts WHERE id = $1")
        .bind(id)
        .fetch_optional(&mut *conn)
        .await?;
    sqlx::query("UPDATE bench_accounts SET balance = $2 WHERE id = $1")
        .bind(id)
        .bind(balance.unwrap_or(0) + 1)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn show(took: Duration) -> String {
    if took < Duration::from_millis(1) {
        format!("{:.1} µs", took.as_secs_f64() * 1e6)
    } else if took < Duration::from_secs(10) {
        format!("{:.1} ms", took.as_secs_f64() * 1e3)
    } else {
        format!("{:.2} s", took.as_secs_f64())
    }
}

fn shown(result: &Result<Duration>) -> String {
    match result {
        Ok(took) => show(*took),
        Err(_) => "error".into(),
    }
}
