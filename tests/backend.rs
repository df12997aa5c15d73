//! The engine: one PGlite backend driven with wire-protocol bytes.

mod support;

use bytes::BytesMut;
use pglite_harness::{Backend, BackendError};
use postgres_protocol::IsNull;
use postgres_protocol::message::frontend;
use support::{message_types, query, scalar};

#[test]
fn simple_protocol_answers_rows_and_reports_postgres_18_6() {
    let mut db = Backend::builder().open().unwrap();
    let mut msg = BytesMut::new();
    frontend::query("SELECT 1 AS one, 'two' AS two", &mut msg).unwrap();
    let reply = db.exec(&msg).unwrap();
    assert_eq!(message_types(&reply), "TDCZ");
    assert!(scalar(&mut db, "SELECT version()").starts_with("PostgreSQL 18.6"));
    assert_eq!(scalar(&mut db, "SHOW server_encoding"), "UTF8");
    db.close().unwrap();
}

#[test]
fn extended_protocol_parses_binds_and_executes() {
    let mut db = Backend::builder().open().unwrap();
    let mut msg = BytesMut::new();
    frontend::parse("add_one", "SELECT $1::int4 + 1", [23], &mut msg).unwrap();
    frontend::describe(b'S', "add_one", &mut msg).unwrap();
    frontend::bind(
        "",
        "add_one",
        [1],
        [41i32],
        |v, buf| {
            buf.extend_from_slice(&v.to_be_bytes());
            Ok(IsNull::No)
        },
        [0],
        &mut msg,
    )
    .unwrap_or_else(|_| panic!("bind"));
    frontend::execute("", 0, &mut msg).unwrap();
    frontend::sync(&mut msg);
    let reply = db.exec(&msg).unwrap();
    // ParseComplete, ParameterDescription, RowDescription, BindComplete, DataRow, CommandComplete, ReadyForQuery
    assert_eq!(message_types(&reply), "1tT2DCZ");
    let out = pglite_harness::SimpleQueryOutput::parse(&reply);
    assert_eq!(out.scalar(), Some("42"));

    // The prepared statement stays usable in later calls.
    let mut again = BytesMut::new();
    frontend::bind(
        "",
        "add_one",
        [0],
        [b"1".as_slice()],
        |v, buf| {
            buf.extend_from_slice(v);
            Ok(IsNull::No)
        },
        [0],
        &mut again,
    )
    .unwrap_or_else(|_| panic!("bind"));
    frontend::describe(b'P', "", &mut again).unwrap();
    frontend::execute("", 0, &mut again).unwrap();
    frontend::sync(&mut again);
    let out = pglite_harness::SimpleQueryOutput::parse(&db.exec(&again).unwrap());
    assert_eq!(out.scalar(), Some("2"));
}

#[test]
fn an_error_is_reported_and_the_next_query_succeeds() {
    let mut db = Backend::builder().open().unwrap();
    let out = db.simple_query("SELECT 1/0").unwrap();
    let error = out.error.expect("division by zero is an error");
    assert_eq!((error.severity.as_str(), error.code.as_str()), ("ERROR", "22012"));
    assert_eq!(out.transaction_status, b'I');
    assert_eq!(scalar(&mut db, "SELECT 2"), "2");

    // Inside a transaction block the error aborts it until ROLLBACK.
    let out = db.simple_query("BEGIN; SELECT 1/0; SELECT 2").unwrap();
    assert_eq!(out.transaction_status, b'E');
    let out = db.simple_query("SELECT 3").unwrap();
    assert_eq!(out.error.unwrap().code, "25P02");
    query(&mut db, "ROLLBACK");
    assert_eq!(scalar(&mut db, "SELECT 4"), "4");
}

