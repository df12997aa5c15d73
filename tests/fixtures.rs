//! Test fixtures as users write them: `#[pglite_test]`, the builder, sync tests, cleanup.

mod support;

use std::time::Duration;

use pglite_harness::{PgliteDb, pglite_test};
use sqlx::{PgPool, Row};

#[pglite_test]
async fn a_new_database_is_a_real_postgres(db: PgliteDb) {
    let pool = PgPool::connect(db.url()).await.unwrap();
    let version: String = sqlx::query_scalar("SELECT version()")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(version.starts_with("PostgreSQL 18.6"), "{version}");
    let who: String = sqlx::query_scalar("SELECT current_user || '@' || current_database()")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(who, "postgres@postgres");
    assert_eq!(
        (db.user(), db.database(), db.host()),
        ("postgres", "postgres", "127.0.0.1")
    );
    assert!(db.data_dir().is_none());
}

// These two run at the same time as every other test of this file: each creates the same table
// and sees only its own rows.
#[pglite_test]
async fn tests_are_isolated_one(db: PgliteDb) {
    assert_alone_with(&db, 1).await;
}

#[pglite_test]
async fn tests_are_isolated_two(db: PgliteDb) {
    assert_alone_with(&db, 2).await;
}

async fn assert_alone_with(db: &PgliteDb, mine: i32) {
    let pool = db.pool().await.unwrap();
    sqlx::query("CREATE TABLE isolation(v int)")
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query("INSERT INTO isolation VALUES ($1)")
        .bind(mine)
        .execute(&pool)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let rows: Vec<i32> = sqlx::query_scalar("SELECT v FROM isolation")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(rows, [mine]);
}

#[tokio::test]
async fn two_databases_of_one_test_share_nothing() {
    let (a, b) = tokio::join!(PgliteDb::start(), PgliteDb::start());
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_ne!(a.port(), b.port());
    let a_client = a.client().await.unwrap();
    let b_client = b.client().await.unwrap();
    a_client
        .batch_execute("CREATE TABLE only_in_a(x int)")
        .await
        .unwrap();
    let err = b_client
        .batch_execute("SELECT * FROM only_in_a")
        .await
        .unwrap_err();
    assert_eq!(err.code().unwrap().code(), "42P01");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_multi_thread_runtime_works_and_dropping_needs_no_runtime() {
    let db = PgliteDb::builder().user("mt").start().await.unwrap();
    let pool = db.pool().await.unwrap();
    let tasks: Vec<_> = (0..8)
        .map(|i| {
            let pool = pool.clone();
            tokio::spawn(async move {
                let n: i32 = sqlx::query_scalar("SELECT $1::int * 2")
                    .bind(i)
                    .fetch_one(&pool)
                    .await
                    .unwrap();
                n
            })
        })
        .collect();
    let mut sum = 0;
    for task in tasks {
        sum += task.await.unwrap();
    }
    assert_eq!(sum, 56);
    pool.close().await;
    // Dropped on a thread with no runtime at all.
    std::thread::spawn(move || drop(db)).join().unwrap();
}

#[tokio::test]
async fn a_dropped_database_frees_its_port() {
    let db = PgliteDb::start().await.unwrap();
    let (url, port) = (db.url().to_owned(), db.port());
    let client = db.client().await.unwrap();
    client.batch_execute("SELECT 1").await.unwrap();
    drop(db);
    assert!(
        client.batch_execute("SELECT 1").await.is_err(),
        "the connection is closed"
    );
    assert!(
        tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .is_err()
    );
    // The port is free again: it can be bound.
    std::net::TcpListener::bind(("127.0.0.1", port)).expect("the port is free after drop");
}

#[pglite_test(temp_dir)]
async fn a_restart_dropped_half_way_leaves_the_database_stopped_with_its_files(mut db: PgliteDb) {
    let dir = db.data_dir().expect("file-backed").to_owned();
    // Dropped at its first await: the restart finishes on its own thread, unwanted.
    let restart = db.restart();
    drop(tokio::time::timeout(std::time::Duration::ZERO, restart).await);
    assert!(
        dir.join("PG_VERSION").exists(),
        "the data directory stays while `db` lives"
    );
    // A later restart serves the same files again.
    db.restart().await.unwrap();
    let client = db.client().await.unwrap();
    let one: i32 = client.query_one("SELECT 1", &[]).await.unwrap().get(0);
    assert_eq!(one, 1);
}

#[pglite_test(temp_dir)]
async fn a_temp_dir_database_survives_restart(mut db: PgliteDb) {
    let dir = db.data_dir().expect("file-backed").to_owned();
    assert!(dir.join("PG_VERSION").exists(), "PGDATA is in {}", dir.display());
    let pool = db.pool().await.unwrap();
    sqlx::query("CREATE TABLE kept(v text)")
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query("INSERT INTO kept SELECT 'row ' || g FROM generate_series(1, 1000) g")
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
    let port = db.port();

    db.restart().await.unwrap();
    assert_eq!(db.port(), port, "same port after restart");
    let pool = db.pool().await.unwrap();
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM kept")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(count, 1000);
}

#[pglite_test(
    temp_dir,
    migrations = "tests/migrations",
    fixtures("tests/fixtures/users.sql")
)]
async fn a_temp_dir_database_starts_with_its_schema_and_keeps_it(mut db: PgliteDb) {
    let count = |db: &PgliteDb| {
        let url = db.url().to_owned();
        async move {
            let pool = PgPool::connect(&url).await.unwrap();
            let n: i64 = sqlx::query_scalar("SELECT count(*) FROM users")
                .fetch_one(&pool)
                .await
                .unwrap();
            pool.close().await;
            n
        }
    };
    assert_eq!(
        count(&db).await,
        2,
        "migrations and fixtures are in the new directory"
    );
    let pool = db.pool().await.unwrap();
    sqlx::query("INSERT INTO users(email) VALUES ('new@example.com')")
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
    db.restart().await.unwrap();
    assert_eq!(count(&db).await, 3);
}

