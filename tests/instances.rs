//! Many named instances in one process, through real sqlx connections: isolation, stop and start,
//! config files, one dying while the others serve, health and metrics.

mod support;

use std::sync::Arc;
use std::time::Duration;

use pglite_harness::{AdminServer, Config, DataDir, InstanceConfig, InstanceError, InstanceState, Instances};
use sqlx::{Connection, PgConnection, Row};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn connect(instances: &Instances, name: &str) -> PgConnection {
    let url = instances.connection_info(name).unwrap().url;
    PgConnection::connect(&url).await.unwrap()
}

async fn count(conn: &mut PgConnection, sql: &'static str) -> i64 {
    sqlx::query(sql).fetch_one(conn).await.unwrap().get(0)
}

/// Instances are stopped from a blocking thread: a clean shutdown waits for the server threads.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.unwrap()
}

#[tokio::test]
async fn two_instances_on_two_ports_see_nothing_of_each_other() {
    let instances = Arc::new(Instances::new());
    let a = instances.start("a", InstanceConfig::default()).unwrap();
    let b = instances.start("b", InstanceConfig::default()).unwrap();
    assert_ne!(a.port, b.port);

    let mut conn_a = connect(&instances, "a").await;
    let mut conn_b = connect(&instances, "b").await;
    sqlx::raw_sql("CREATE TABLE items(name text); INSERT INTO items VALUES ('only in a')")
        .execute(&mut conn_a)
        .await
        .unwrap();
    let missing = sqlx::query("SELECT * FROM items")
        .fetch_all(&mut conn_b)
        .await
        .unwrap_err();
    assert!(
        missing.to_string().contains("relation \"items\" does not exist"),
        "{missing}"
    );
    sqlx::raw_sql("CREATE TABLE items(name text)")
        .execute(&mut conn_b)
        .await
        .unwrap();
    assert_eq!(count(&mut conn_b, "SELECT count(*) FROM items").await, 0);
    assert_eq!(count(&mut conn_a, "SELECT count(*) FROM items").await, 1);
    drop((conn_a, conn_b));
    blocking(move || instances.stop_all()).await;
}

#[tokio::test]
async fn a_memory_instance_stopped_and_started_again_is_empty() {
    let instances = Arc::new(Instances::new());
    instances.start("scratch", InstanceConfig::default()).unwrap();
    let mut conn = connect(&instances, "scratch").await;
    sqlx::raw_sql("CREATE TABLE t(x int); INSERT INTO t VALUES (1)")
        .execute(&mut conn)
        .await
        .unwrap();
    conn.close().await.unwrap();
    let registry = instances.clone();
    blocking(move || registry.stop("scratch")).await.unwrap();
    assert_eq!(instances.list()[0].state, InstanceState::Stopped);

    instances.start("scratch", InstanceConfig::default()).unwrap();
    let mut conn = connect(&instances, "scratch").await;
    let tables = count(&mut conn, "SELECT count(*) FROM pg_tables WHERE tablename = 't'").await;
    assert_eq!(tables, 0);
}

#[tokio::test]
async fn a_data_dir_instance_stopped_and_started_again_has_every_row() {
    let dir = tempfile::tempdir().unwrap();
    let config = InstanceConfig {
        data_dir: DataDir::Path(dir.path().join("app")),
        user: "app".into(),
        database: "app".into(),
        password: Some("s3cret".into()),
        ..InstanceConfig::default()
    };
    let instances = Arc::new(Instances::new());
    let info = instances.start("app", config.clone()).unwrap();
    assert!(
        info.url.starts_with("postgresql://app:s3cret@127.0.0.1:"),
        "{}",
        info.url
    );
    let mut conn = connect(&instances, "app").await;
    sqlx::raw_sql(
        "CREATE TABLE notes(id int PRIMARY KEY, body text);
         INSERT INTO notes SELECT g, 'note ' || g FROM generate_series(1, 1000) g",
    )
    .execute(&mut conn)
    .await
    .unwrap();
    conn.close().await.unwrap();
    let registry = instances.clone();
    blocking(move || registry.stop("app")).await.unwrap();
    assert!(
        !dir.path().join("app/postmaster.pid").exists(),
        "a clean stop leaves no postmaster.pid"
    );
    instances.start("app", config).unwrap();

    let mut conn = connect(&instances, "app").await;
    assert_eq!(count(&mut conn, "SELECT count(*) FROM notes").await, 1000);
    let row = sqlx::query("SELECT body, current_user::text FROM notes WHERE id = 1000")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(row.get::<String, _>(0), "note 1000");
    assert_eq!(row.get::<String, _>(1), "app");
}