#[test]
fn one_batch_carries_on_after_an_error_in_it() {
    let mut db = Backend::builder().open().unwrap();
    // Two queries, then an extended-protocol statement that fails, one the backend skips until
    // Sync, and one after it: all in one exec.
    let mut batch = BytesMut::new();
    frontend::query("SELECT 1/0", &mut batch).unwrap();
    frontend::query("SELECT 42", &mut batch).unwrap();
    frontend::parse("", "SELECT 1/0", [], &mut batch).unwrap();
    frontend::bind(
        "",
        "",
        [],
        [] as [&[u8]; 0],
        |_: &[u8], _| Ok(IsNull::No),
        [0],
        &mut batch,
    )
    .unwrap_or_else(|_| panic!("bind"));
    frontend::execute("", 0, &mut batch).unwrap();
    frontend::parse("", "SELECT 'skipped'", [], &mut batch).unwrap();
    frontend::sync(&mut batch);
    frontend::query("SELECT 'after'", &mut batch).unwrap();
    let reply = db.exec(&batch).unwrap();
    // The division is folded when the statement is planned, at Bind.
    assert_eq!(message_types(&reply), "EZTDCZ1EZTDCZ");
    let text = String::from_utf8_lossy(&reply);
    assert!(text.contains("42") && text.contains("after") && !text.contains("skipped"));
}

#[test]
fn a_run_time_error_unwinds_through_longjmp() {
    let mut db = Backend::builder().open().unwrap();
    // The error happens while the executor runs (not at plan time): a real longjmp.
    let out = db
        .simple_query("SELECT 1/(g-1) FROM generate_series(1,2) g")
        .unwrap();
    assert_eq!(out.error.unwrap().code, "22012");
    for _ in 0..50 {
        let out = db
            .simple_query("SELECT 1/(g-2) FROM generate_series(1,3) g")
            .unwrap();
        assert_eq!(out.error.unwrap().message, "division by zero");
    }
    assert_eq!(
        scalar(&mut db, "SELECT count(*) FROM generate_series(1,1000)"),
        "1000"
    );
}

#[test]
fn plpgsql_exception_blocks_catch_errors() {
    let mut db = Backend::builder().open().unwrap();
    query(
        &mut db,
        "CREATE FUNCTION safe_div(a int, b int) RETURNS int LANGUAGE plpgsql AS $$
         BEGIN
           RETURN a / b;
         EXCEPTION WHEN division_by_zero THEN
           RAISE NOTICE 'caught %', SQLERRM;
           RETURN NULL;
         END $$",
    );
    let out = query(&mut db, "SELECT safe_div(10, 0) IS NULL, safe_div(10, 2)");
    assert_eq!(out.rows()[0], vec![Some("t".to_owned()), Some("5".to_owned())]);
    assert_eq!(out.notices[0].message, "caught division by zero");
    let out = query(
        &mut db,
        "DO $$ BEGIN PERFORM 1/0; EXCEPTION WHEN others THEN RAISE NOTICE 'ok'; END $$",
    );
    assert_eq!(out.notices[0].message, "ok");
}

#[test]
fn bundled_extensions_can_be_created_and_used() {
    let mut db = Backend::builder()
        .extension("hstore")
        .extension("pg_trgm")
        .extension("citext")
        .extension("pgcrypto")
        .open()
        .unwrap();
    for ext in ["hstore", "pg_trgm", "citext", "pgcrypto"] {
        query(&mut db, &format!("CREATE EXTENSION {ext}"));
    }
    assert_eq!(scalar(&mut db, "SELECT ('a=>1,b=>2'::hstore) -> 'b'"), "2");
    assert_eq!(
        scalar(&mut db, "SELECT similarity('postgres', 'postgis') > 0.3"),
        "t"
    );
    assert_eq!(scalar(&mut db, "SELECT 'Hello'::citext = 'HELLO'::citext"), "t");
    assert_eq!(
        scalar(&mut db, "SELECT encode(digest('abc', 'sha256'), 'hex')"),
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    );
    assert_eq!(scalar(&mut db, "SELECT length(gen_random_bytes(16))"), "16");
}