#[pglite_test(user = "app")]
async fn a_memory_database_keeps_its_data_across_restart_with_fresh_sessions(mut db: PgliteDb) {
    let client = db.client().await.unwrap();
    client
        .batch_execute("CREATE TABLE kept(v int); INSERT INTO kept VALUES (1); SET work_mem = '9MB'")
        .await
        .unwrap();
    client
        .batch_execute("BEGIN; INSERT INTO kept VALUES (2)")
        .await
        .unwrap();
    let port = db.port();
    db.restart().await.unwrap();
    assert!(
        client.batch_execute("SELECT 1").await.is_err(),
        "old connections are closed"
    );
    assert_eq!(db.port(), port);
    let client = db.client().await.unwrap();
    let row = client
        .query_one(
            "SELECT (SELECT array_agg(v)::text FROM kept), current_setting('work_mem'), current_user::text",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(
        (
            row.get::<_, String>(0),
            row.get::<_, String>(1),
            row.get::<_, String>(2)
        ),
        ("{1}".into(), "4MB".into(), "app".into()),
        "committed rows stay, the open transaction and the SET are gone, the user is the same"
    );
}

#[pglite_test(migrations = "tests/migrations")]
async fn migrations_are_applied_and_recorded_like_sqlx(db: PgliteDb) {
    let pool = db.pool().await.unwrap();
    sqlx::query("INSERT INTO users(email) VALUES ('x@example.com')")
        .execute(&pool)
        .await
        .unwrap();
    let applied: Vec<(i64, String)> =
        sqlx::query_as("SELECT version, description FROM _sqlx_migrations ORDER BY 1")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(
        applied,
        [
            (20240101000000, "create users".to_owned()),
            (20240102000000, "create orders".to_owned())
        ]
    );
    // sqlx's own migrator finds them applied, checksums included.
    let migrator = sqlx::migrate::Migrator::new(std::path::Path::new("tests/migrations"))
        .await
        .unwrap();
    migrator.run(&pool).await.unwrap();
}

#[pglite_test(
    migrations = "tests/migrations",
    fixtures("tests/fixtures/users.sql", "tests/fixtures/orders.sql")
)]
async fn fixtures_are_loaded_after_migrations(db: PgliteDb) {
    let pool = db.pool().await.unwrap();
    let row = sqlx::query(
        "SELECT count(*) AS users, order_count((SELECT id FROM users WHERE email = 'ada@example.com')) AS orders \
         FROM users",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!((row.get::<i64, _>("users"), row.get::<i64, _>("orders")), (2, 1));
}

#[pglite_test(extensions("hstore", "pg_trgm"))]
async fn extensions_are_created(db: PgliteDb) {
    let client = db.client().await.unwrap();
    let row = client
        .query_one(
            "SELECT ('a=>1'::hstore -> 'a'), similarity('word', 'words') > 0.5",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(
        (row.get::<_, String>(0), row.get::<_, bool>(1)),
        ("1".to_owned(), true)
    );
}

#[pglite_test(user = "app", database = "shop")]
fn sync_tests_work_with_their_own_user_and_database(db: PgliteDb) {
    assert_eq!((db.user(), db.database()), ("app", "shop"));
    assert!(
        db.url().contains("app@") && db.url().ends_with("/shop"),
        "{}",
        db.url()
    );
    // A synchronous client: tokio-postgres driven by a runtime of the test's own.
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let client = db.client().await.unwrap();
        let row = client
            .query_one("SELECT current_user::text, current_database()::text", &[])
            .await
            .unwrap();
        assert_eq!(
            (row.get::<_, String>(0), row.get::<_, String>(1)),
            ("app".into(), "shop".into())
        );
    });
}

#[pglite_test]
async fn tests_may_return_errors(db: PgliteDb) -> Result<(), Box<dyn std::error::Error>> {
    let pool = db.pool().await?;
    let two: i32 = sqlx::query_scalar("SELECT 1 + 1").fetch_one(&pool).await?;
    assert_eq!(two, 2);
    Ok(())
}

