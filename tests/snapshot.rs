//! Snapshots: boot once, start many independent backends from the frozen state.

mod support;

use pglite_harness::{Backend, BackendError, Snapshot};
use support::{query, scalar};

#[test]
fn backends_opened_from_one_snapshot_share_nothing() {
    let mut template = Backend::builder().open().unwrap();
    query(&mut template, "CREATE TABLE users(id int PRIMARY KEY, name text)");
    query(&mut template, "INSERT INTO users VALUES (1, 'ada')");
    let snapshot = template.snapshot().unwrap();

    let mut a = snapshot.open().unwrap();
    let mut b = snapshot.open().unwrap();
    query(&mut a, "INSERT INTO users VALUES (2, 'bob')");
    query(&mut b, "DELETE FROM users");
    assert_eq!(scalar(&mut a, "SELECT count(*) FROM users"), "2");
    assert_eq!(scalar(&mut b, "SELECT count(*) FROM users"), "0");
    assert_eq!(
        scalar(&mut template, "SELECT count(*) FROM users"),
        "1",
        "the template is untouched"
    );
    let mut c = snapshot.open().unwrap();
    assert_eq!(scalar(&mut c, "SELECT string_agg(name, ',') FROM users"), "ada");
    for backend in [a, b, c, template] {
        backend.close().unwrap();
    }
}

#[test]
fn a_restored_backend_runs_real_work() {
    let snapshot = Backend::builder().open().unwrap().snapshot().unwrap();
    let mut db = snapshot.open().unwrap();
    query(&mut db, "CREATE TABLE t(id serial PRIMARY KEY, v text)");
    query(
        &mut db,
        "INSERT INTO t(v) SELECT md5(g::text) FROM generate_series(1, 20000) g",
    );
    query(&mut db, "CREATE INDEX ON t(v)");
    let indexed = "SELECT count(*) FROM t WHERE v > 'a'";
    let computed = "SELECT count(*) FROM generate_series(1, 20000) g WHERE md5(g::text) > 'a'";
    assert_eq!(scalar(&mut db, indexed), scalar(&mut db, computed));
    // PL/pgSQL loads a side module after the restore.
    query(&mut db, "DO $$ BEGIN PERFORM 1; END $$");
    let out = db.simple_query("SELECT 1/0").unwrap();
    assert_eq!(
        out.error.unwrap().code,
        "22012",
        "errors unwind and the backend carries on"
    );
    assert_eq!(scalar(&mut db, "SELECT 2"), "2");
    query(&mut db, "CHECKPOINT");

    // A cancel reaches a statement of a restored backend that computes without waiting.
    let cancel = db.cancel_handle();
    let canceller = std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_millis(200));
        cancel.cancel();
    });
    let error = db
        .simple_query("SELECT count(*) FROM generate_series(1, 1000000000)")
        .unwrap()
        .error
        .expect("cancelled");
    canceller.join().unwrap();
    assert_eq!(error.code, "57014");
    assert_eq!(scalar(&mut db, "SELECT 3"), "3");
    db.close().unwrap();
}

#[test]
fn the_session_user_and_database_survive_the_snapshot() {
    let snapshot = Backend::builder()
        .user("app")
        .database("shop")
        .open()
        .unwrap()
        .snapshot()
        .unwrap();
    assert_eq!((snapshot.user(), snapshot.database()), ("app", "shop"));
    let mut db = snapshot.open().unwrap();
    assert_eq!(
        scalar(&mut db, "SELECT current_user || '@' || current_database()"),
        "app@shop"
    );
}

#[test]
fn snapshots_of_busy_or_file_backed_backends_are_refused_with_the_reason() {
    let mut db = Backend::builder().open().unwrap();
    query(&mut db, "BEGIN");
    let err = db.snapshot().unwrap_err();
    assert!(matches!(err, BackendError::Snapshot(_)), "{err}");
    assert!(err.to_string().contains("transaction"), "{err}");
    query(&mut db, "COMMIT");

    assert_eq!(scalar(&mut db, "SELECT 1"), "1", "the backend carries on");

    let dir = tempfile::tempdir().unwrap();
    let mut on_disk = Backend::builder().data_dir(dir.path()).open().unwrap();
    let err = on_disk.snapshot().unwrap_err();
    assert!(err.to_string().contains("memory://"), "{err}");
}