#[test]
fn errors_raised_in_an_extension_unwind_through_its_frames() {
    let mut db = Backend::builder()
        .extension("hstore")
        .extension("pgcrypto")
        .open()
        .unwrap();
    query(&mut db, "CREATE EXTENSION hstore");
    query(&mut db, "CREATE EXTENSION pgcrypto");
    // Raised by the extension's own code, between the longjmp and the setjmp that catches it.
    let error = db.simple_query("SELECT 'a=>'::hstore").unwrap().error.unwrap();
    assert_eq!(error.code, "42601", "{}", error.message);
    let error = db
        .simple_query("SELECT digest('x', 'no-such-hash')")
        .unwrap()
        .error
        .unwrap();
    assert!(error.message.contains("no-such-hash"), "{}", error.message);
    let out = query(
        &mut db,
        "DO $$ BEGIN PERFORM 'a=>'::hstore; EXCEPTION WHEN syntax_error THEN RAISE NOTICE 'caught %', SQLSTATE; END $$",
    );
    assert_eq!(out.notices[0].message, "caught 42601");
    assert_eq!(scalar(&mut db, "SELECT ('a=>1'::hstore) -> 'a'"), "1");
}

#[test]
fn an_extension_not_given_to_the_instance_is_missing() {
    let mut db = Backend::builder().open().unwrap();
    let error = db.simple_query("CREATE EXTENSION hstore").unwrap().error.unwrap();
    assert_eq!(error.code, "0A000", "{error}");
    assert_eq!(scalar(&mut db, "SELECT 1"), "1");
}

#[test]
fn unknown_extension_bundles_and_bad_settings_are_refused() {
    let err = Backend::builder().extension("no_such_thing").open().unwrap_err();
    assert!(
        matches!(&err, BackendError::UnknownExtension { name, .. } if name == "no_such_thing"),
        "{err}"
    );
    assert!(
        err.to_string().contains("hstore"),
        "the message lists what exists: {err}"
    );
    let err = Backend::builder().setting("work mem", "1MB").open().unwrap_err();
    assert!(matches!(err, BackendError::InvalidSetting { .. }), "{err}");
    let err = Backend::builder()
        .setting("no_such_setting", "1")
        .open()
        .unwrap_err();
    assert!(
        matches!(&err, BackendError::Boot { reason, .. } if reason.contains("no_such_setting")),
        "{err}"
    );
}

#[test]
fn settings_are_applied_at_start() {
    let mut db = Backend::builder().setting("work_mem", "16MB").open().unwrap();
    assert_eq!(scalar(&mut db, "SHOW work_mem"), "16MB");
    assert_eq!(scalar(&mut db, "SHOW shared_buffers"), "16MB");
    assert_eq!(scalar(&mut db, "SHOW max_parallel_workers_per_gather"), "0");
}

#[test]
fn twenty_five_thousand_rows_are_inserted_and_read_back() {
    let mut db = Backend::builder().open().unwrap();
    query(&mut db, "CREATE TABLE items(id int PRIMARY KEY, name text)");
    query(&mut db, "BEGIN");
    for i in 0..25_000 {
        let mut msg = BytesMut::new();
        frontend::query(&format!("INSERT INTO items VALUES ({i}, 'item {i}')"), &mut msg).unwrap();
        let reply = db.exec(&msg).unwrap();
        assert_eq!(message_types(&reply), "CZ");
    }
    query(&mut db, "COMMIT");
    let out = query(&mut db, "SELECT count(*), sum(id), min(name), max(id) FROM items");
    assert_eq!(
        out.rows()[0],
        ["25000", "312487500", "item 0", "24999"]
            .map(|s| Some(s.to_owned()))
            .to_vec()
    );
    assert_eq!(query(&mut db, "SELECT * FROM items").rows().len(), 25_000);
}