#[tokio::test]
async fn three_instances_start_from_a_config_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("pglite.toml");
    std::fs::write(
        &file,
        r#"
[defaults]
settings = { work_mem = "8MB" }

[instances.default]

[instances.app]
data_dir = "./data/app"
username = "app"
database = "app"
extensions = ["pg_trgm"]
settings = { work_mem = "16MB" }

[instances.reports]
data_dir = "file://REPORTS"
password = "secret"
"#
        .replace("REPORTS", &dir.path().join("reports").display().to_string()),
    )
    .unwrap();
    let config = Config::load(&file).unwrap();
    let instances = Arc::new(Instances::new());
    let started = instances.start_config(&config);
    let names: Vec<&str> = started.iter().map(|(name, _)| name.as_str()).collect();
    assert_eq!(names, ["default", "app", "reports"]);
    for (name, result) in &started {
        assert!(result.is_ok(), "{name}: {result:?}");
    }
    assert!(dir.path().join("data/app/PG_VERSION").exists());
    assert!(dir.path().join("reports/PG_VERSION").exists());

    let mut app = connect(&instances, "app").await;
    sqlx::raw_sql("CREATE EXTENSION pg_trgm")
        .execute(&mut app)
        .await
        .unwrap();
    let row = sqlx::query("SELECT current_setting('work_mem'), similarity('word', 'words')::float8 > 0.5")
        .fetch_one(&mut app)
        .await
        .unwrap();
    assert_eq!(row.get::<String, _>(0), "16MB");
    assert!(row.get::<bool, _>(1));
    let mut default = connect(&instances, "default").await;
    let work_mem: String = sqlx::query_scalar("SHOW work_mem")
        .fetch_one(&mut default)
        .await
        .unwrap();
    assert_eq!(work_mem, "8MB");
    let reports = instances.connection_info("reports").unwrap();
    assert!(reports.url.contains(":secret@"));
    let wrong = reports.url.replace(":secret@", ":wrong@");
    assert!(PgConnection::connect(&wrong).await.is_err());
    PgConnection::connect(&reports.url).await.unwrap();
}

#[tokio::test]
async fn list_and_connection_info_describe_every_instance() {
    let dir = tempfile::tempdir().unwrap();
    let instances = Instances::new();
    let info = instances
        .start(
            "app",
            InstanceConfig {
                user: "app".into(),
                database: "appdb".into(),
                data_dir: DataDir::Path(dir.path().to_owned()),
                ..InstanceConfig::default()
            },
        )
        .unwrap();
    instances.start("scratch", InstanceConfig::default()).unwrap();

    assert_eq!(instances.connection_info("app").unwrap(), info);
    assert_eq!(info.host, "127.0.0.1");
    assert_eq!((info.user.as_str(), info.database.as_str()), ("app", "appdb"));
    assert_eq!(
        info.url,
        format!("postgresql://app@127.0.0.1:{}/appdb", info.port)
    );

    let list = instances.list();
    let names: Vec<&str> = list.iter().map(|i| i.name.as_str()).collect();
    assert_eq!(names, ["app", "scratch"]);
    assert!(list.iter().all(|i| i.state == InstanceState::Ready));
    assert_eq!(list[0].data_dir, DataDir::Path(dir.path().to_owned()));
    assert_eq!(
        list[1].connection.as_ref().unwrap().port,
        instances.connection_info("scratch").unwrap().port
    );

    // A name twice, or a data directory twice, is refused: never a second copy.
    let again = instances.start("app", InstanceConfig::default()).unwrap_err();
    assert!(matches!(again, InstanceError::AlreadyRunning { .. }), "{again}");
    let same_dir = InstanceConfig {
        data_dir: DataDir::Path(dir.path().join("../").join(dir.path().file_name().unwrap())),
        ..InstanceConfig::default()
    };
    let shared = instances.start("copy", same_dir).unwrap_err();
    assert!(
        matches!(&shared, InstanceError::DataDirInUse { other, .. } if other == "app"),
        "{shared}"
    );
    assert!(matches!(
        instances.connection_info("nope"),
        Err(InstanceError::Unknown(_))
    ));

    instances.stop("scratch").unwrap();
    let stopped = instances.connection_info("scratch").unwrap_err();
    assert!(matches!(stopped, InstanceError::NotRunning { .. }), "{stopped}");
    instances.remove("scratch").unwrap();
    assert_eq!(instances.list().len(), 1);
}

