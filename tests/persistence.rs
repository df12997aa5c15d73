//! Data directories: persistence across close and crash, locking, population, the module cache
//! shared between processes.

mod support;

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::Duration;

use pglite_harness::{Backend, BackendError, LOCK_FILE};
use support::{describe, query, run_child, scalar};

#[test]
fn committed_rows_survive_close_and_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let mut db = Backend::builder().data_dir(dir.path()).open().unwrap();
    query(&mut db, "CREATE TABLE notes(id serial PRIMARY KEY, body text)");
    query(
        &mut db,
        "INSERT INTO notes(body) SELECT 'note ' || g FROM generate_series(1, 500) g",
    );
    query(
        &mut db,
        "BEGIN; INSERT INTO notes(body) VALUES ('never committed')",
    );
    db.close().unwrap();
    assert!(dir.path().join("PG_VERSION").exists());
    assert!(
        !dir.path().join("postmaster.pid").exists(),
        "a clean shutdown removes postmaster.pid"
    );

    let mut db = Backend::builder().data_dir(dir.path()).open().unwrap();
    assert_eq!(scalar(&mut db, "SELECT count(*) FROM notes"), "500");
    assert_eq!(
        scalar(&mut db, "SELECT body FROM notes WHERE id = 500"),
        "note 500"
    );
    db.close().unwrap();
}

#[test]
fn a_missing_directory_is_created_from_the_template() {
    let parent = tempfile::tempdir().unwrap();
    let dir = parent.path().join("nested").join("pgdata");
    let mut db = Backend::builder()
        .data_dir(format!("file://{}", dir.display()).as_str())
        .open()
        .unwrap();
    assert!(scalar(&mut db, "SELECT version()").contains("18.6"));
    assert_eq!(
        scalar(
            &mut db,
            "SELECT count(*) FROM pg_extension WHERE extname = 'plpgsql'"
        ),
        "1"
    );
    drop(db); // Drop shuts down cleanly too.
    assert!(!dir.join("postmaster.pid").exists());
}

#[test]
fn a_directory_that_is_not_a_cluster_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("my-important-file.txt"), "hello").unwrap();
    let err = Backend::builder().data_dir(dir.path()).open().unwrap_err();
    assert!(matches!(err, BackendError::DataDir { .. }), "{err}");
    assert!(err.to_string().contains("my-important-file.txt"), "{err}");
    assert_eq!(
        std::fs::read_to_string(dir.path().join("my-important-file.txt")).unwrap(),
        "hello"
    );
}

#[test]
fn a_corrupt_cluster_is_reported_not_crashed_on() {
    let dir = tempfile::tempdir().unwrap();
    Backend::builder()
        .data_dir(dir.path())
        .open()
        .unwrap()
        .close()
        .unwrap();
    std::fs::write(dir.path().join("global/pg_control"), b"garbage").unwrap();
    let err = Backend::builder().data_dir(dir.path()).open().unwrap_err();
    let BackendError::Boot { reason, .. } = &err else {
        panic!("expected a boot error, got {err}")
    };
    assert!(reason.contains("pg_control"), "{reason}");
}

#[test]
fn a_directory_open_in_this_process_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut first = Backend::builder().data_dir(dir.path()).open().unwrap();
    let err = Backend::builder().data_dir(dir.path()).open().unwrap_err();
    assert!(
        matches!(&err, BackendError::DataDirLocked { path } if path == dir.path()),
        "{err}"
    );
    assert!(err.to_string().contains("already in use"), "{err}");
    assert_eq!(scalar(&mut first, "SELECT 1"), "1");
    first.close().unwrap();
    // Released on close.
    Backend::builder()
        .data_dir(dir.path())
        .open()
        .unwrap()
        .close()
        .unwrap();
}

#[test]
fn a_directory_open_in_another_process_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let db = Backend::builder().data_dir(dir.path()).open().unwrap();
    let output = run_child(
        "child_opens_data_dir",
        &[("PGLITE_TEST_DIR", dir.path().to_str().unwrap())],
    )
    .output()
    .unwrap();
    assert!(output.status.success(), "{}", describe(&output));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains("refused: data directory") && stdout.contains("already in use"),
        "{}",
        describe(&output)
    );
    assert!(dir.path().join(LOCK_FILE).exists());
    db.close().unwrap();
}

#[test]
#[ignore = "run by a_directory_open_in_another_process_is_refused in a child process"]
fn child_opens_data_dir() {
    let dir = std::env::var("PGLITE_TEST_DIR").expect("PGLITE_TEST_DIR");
    match Backend::builder().data_dir(dir.as_str()).open() {
        Ok(_) => println!("opened"),
        Err(e) => println!("refused: {e}"),
    }
}

#[test]
fn every_committed_row_survives_a_killed_process() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = run_child(
        "child_writes_until_killed",
        &[("PGLITE_TEST_DIR", dir.path().to_str().unwrap())],
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::inherit())
    .spawn()
    .unwrap();
    let mut committed = 0u64;
    for line in BufReader::new(child.stdout.take().unwrap()).lines() {
        let line = line.unwrap();
        if let Some(n) = line.strip_prefix("committed ") {
            committed = n.parse().unwrap();
            if committed >= 300 {
                break;
            }
        }
    }
    child.kill().unwrap(); // SIGKILL, mid-work: no shutdown of any kind
    child.wait().unwrap();
    assert!(
        committed >= 300,
        "the child committed {committed} rows before dying early"
    );
    assert!(
        dir.path().join("postmaster.pid").exists(),
        "the child died without shutting down"
    );

    let mut db = Backend::builder().data_dir(dir.path()).open().unwrap();
    let count: u64 = scalar(&mut db, "SELECT count(*) FROM log").parse().unwrap();
    assert!(
        count >= committed,
        "{count} rows recovered, {committed} were committed"
    );
    assert_eq!(
        scalar(&mut db, "SELECT count(*) = max(n) FROM log"),
        "t",
        "no gaps"
    );
    db.close().unwrap();
}

#[test]
#[ignore = "run by every_committed_row_survives_a_killed_process in a child process"]
fn child_writes_until_killed() {
    let dir = std::env::var("PGLITE_TEST_DIR").expect("PGLITE_TEST_DIR");
    let mut db = Backend::builder().data_dir(dir.as_str()).open().unwrap();
    query(
        &mut db,
        "CREATE TABLE log(n int PRIMARY KEY, at timestamptz DEFAULT now())",
    );
    for n in 1.. {
        query(&mut db, &format!("INSERT INTO log(n) VALUES ({n})"));
        println!("committed {n}");
        if n > 100_000 {
            break;
        }
    }
    std::thread::sleep(Duration::from_secs(60));
}

#[test]
fn a_second_process_loads_the_compiled_module_from_the_cache() {
    // Make sure this process has the module (and so the cache has it).
    pglite_harness::runtime::Runtime::global().unwrap();
    let output = run_child("child_reports_module_source", &[]).output().unwrap();
    assert!(output.status.success(), "{}", describe(&output));
    assert!(
        String::from_utf8_lossy(&output.stdout).contains("module source: Disk"),
        "{}",
        describe(&output)
    );
}

#[test]
#[ignore = "run by a_second_process_loads_the_compiled_module_from_the_cache in a child process"]
fn child_reports_module_source() {
    let runtime = pglite_harness::runtime::Runtime::global().unwrap();
    println!(
        "module source: {:?} in {:?}",
        runtime.module_source(),
        runtime.load_time()
    );
}