#[test]
fn copy_from_stdin_in_one_exec_and_copy_to_stdout() {
    let mut db = Backend::builder().open().unwrap();
    query(&mut db, "CREATE TABLE t(a int, b text)");
    let mut msg = BytesMut::new();
    frontend::query("COPY t FROM STDIN", &mut msg).unwrap();
    for i in 0..1000 {
        frontend::CopyData::new(format!("{i}\trow {i}\n").as_bytes())
            .unwrap()
            .write(&mut msg);
    }
    frontend::copy_done(&mut msg);
    let reply = db.exec(&msg).unwrap();
    assert_eq!(message_types(&reply), "GCZ");
    assert_eq!(scalar(&mut db, "SELECT count(*) FROM t"), "1000");

    let mut msg = BytesMut::new();
    frontend::query(
        "COPY (SELECT * FROM t WHERE a < 3 ORDER BY a) TO STDOUT",
        &mut msg,
    )
    .unwrap();
    let reply = db.exec(&msg).unwrap();
    assert_eq!(message_types(&reply), "HdddcCZ");
    let text = String::from_utf8_lossy(&reply);
    assert!(
        text.contains("0\trow 0\n") && text.contains("2\trow 2\n"),
        "{text}"
    );
}

#[test]
fn copy_from_stdin_without_its_data_fails_and_the_backend_survives() {
    let mut db = Backend::builder().open().unwrap();
    query(&mut db, "CREATE TABLE t(a int)");
    let out = db.simple_query("COPY t FROM STDIN").unwrap();
    let error = out.error.expect("the COPY fails");
    assert_eq!(error.code, "57014", "{error}");
    assert!(error.message.contains("same exec"), "{error}");
    assert_eq!(db.dead_reason(), None);
    assert_eq!(scalar(&mut db, "SELECT count(*) FROM t"), "0");
}

#[test]
fn copy_to_and_from_dev_blob() {
    let mut db = Backend::builder().open().unwrap();
    query(&mut db, "CREATE TABLE t(a int, b text)");
    db.set_copy_blob(b"1,one\n2,two\n".to_vec());
    assert_eq!(
        query(&mut db, "COPY t FROM '/dev/blob' (FORMAT csv)").statements[0].tag,
        "COPY 2"
    );
    query(
        &mut db,
        "COPY (SELECT a * 10, upper(b) FROM t ORDER BY a) TO '/dev/blob' (FORMAT csv)",
    );
    assert_eq!(db.take_copy_blob(), b"10,ONE\n20,TWO\n");
    assert!(db.take_copy_blob().is_empty(), "taken");
}

#[test]
fn listen_and_notify_within_one_session() {
    let mut db = Backend::builder().open().unwrap();
    query(&mut db, "LISTEN jobs");
    let out = query(&mut db, "NOTIFY jobs, 'payload1'");
    assert_eq!(out.notifications.len(), 1);
    assert_eq!(
        (
            out.notifications[0].channel.as_str(),
            out.notifications[0].payload.as_str()
        ),
        ("jobs", "payload1")
    );
    let out = query(&mut db, "SELECT pg_notify('other', 'x')");
    assert!(out.notifications.is_empty(), "not listening to 'other'");
}

#[test]
fn malformed_bytes_are_refused_without_reaching_postgres() {
    let mut db = Backend::builder().open().unwrap();
    let err = db.exec(b"\xde\xad\xbe\xef garbage").unwrap_err();
    assert!(matches!(err, BackendError::Protocol(_)), "{err}");
    assert!(err.to_string().contains("invalid frontend message type"), "{err}");

    let mut msg = BytesMut::new();
    frontend::query("SELECT 1", &mut msg).unwrap();
    let err = db.exec(&msg[..msg.len() - 3]).unwrap_err();
    assert!(err.to_string().contains("incomplete 'Q' message"), "{err}");

    assert_eq!(scalar(&mut db, "SELECT 'still here'"), "still here");
}

#[test]
fn startup_ssl_request_and_terminate_are_handled_by_the_host() {
    let mut db = Backend::builder().open().unwrap();
    assert_eq!(db.exec(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f]).unwrap(), b"N");
    let mut startup = BytesMut::new();
    frontend::startup_message([("user", "postgres"), ("database", "postgres")], &mut startup).unwrap();
    let reply = db.exec(&startup).unwrap();
    let types = message_types(&reply);
    assert!(
        types.starts_with('R') && types.ends_with("KZ") && types.contains('S'),
        "{types}"
    );
    let mut terminate = BytesMut::new();
    frontend::terminate(&mut terminate);
    assert!(db.exec(&terminate).unwrap().is_empty());
    assert_eq!(scalar(&mut db, "SELECT 1"), "1");
}