#[tokio::test]
async fn a_failed_start_is_reported_and_leaves_the_others_serving() {
    let instances = Instances::new();
    let good = instances.start("good", InstanceConfig::default()).unwrap();
    let taken = instances
        .start(
            "clash",
            InstanceConfig {
                port: good.port,
                ..InstanceConfig::default()
            },
        )
        .unwrap_err();
    assert!(matches!(taken, InstanceError::Start { .. }), "{taken}");
    let bad_setting = InstanceConfig {
        settings: vec![("work_mem".into(), "lots".into())],
        ..InstanceConfig::default()
    };
    let err = instances.start("bad", bad_setting).unwrap_err();
    assert!(err.to_string().contains("work_mem"), "{err}");
    let states: Vec<_> = instances.list().into_iter().map(|i| (i.name, i.state)).collect();
    assert_eq!(states[0], ("good".into(), InstanceState::Ready));
    assert!(matches!(&states[1].1, InstanceState::Failed { reason } if reason.contains("cannot listen")));
    assert!(matches!(&states[2].1, InstanceState::Failed { reason } if reason.contains("work_mem")));
    let mut conn = connect(&instances, "good").await;
    assert_eq!(count(&mut conn, "SELECT (41 + 1)::int8").await, 42);
}

/// Kills the backend of `name`, whose data lives in `dir`, for real: it loads a C extension whose
/// code traps (see `support::trapping_library`).
async fn kill(instances: &Instances, name: &str, dir: &std::path::Path) {
    std::fs::write(dir.join("trapping.so"), support::trapping_library()).unwrap();
    let mut conn = connect(instances, name).await;
    let result = sqlx::raw_sql("LOAD '/pglite/data/trapping.so'")
        .execute(&mut conn)
        .await;
    assert!(result.is_err(), "the trap should kill the backend");
}