#[test]
fn libraries_loaded_before_the_snapshot_work_in_every_clone() {
    let mut template = Backend::builder()
        .extension("hstore")
        .extension("pg_trgm")
        .open()
        .unwrap();
    query(&mut template, "CREATE EXTENSION hstore");
    query(
        &mut template,
        "CREATE FUNCTION bump(x int) RETURNS int LANGUAGE plpgsql AS $$ BEGIN RETURN x + 1; END $$",
    );
    assert_eq!(scalar(&mut template, "SELECT bump(1)"), "2");
    let snapshot = template.snapshot().unwrap();
    drop(template);

    for _ in 0..3 {
        let mut db = snapshot.open().unwrap();
        assert_eq!(
            scalar(&mut db, "SELECT bump(41)"),
            "42",
            "PL/pgSQL, loaded before the snapshot"
        );
        assert_eq!(
            scalar(&mut db, "SELECT 'a=>1'::hstore -> 'a'"),
            "1",
            "hstore's library"
        );
        query(&mut db, "CREATE EXTENSION pg_trgm");
        assert_eq!(
            scalar(&mut db, "SELECT similarity('word', 'words') > 0.5"),
            "t",
            "a library loaded after"
        );
        query(
            &mut db,
            "CREATE FUNCTION twice(x int) RETURNS int LANGUAGE plpgsql AS $$ BEGIN RETURN bump(bump(x)); END $$",
        );
        assert_eq!(scalar(&mut db, "SELECT twice(1)"), "3");
        let out = db
            .simple_query("DO $$ BEGIN RAISE EXCEPTION 'boom'; END $$")
            .unwrap();
        assert_eq!(out.error.unwrap().message, "boom");
        db.close().unwrap();
    }
}

#[test]
fn a_saved_snapshot_is_opened_by_another_process() {
    let dir = tempfile::tempdir().unwrap();
    let saved = dir.path().join("template");
    let mut template = Backend::builder().user("app").open().unwrap();
    query(&mut template, "CREATE TABLE t(v text)");
    query(
        &mut template,
        "INSERT INTO t SELECT 'row ' || g FROM generate_series(1, 500) g",
    );
    query(
        &mut template,
        "CREATE FUNCTION n() RETURNS bigint LANGUAGE plpgsql AS $$ BEGIN RETURN (SELECT count(*) FROM t); END $$",
    );
    assert_eq!(scalar(&mut template, "SELECT n()"), "500");
    template.snapshot().unwrap().save(&saved).unwrap();
    assert!(saved.join("memory.img").exists() && saved.join("state.bin").exists());

    let output = support::run_child(
        "child_opens_the_saved_snapshot",
        &[("SNAPSHOT_DIR", saved.to_str().unwrap())],
    )
    .output()
    .unwrap();
    let text = support::describe(&output);
    assert!(output.status.success() && text.contains("CHILD OK"), "{text}");
}

#[test]
#[ignore = "run by a_saved_snapshot_is_opened_by_another_process"]
fn child_opens_the_saved_snapshot() {
    let snapshot = Snapshot::load(std::env::var("SNAPSHOT_DIR").unwrap()).unwrap();
    assert_eq!(snapshot.user(), "app");
    for _ in 0..2 {
        let mut db = snapshot.open().unwrap();
        assert_eq!(scalar(&mut db, "SELECT n()"), "500");
        assert_eq!(scalar(&mut db, "SELECT current_user"), "app");
        query(&mut db, "INSERT INTO t VALUES ('mine')");
        assert_eq!(scalar(&mut db, "SELECT n()"), "501");
    }
    println!("CHILD OK");
}

#[test]
fn damaged_saved_snapshots_are_refused_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let saved = dir.path().join("template");
    let snapshot = Backend::builder().open().unwrap().snapshot().unwrap();
    snapshot.save(&saved).unwrap();
    snapshot.save(&saved).unwrap(); // already there: left alone

    let state = saved.join("state.bin");
    let mut bytes = std::fs::read(&state).unwrap();
    let original = bytes.clone();
    bytes[40] ^= 0xff;
    std::fs::write(&state, &bytes).unwrap();
    let err = Snapshot::load(&saved).unwrap_err();
    assert!(matches!(err, BackendError::SnapshotFile { .. }), "{err}");
    assert!(err.to_string().contains("damaged"), "{err}");

    std::fs::write(&state, &original[..original.len() / 2]).unwrap();
    let err = Snapshot::load(&saved).unwrap_err().to_string();
    assert!(err.contains("state.bin") || err.contains("filesystem"), "{err}");

    std::fs::write(&state, &original).unwrap();
    std::fs::File::options()
        .write(true)
        .open(saved.join("memory.img"))
        .unwrap()
        .set_len(4096)
        .unwrap();
    let err = Snapshot::load(&saved).unwrap_err().to_string();
    assert!(err.contains("memory.img"), "{err}");

    let err = Snapshot::load(dir.path().join("missing"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("missing"), "{err}");
}