#[test]
fn a_trap_marks_the_backend_dead_with_its_reason() {
    // A C extension whose code traps (here its _PG_init runs `unreachable`) ends the instance: the
    // backend reports why and refuses further work cleanly.
    let dir = tempfile::tempdir().unwrap();
    let mut db = Backend::builder().data_dir(dir.path()).open().unwrap();
    std::fs::write(dir.path().join("trapping.so"), support::trapping_library()).unwrap();
    let err = db.simple_query("LOAD '/pglite/data/trapping.so'").unwrap_err();
    let BackendError::Fatal { reason, .. } = &err else {
        panic!("expected Fatal, got {err}")
    };
    assert!(reason.contains("unreachable"), "{reason}");
    let err = db.simple_query("SELECT 1").unwrap_err();
    assert!(
        matches!(&err, BackendError::Dead { reason } if reason.contains("trapped")),
        "{err}"
    );
    assert!(db.dead_reason().is_some());
    db.close().unwrap();
    // Other backends are unaffected.
    let mut other = Backend::builder().open().unwrap();
    assert_eq!(scalar(&mut other, "SELECT 1"), "1");
}

#[test]
fn an_encoding_conversion_pglite_cannot_run_is_an_error_and_the_backend_lives_on() {
    // PGlite 0.5.16's conversion libraries import functions its main module does not export
    // (pg_utf8_islegal): the call fails the statement as Postgres' feature_not_supported.
    let mut db = Backend::builder().open().unwrap();
    query(&mut db, "SET client_encoding = 'LATIN1'");
    let out = db
        .simple_query("SELECT convert_to('caf\u{e9}', 'LATIN1')")
        .unwrap();
    let error = out.error.expect("the conversion fails");
    assert_eq!(error.code, "0A000", "{error}");
    assert!(error.message.contains("pg_utf8_islegal"), "{error}");
    // An error whose report itself needs the conversion: the error raised while reporting it is
    // reported instead, and the backend recovers, as Postgres' error handler does.
    let out = db
        .simple_query("DO $$ BEGIN RAISE EXCEPTION 'caf\u{e9}'; END $$")
        .unwrap();
    assert_eq!(out.error.expect("the DO block fails").code, "0A000");
    // The same session carries on, in ASCII and back in UTF-8.
    assert_eq!(scalar(&mut db, "SELECT 'still here'"), "still here");
    query(&mut db, "SET client_encoding = 'UTF8'");
    assert_eq!(scalar(&mut db, "SELECT 'caf\u{e9}'"), "caf\u{e9}");
    assert!(db.dead_reason().is_none());
}

#[test]
fn deep_recursion_is_an_error_not_a_crash() {
    let mut db = Backend::builder().open().unwrap();
    query(
        &mut db,
        "CREATE FUNCTION down(n int) RETURNS int LANGUAGE plpgsql AS $$ BEGIN RETURN down(n + 1); END $$",
    );
    // Postgres' own stack check (max_stack_depth) must fire before wasm's native stack runs out.
    let out = db.simple_query("SELECT down(0)").unwrap();
    assert_eq!(out.error.expect("recursion without end fails").code, "54001");
    assert_eq!(scalar(&mut db, "SELECT 1"), "1");
}