/// An instance config keeping its data in `dir`.
fn in_dir(dir: &tempfile::TempDir) -> InstanceConfig {
    InstanceConfig {
        data_dir: DataDir::Path(dir.path().to_owned()),
        ..InstanceConfig::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_instance_killed_while_the_others_keep_serving() {
    let instances = Arc::new(Instances::new().health_timeout(Duration::from_secs(2)));
    let victim_dir = tempfile::tempdir().unwrap();
    instances.start("victim", in_dir(&victim_dir)).unwrap();
    for name in ["left", "right"] {
        instances.start(name, InstanceConfig::default()).unwrap();
    }
    let mut left = connect(&instances, "left").await;
    sqlx::raw_sql("CREATE TABLE t(x int); INSERT INTO t VALUES (1)")
        .execute(&mut left)
        .await
        .unwrap();

    kill(&instances, "victim", victim_dir.path()).await;

    let registry = instances.clone();
    let health = blocking(move || registry.health("victim").unwrap()).await;
    let InstanceState::Failed { reason } = &health.state else {
        panic!("expected failed, got {health:?}")
    };
    assert!(reason.contains("unreachable"), "{reason}");
    assert!(!health.is_healthy());
    let after = PgConnection::connect(&instances.connection_info("victim").unwrap().url).await;
    let refused = match after {
        Ok(mut conn) => sqlx::query("SELECT 1").fetch_one(&mut conn).await.unwrap_err(),
        Err(e) => e,
    };
    assert!(refused.to_string().contains("unavailable"), "{refused}");

    // The others never noticed.
    assert_eq!(count(&mut left, "SELECT count(*) FROM t").await, 1);
    let mut right = connect(&instances, "right").await;
    assert_eq!(count(&mut right, "SELECT 2::int8").await, 2);
    for name in ["left", "right"] {
        let registry = instances.clone();
        let health = blocking(move || registry.health(name).unwrap()).await;
        assert!(health.is_healthy(), "{name}: {health:?}");
    }

    // A restart brings the failed one back.
    let registry = instances.clone();
    blocking(move || registry.restart("victim")).await.unwrap();
    let mut victim = connect(&instances, "victim").await;
    assert_eq!(count(&mut victim, "SELECT 3::int8").await, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_waits_its_turn_and_times_out_behind_an_open_transaction() {
    let instances = Arc::new(Instances::new().health_timeout(Duration::from_millis(300)));
    instances.start("db", InstanceConfig::default()).unwrap();
    let registry = instances.clone();
    let health = blocking(move || registry.health("db").unwrap()).await;
    assert!(health.is_healthy(), "{health:?}");
    assert!(health.latency.unwrap() < Duration::from_millis(300));

    let mut conn = connect(&instances, "db").await;
    sqlx::raw_sql("BEGIN; SELECT 1").execute(&mut conn).await.unwrap();
    let registry = instances.clone();
    let health = blocking(move || registry.health("db").unwrap()).await;
    assert_eq!(health.state, InstanceState::Ready);
    assert!(!health.is_healthy());
    assert!(health.error.unwrap().contains("did not answer SELECT 1"));
    sqlx::raw_sql("COMMIT").execute(&mut conn).await.unwrap();
    let registry = instances.clone();
    assert!(
        blocking(move || registry.health("db").unwrap())
            .await
            .is_healthy()
    );
}

#[tokio::test]
async fn metrics_count_connections_queries_errors_and_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let instances = Instances::new();
    instances
        .start(
            "db",
            InstanceConfig {
                data_dir: dir.path().into(),
                ..InstanceConfig::default()
            },
        )
        .unwrap();
    let before = instances.metrics("db").unwrap();
    assert_eq!(before.server.connections_total, 0);
    assert!(before.server.memory_size >= 128 << 20, "{before:?}");
    assert!(before.data_dir_size.unwrap() > 1 << 20, "{before:?}");

    let mut conn = connect(&instances, "db").await;
    for i in 0..5 {
        let n: i32 = sqlx::query_scalar("SELECT $1::int4")
            .bind(i)
            .fetch_one(&mut conn)
            .await
            .unwrap();
        assert_eq!(n, i);
    }
    assert!(sqlx::query("SELECT 1/0").execute(&mut conn).await.is_err());
    let m = instances.metrics("db").unwrap();
    assert_eq!((m.server.connections_open, m.server.connections_total), (1, 1));
    assert!(m.server.queries >= 6, "{m:?}");
    assert_eq!(m.server.errors, 1);
    assert!(
        m.server.bytes_received > 100 && m.server.bytes_sent > 100,
        "{m:?}"
    );
    assert!(m.server.backend_busy > Duration::ZERO);
    assert!(m.uptime > Duration::ZERO);

    conn.close().await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(instances.metrics("db").unwrap().server.connections_open, 0);
}

/// A GET over a fresh connection: (status code, body).
async fn get(address: std::net::SocketAddr, path: &str) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let status = response[9..12].parse().unwrap();
    let body = response.split_once("\r\n\r\n").unwrap().1.to_owned();
    (status, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_metrics_are_scraped_over_http() {
    let instances = Arc::new(Instances::new().health_timeout(Duration::from_secs(2)));
    instances.start("app", InstanceConfig::default()).unwrap();
    let other_dir = tempfile::tempdir().unwrap();
    instances.start("other", in_dir(&other_dir)).unwrap();
    let admin = AdminServer::start("127.0.0.1:0", instances.clone()).unwrap();
    let mut conn = connect(&instances, "app").await;
    sqlx::query("SELECT 1").execute(&mut conn).await.unwrap();

    let (status, body) = get(admin.local_addr(), "/health").await;
    assert_eq!(status, 200, "{body}");
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(json["status"], "ok");
    assert_eq!(json["instances"]["app"]["state"], "ready");
    assert_eq!(json["instances"]["app"]["healthy"], true);

    let (status, text) = get(admin.local_addr(), "/metrics").await;
    assert_eq!(status, 200);
    for line in [
        "# TYPE pglite_connections_open gauge",
        "# TYPE pglite_queries_total counter",
        "pglite_connections_open{instance=\"app\"} 1",
        "pglite_connections_total{instance=\"other\"} 0",
        "pglite_up{instance=\"app\"} 1",
    ] {
        assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
    }
    assert!(text.contains("# HELP pglite_backend_busy_seconds_total "));
    assert!(text.contains("pglite_memory_bytes{instance=\"app\"} 1"));
    assert!(
        !text.contains("pglite_data_dir_bytes{instance=\"app\"}"),
        "in-memory instances have no data dir size"
    );
    assert!(
        text.contains("pglite_data_dir_bytes{instance=\"other\"}"),
        "{text}"
    );

    drop(conn);
    kill(&instances, "other", other_dir.path()).await;
    let (status, body) = get(admin.local_addr(), "/health").await;
    assert_eq!(status, 503, "{body}");
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(json["status"], "unavailable");
    assert_eq!(json["instances"]["other"]["state"], "failed");
    assert!(
        json["instances"]["other"]["reason"]
            .as_str()
            .unwrap()
            .contains("unreachable")
    );
    assert_eq!(json["instances"]["app"]["healthy"], true);
    let (_, text) = get(admin.local_addr(), "/metrics").await;
    assert!(
        text.lines().any(|l| l == "pglite_up{instance=\"other\"} 0"),
        "{text}"
    );
    assert!(
        text.lines().any(|l| l == "pglite_failed{instance=\"other\"} 1"),
        "{text}"
    );
    assert_eq!(get(admin.local_addr(), "/nope").await.0, 404);
    admin.shutdown();
}