#[tokio::test]
async fn the_builder_covers_passwords_and_settings() {
    let db = PgliteDb::builder()
        .password("s3cret")
        .setting("work_mem", "16MB")
        .start()
        .await
        .unwrap();
    assert_eq!(db.password(), Some("s3cret"));
    let pool = db.pool().await.unwrap();
    let work_mem: String = sqlx::query_scalar("SHOW work_mem")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(work_mem, "16MB");
    let wrong = db.url().replace("s3cret", "wrong");
    let err = PgPool::connect(&wrong).await.unwrap_err();
    assert!(
        err.to_string().contains("password authentication failed"),
        "{err}"
    );
}

#[tokio::test]
async fn bad_recipes_fail_with_the_file_and_the_reason() {
    let err = PgliteDb::builder()
        .migrations("tests/no-such-migrations")
        .start()
        .await
        .unwrap_err();
    assert!(err.to_string().contains("tests/no-such-migrations"), "{err}");

    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("1_broken.sql"), "CREATE TABLE (").unwrap();
    let err = PgliteDb::builder()
        .migrations(dir.path())
        .start()
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("1_broken.sql") && text.contains("syntax error"),
        "{text}"
    );

    let err = PgliteDb::builder()
        .extension("no_such_ext")
        .start()
        .await
        .unwrap_err();
    assert!(err.to_string().contains("no_such_ext"), "{err}");
}

/// Where the panicking child test's database lived, for the check that runs after it in the
/// same child process.
static PANICKED_DB: std::sync::Mutex<Option<(u16, std::path::PathBuf)>> = std::sync::Mutex::new(None);

/// Run in a child process by `a_panicking_test_cleans_up`: records where its database lives,
/// then panics.
#[pglite_test(temp_dir)]
#[ignore = "run by a_panicking_test_cleans_up in a child process"]
async fn cleanup_child_a_panics(db: PgliteDb) {
    *PANICKED_DB.lock().unwrap() = Some((db.port(), db.data_dir().unwrap().to_owned()));
    panic!("the test failed on purpose");
}

/// Runs right after `cleanup_child_a_panics` in the same child process, while the
/// process is still alive: the port is free and the directory gone.
#[test]
#[ignore = "run by a_panicking_test_cleans_up in a child process"]
fn cleanup_child_b_checks() {
    let (port, dir) = PANICKED_DB
        .lock()
        .unwrap()
        .clone()
        .expect("the panicking test ran first");
    assert!(
        dir.parent().unwrap().exists() && !dir.exists(),
        "{} was removed",
        dir.display()
    );
    std::net::TcpListener::bind(("127.0.0.1", port)).expect("the port is free");
    println!("CLEANUP OK port {port} dir {}", dir.display());
}

#[test]
fn a_panicking_test_cleans_up() {
    let output = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["cleanup_child_", "--ignored", "--nocapture", "--test-threads=1"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let all = support::describe(&output);
    assert!(stdout.contains("cleanup_child_a_panics ... FAILED"), "{all}");
    assert!(all.contains("the test failed on purpose"), "{all}");
    assert!(stdout.contains("CLEANUP OK"), "{all}");
    assert!(
        stdout.contains("1 passed; 1 failed"),
        "only the panicking test fails: {all}"
    );
}

/// Run in a child process by `a_damaged_template_in_the_disk_cache_is_made_again`.
#[test]
#[ignore = "run by a_damaged_template_in_the_disk_cache_is_made_again in a child process"]
fn child_starts_a_database() {
    let db = PgliteDb::builder().start_blocking().unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let client = db.client().await.unwrap();
        client.batch_execute("CREATE TABLE t(); SELECT 1").await.unwrap();
    });
    println!("CHILD OK");
}

#[test]
fn a_damaged_template_in_the_disk_cache_is_made_again() {
    let cache = tempfile::tempdir().unwrap();
    // Share the compiled module with the real cache (compiling it again takes seconds).
    let real = pglite_harness::runtime::ModuleCache::from_env().unwrap();
    for entry in std::fs::read_dir(real.dir()).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap().to_owned();
        if name.ends_with(".cwasm") || name.ends_with(".sha256") {
            let target = cache.path().join(&name);
            std::fs::hard_link(&path, &target)
                .or_else(|_| std::fs::copy(&path, &target).map(drop))
                .unwrap();
        }
    }
    let child = || {
        let output = support::run_child(
            "child_starts_a_database",
            &[
                ("PGLITE_HARNESS_CACHE_DIR", cache.path().to_str().unwrap()),
                ("PGLITE_HARNESS_PREWARM", "0"),
            ],
        )
        .output()
        .unwrap();
        let text = support::describe(&output);
        assert!(output.status.success() && text.contains("CHILD OK"), "{text}");
    };
    child();
    let templates: Vec<_> = std::fs::read_dir(cache.path().join("templates"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(
        templates.len(),
        1,
        "one recipe, one saved template: {templates:?}"
    );
    let state = templates[0].join("state.bin");
    let mut bytes = std::fs::read(&state).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x55;
    std::fs::write(&state, &bytes).unwrap();

    child(); // the damaged template is refused, made again and saved
    let remade = std::fs::read(&state).unwrap();
    assert_ne!(remade, bytes, "the damaged file was replaced");
    child(); // and the new one loads
}