#[test]
fn a_recursion_deeper_than_wasms_stack_is_postgres_error_not_a_crash() {
    // Neither recursion takes addresses of locals, so Postgres' own measure of its stack (in
    // linear memory) hardly grows: wasm's stack is what runs out. Without the check of wasm's
    // stack both ended the backend with a trap.
    let mut db = Backend::builder().open().unwrap();
    query(&mut db, "CREATE TABLE kept(x int); INSERT INTO kept VALUES (1)");
    query(
        &mut db,
        "CREATE FUNCTION down(n int) RETURNS int LANGUAGE sql \
         AS 'SELECT CASE WHEN n = 0 THEN 0 ELSE down(n - 1) END'",
    );
    let nested_json = format!(
        "SELECT '{}{}'::json",
        "[".repeat(2_000_000),
        "]".repeat(2_000_000)
    );
    for sql in ["SELECT down(1000000)", nested_json.as_str()] {
        let error = db.simple_query(sql).unwrap().error.expect("too deep");
        assert_eq!(
            (error.code.as_str(), error.message.as_str()),
            ("54001", "stack depth limit exceeded"),
            "{sql:.40}"
        );
    }
    // An ERROR like any other: caught by an exception block, rolled back to a savepoint.
    let out = db
        .simple_query(
            "DO $$ BEGIN PERFORM down(1000000); \
             EXCEPTION WHEN statement_too_complex THEN RAISE NOTICE 'caught'; END $$",
        )
        .unwrap();
    assert!(out.error.is_none(), "{:?}", out.error);
    assert_eq!(out.notices[0].message, "caught");
    let out = db
        .simple_query("BEGIN; INSERT INTO kept VALUES (2); SAVEPOINT s; SELECT down(1000000)")
        .unwrap();
    assert_eq!(out.error.expect("too deep").code, "54001");
    query(&mut db, "ROLLBACK TO s; INSERT INTO kept VALUES (3); COMMIT");
    assert_eq!(
        scalar(&mut db, "SELECT array_agg(x ORDER BY x) FROM kept"),
        "{1,2,3}"
    );
    assert_eq!(scalar(&mut db, "SELECT down(1000)"), "0");
    assert!(db.dead_reason().is_none());
}

#[test]
fn two_backends_in_one_process_see_nothing_of_each_other() {
    let mut a = Backend::builder().open().unwrap();
    let mut b = Backend::builder().open().unwrap();
    query(
        &mut a,
        "CREATE TABLE only_in_a(x int); INSERT INTO only_in_a VALUES (1)",
    );
    let out = b.simple_query("SELECT * FROM only_in_a").unwrap();
    assert_eq!(out.error.unwrap().code, "42P01");
    query(&mut b, "SET work_mem = '7MB'");
    assert_eq!(scalar(&mut a, "SHOW work_mem"), "4MB");
    assert_eq!(scalar(&mut a, "SELECT count(*) FROM only_in_a"), "1");
}

#[test]
fn a_cancel_ends_the_running_statement_and_the_backend_carries_on() {
    let mut db = Backend::builder().open().unwrap();
    for sql in [
        "SELECT pg_sleep(30)",
        "SELECT count(*) FROM generate_series(1, 1000000000)",
    ] {
        let cancel = db.cancel_handle();
        let canceller = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(300));
            cancel.cancel();
        });
        let started = std::time::Instant::now();
        let error = db.simple_query(sql).unwrap().error.expect("cancelled");
        canceller.join().unwrap();
        assert_eq!(
            (error.code.as_str(), error.message.as_str()),
            ("57014", "canceling statement due to user request")
        );
        assert!(
            started.elapsed() < std::time::Duration::from_secs(20),
            "{sql} ran to its end"
        );
        assert_eq!(scalar(&mut db, "SELECT 1"), "1");
    }
}

#[test]
fn a_backend_runs_as_the_user_and_database_it_was_given() {
    let dir = tempfile::tempdir().unwrap();
    for _ in 0..2 {
        // Created on the first open, found on the second.
        let mut db = Backend::builder()
            .data_dir(dir.path())
            .user("app")
            .database("app_db")
            .open()
            .unwrap();
        let out = query(&mut db, "SELECT current_user, session_user, current_database()");
        assert_eq!(
            out.rows()[0],
            ["app", "app", "app_db"].map(|s| Some(s.to_owned())).to_vec()
        );
        query(&mut db, "CREATE TABLE IF NOT EXISTS mine(x int)");
        assert_eq!(
            scalar(
                &mut db,
                "SELECT tableowner FROM pg_tables WHERE tablename = 'mine'"
            ),
            "app"
        );
        db.close().unwrap();
    }
    let mut memory = Backend::builder().database("other").open().unwrap();
    assert_eq!(scalar(&mut memory, "SELECT current_database()"), "other");
    assert_eq!(scalar(&mut memory, "SELECT current_user"), "postgres");
}
