//! The TCP server: real clients sharing one backend, correct results.

use std::time::Duration;

use pglite_harness::{Backend, Server, ServerError};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_postgres::NoTls;

fn start() -> Server {
    Server::builder()
        .start(Backend::builder().open().unwrap())
        .unwrap()
}

async fn connect(server: &Server) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(&server.url(), NoTls).await.unwrap();
    tokio::spawn(connection);
    client
}

#[tokio::test]
async fn a_client_connects_by_url_and_queries() {
    let server = start();
    assert!(server.url().starts_with("postgresql://postgres@127.0.0.1:"));
    let client = connect(&server).await;
    let row = client
        .query_one("SELECT version(), current_user, current_database()", &[])
        .await
        .unwrap();
    assert!(row.get::<_, String>(0).starts_with("PostgreSQL 18.6"));
    assert_eq!(row.get::<_, String>(1), "postgres");
    assert_eq!(row.get::<_, String>(2), "postgres");
    let n: i32 = client
        .query_one("SELECT $1::int4 * 2", &[&21i32])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 42);
    drop(client);
    server.shutdown().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn four_clients_at_once_with_prepared_statements_get_their_own_results() {
    let server = start();
    connect(&server)
        .await
        .batch_execute("CREATE TABLE accounts(id int PRIMARY KEY, owner int, balance int)")
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for owner in 0..4 {
        let url = server.url();
        tasks.push(tokio::spawn(async move {
            let (mut client, connection) = tokio_postgres::connect(&url, NoTls).await.unwrap();
            tokio::spawn(connection);
            // Every tokio-postgres client names its statements s0, s1, ...: they must not collide.
            let insert = client
                .prepare("INSERT INTO accounts VALUES ($1, $2, $3)")
                .await
                .unwrap();
            let sum = client
                .prepare("SELECT sum(balance)::int4, count(*)::int4 FROM accounts WHERE owner = $1")
                .await
                .unwrap();
            for i in 0..25 {
                let tx = client.transaction().await.unwrap();
                tx.execute(&insert, &[&(owner * 1000 + i), &owner, &i])
                    .await
                    .unwrap();
                tx.commit().await.unwrap();
            }
            let row = client.query_one(&sum, &[&owner]).await.unwrap();
            (row.get::<_, i32>(0), row.get::<_, i32>(1))
        }));
    }
    for task in tasks {
        assert_eq!(task.await.unwrap(), ((0..25).sum(), 25));
    }
    drop(server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_transaction_is_not_seen_by_others_before_commit() {
    let server = start();
    let mut writer = connect(&server).await;
    let reader = connect(&server).await;
    writer.batch_execute("CREATE TABLE t(x int)").await.unwrap();
    let tx = writer.transaction().await.unwrap();
    tx.execute("INSERT INTO t VALUES (1)", &[]).await.unwrap();

    // The reader waits for its turn: it never runs inside the writer's transaction.
    let read = tokio::spawn(async move {
        reader
            .query_one("SELECT count(*) FROM t", &[])
            .await
            .unwrap()
            .get::<_, i64>(0)
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !read.is_finished(),
        "the reader ran inside another connection's transaction"
    );
    tx.commit().await.unwrap();
    assert_eq!(read.await.unwrap(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_client_dropped_mid_transaction_is_rolled_back() {
    let server = start();
    let setup = connect(&server).await;
    setup.batch_execute("CREATE TABLE t(x int)").await.unwrap();
    {
        let (client, connection) = tokio_postgres::connect(&server.url(), NoTls).await.unwrap();
        let task = tokio::spawn(connection);
        client
            .batch_execute("BEGIN; INSERT INTO t VALUES (1)")
            .await
            .unwrap();
        task.abort(); // the socket closes with the transaction open
        drop(client);
    }
    let count: i64 = setup
        .query_one("SELECT count(*) FROM t", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(count, 0);
    let status: i64 = setup
        .query_one("SELECT count(*) FROM pg_prepared_statements", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        status, 1,
        "only this query's own statement: the dropped client's are closed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_idle_transaction_is_ended_after_the_timeout_and_others_proceed() {
    let server = Server::builder()
        .idle_in_transaction_timeout(Duration::from_millis(300))
        .start(Backend::builder().open().unwrap())
        .unwrap();
    let idle = connect(&server).await;
    let other = connect(&server).await;
    other.batch_execute("CREATE TABLE t(x int)").await.unwrap();
    idle.batch_execute("BEGIN; INSERT INTO t VALUES (1)")
        .await
        .unwrap();
    // Waits behind the idle transaction, then runs once it has been ended.
    let count: i64 = other
        .query_one("SELECT count(*) FROM t", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(count, 0, "the idle transaction was rolled back");
    let err = idle.batch_execute("COMMIT").await.unwrap_err();
    assert!(
        err.is_closed() || err.code().is_some_and(|c| c.code() == "25P03"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn garbage_and_truncated_messages_do_not_disturb_other_clients() {
    let server = start();
    let good = connect(&server).await;

    let mut raw = tokio::net::TcpStream::connect(server.local_addr()).await.unwrap();
    let mut startup = bytes::BytesMut::new();
    postgres_protocol::message::frontend::startup_message([("user", "postgres")], &mut startup).unwrap();
    raw.write_all(&startup).await.unwrap();
    let mut reply = vec![0u8; 4096];
    let _ = raw.read(&mut reply).await.unwrap();
    // A message claiming 2 GiB, then garbage.
    raw.write_all(b"Q\x7f\xff\xff\xffgarbage").await.unwrap();
    let mut answer = Vec::new();
    raw.read_to_end(&mut answer).await.unwrap();
    let text = String::from_utf8_lossy(&answer);
    assert!(
        text.contains("08P01") && text.contains("invalid message length"),
        "{text}"
    );

    // A truncated message, then the client vanishes.
    let mut raw = tokio::net::TcpStream::connect(server.local_addr()).await.unwrap();
    raw.write_all(&startup).await.unwrap();
    let _ = raw.read(&mut reply).await.unwrap();
    raw.write_all(b"Q\x00\x00\x00\x20SELECT").await.unwrap();
    drop(raw);

    let n: i32 = good.query_one("SELECT 7", &[]).await.unwrap().get(0);
    assert_eq!(n, 7);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn copy_from_stdin_and_to_stdout_through_tokio_postgres() {
    use futures_util::{SinkExt, TryStreamExt};
    let server = start();
    let client = connect(&server).await;
    client
        .batch_execute("CREATE TABLE t(a int, b text)")
        .await
        .unwrap();
    let sink = client.copy_in("COPY t FROM STDIN").await.unwrap();
    futures_util::pin_mut!(sink);
    for chunk in 0..50 {
        let rows: String = (0..100)
            .map(|i| format!("{}\trow {}\n", chunk * 100 + i, i))
            .collect();
        sink.send(bytes::Bytes::from(rows)).await.unwrap();
    }
    assert_eq!(sink.finish().await.unwrap(), 5000);
    let out: Vec<bytes::Bytes> = client
        .copy_out("COPY (SELECT * FROM t WHERE a < 3 ORDER BY a) TO STDOUT")
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    assert_eq!(out.concat(), b"0\trow 0\n1\trow 1\n2\trow 2\n");
    let count: i64 = client
        .query_one("SELECT count(*) FROM t", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(count, 5000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_client_that_vanishes_mid_copy_leaves_nothing_behind() {
    let server = start();
    let client = connect(&server).await;
    client.batch_execute("CREATE TABLE t(a int)").await.unwrap();
    {
        let (copier, connection) = tokio_postgres::connect(&server.url(), NoTls).await.unwrap();
        let task = tokio::spawn(connection);
        let _sink = copy_two_rows_into_t(&copier).await;
        task.abort();
    }
    let count: i64 = client
        .query_one("SELECT count(*) FROM t", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(count, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_silent_in_the_middle_of_a_copy_is_timed_out_and_others_proceed() {
    let server = Server::builder()
        .idle_in_transaction_timeout(Duration::from_millis(300))
        .start(Backend::builder().open().unwrap())
        .unwrap();
    let other = connect(&server).await;
    other.batch_execute("CREATE TABLE t(a int)").await.unwrap();
    let copier = connect(&server).await;
    let mut sink = copy_two_rows_into_t(&copier).await;
    // The copier now says nothing more, neither CopyDone nor CopyFail; the other client gets its
    // turn once the COPY has waited out the timeout.
    let count: i64 = other
        .query_one("SELECT count(*) FROM t", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(count, 0, "the silent COPY was rolled back");
    use futures_util::SinkExt;
    assert!(sink.close().await.is_err(), "the COPY failed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_the_server_ends_a_silent_copy_at_once() {
    // With the default one-minute idle timeout, a stop used to wait it out.
    let server = start();
    let copier = connect(&server).await;
    copier.batch_execute("CREATE TABLE t(a int)").await.unwrap();
    let _sink = copy_two_rows_into_t(&copier).await;
    let stopped = tokio::task::spawn_blocking(move || server.stop());
    let mut backend = tokio::time::timeout(Duration::from_secs(30), stopped)
        .await
        .expect("the stop does not wait for the silent client")
        .unwrap()
        .unwrap();
    // The COPY (an extended-protocol batch, left without its Sync) was rolled back, and the
    // backend serves on.
    let out = backend.simple_query("SELECT count(*) FROM t").unwrap();
    assert_eq!(out.scalar(), Some("0"), "{out:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_gone_after_a_failed_batch_without_its_sync_leaves_the_session_usable() {
    let server = start();
    let mut gone = RawClient::connect(&server).await;
    // Parse of a bad statement and a Flush, no Sync: the backend now ignores all until a Sync.
    let mut batch = bytes::BytesMut::new();
    postgres_protocol::message::frontend::parse("", "SELECT * FROM no_such_table", [], &mut batch).unwrap();
    postgres_protocol::message::frontend::flush(&mut batch);
    gone.0.write_all(&batch).await.unwrap();
    let mut tag = [0u8; 1];
    gone.0.read_exact(&mut tag).await.unwrap();
    assert_eq!(tag[0], b'E', "the Parse fails");
    drop(gone);

    let next = connect(&server).await;
    let rows = tokio::time::timeout(Duration::from_secs(30), next.simple_query("SELECT 41 + 1"))
        .await
        .expect("the next client is answered")
        .unwrap();
    let value = rows.iter().find_map(|m| match m {
        tokio_postgres::SimpleQueryMessage::Row(row) => row.get(0).map(str::to_owned),
        _ => None,
    });
    assert_eq!(value.as_deref(), Some("42"));
}

/// Starts `COPY t FROM STDIN` and sends two rows of data, but not CopyDone: the COPY stays open.
async fn copy_two_rows_into_t(
    client: &tokio_postgres::Client,
) -> std::pin::Pin<Box<tokio_postgres::CopyInSink<bytes::Bytes>>> {
    use futures_util::SinkExt;
    let mut sink = Box::pin(client.copy_in("COPY t FROM STDIN").await.unwrap());
    sink.send(bytes::Bytes::from_static(b"1\n2\n")).await.unwrap();
    sink.flush().await.unwrap();
    sink
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discard_all_and_deallocate_all_act_on_the_clients_own_statements_only() {
    let server = start();
    let keeper = connect(&server).await;
    let kept = keeper.prepare("SELECT $1::int4 + 1").await.unwrap();
    for command in ["DISCARD ALL", "deallocate all;"] {
        let discarder = connect(&server).await;
        let own = discarder.prepare("SELECT 2").await.unwrap();
        discarder.batch_execute("SET work_mem = '7MB'").await.unwrap();
        discarder.batch_execute(command).await.unwrap();
        // Its own statement is gone, as on a real server ...
        let err = discarder.query(&own, &[]).await.unwrap_err();
        assert_eq!(err.code().map(|c| c.code()), Some("26000"), "{command}: {err}");
        // ... another client's is not.
        let n: i32 = keeper.query_one(&kept, &[&41i32]).await.unwrap().get(0);
        assert_eq!(n, 42, "after another client's {command}");
        if command == "DISCARD ALL" {
            let work_mem: String = discarder.query_one("SHOW work_mem", &[]).await.unwrap().get(0);
            assert_eq!(work_mem, "4MB", "DISCARD ALL resets its settings");
        }
    }
    // Inside a transaction block DISCARD ALL fails as it does in Postgres.
    let client = connect(&server).await;
    client.batch_execute("BEGIN").await.unwrap();
    let err = client.batch_execute("DISCARD ALL").await.unwrap_err();
    assert_eq!(err.code().map(|c| c.code()), Some("25001"), "{err}");
    client.batch_execute("ROLLBACK").await.unwrap();
}

#[tokio::test]
async fn a_first_statement_reports_only_the_settings_it_changed() {
    // As Postgres: a SET's reply carries the ParameterStatus of that setting, and no leftovers of
    // the server's own start.
    let server = start();
    let mut client = RawClient::connect(&server).await;
    let reply = client
        .send(|m| postgres_protocol::message::frontend::query("SET application_name = 'first'", m).unwrap())
        .await;
    let reported: Vec<String> = reply
        .iter()
        .filter(|(tag, _)| *tag == b'S')
        .map(|(_, body)| String::from_utf8_lossy(body).replace('\0', " ").trim().to_owned())
        .collect();
    assert_eq!(reported, ["application_name first"]);
}

/// The SQLSTATE `sql` fails with.
async fn error_code(client: &tokio_postgres::Client, sql: &str) -> String {
    let err = client.batch_execute(sql).await.unwrap_err();
    err.code()
        .map(|c| c.code().to_owned())
        .unwrap_or_else(|| panic!("{sql}: {err}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recursion_too_deep_fails_that_statement_and_others_carry_on() {
    let server = start();
    let deep = connect(&server).await;
    let other = connect(&server).await;
    other
        .batch_execute("CREATE TABLE t(x int); INSERT INTO t VALUES (1)")
        .await
        .unwrap();
    deep.batch_execute(
        "CREATE FUNCTION down(n int) RETURNS int LANGUAGE sql \
         AS 'SELECT CASE WHEN n = 0 THEN 0 ELSE down(n - 1) END'",
    )
    .await
    .unwrap();
    assert_eq!(error_code(&deep, "SELECT down(1000000)").await, "54001");
    let n: i64 = other
        .query_one("SELECT count(*) FROM t", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 1);
    let n: i32 = deep.query_one("SELECT down(10)", &[]).await.unwrap().get(0);
    assert_eq!(n, 0);
    drop((deep, other));
    server.shutdown().unwrap();
}

/// Leaves, and waits until the server has seen it go (its clean-up runs after the socket closes).
async fn leave(server: &Server, client: tokio_postgres::Client) {
    let before = server.metrics().connections_open;
    drop(client);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while server.metrics().connections_open >= before {
        assert!(
            std::time::Instant::now() < deadline,
            "the server did not see the client go"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_next_client_after_the_last_one_left_gets_a_fresh_session() {
    let server = start();
    let first = connect(&server).await;
    first
        .batch_execute(
            "CREATE TABLE kept(x int); CREATE TEMP TABLE scratch(x int); \
             PREPARE sql_statement AS SELECT 1; SELECT pg_advisory_lock(7); \
             BEGIN; DECLARE held CURSOR WITH HOLD FOR SELECT 1; COMMIT;",
        )
        .await
        .unwrap();
    leave(&server, first).await;

    // As if each had a server of its own: what the session held for the first is gone ...
    let next = connect(&server).await;
    assert_eq!(error_code(&next, "SELECT * FROM scratch").await, "42P01");
    assert_eq!(error_code(&next, "EXECUTE sql_statement").await, "26000");
    assert_eq!(error_code(&next, "FETCH held").await, "34000");
    let locks: i64 = next
        .query_one("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(locks, 0, "advisory locks are released");
    // ... and what it committed stays.
    next.batch_execute("SELECT * FROM kept").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn session_wide_state_lives_while_another_client_is_connected() {
    // The documented limit of one shared session: temporary tables and SQL-level prepared
    // statements belong to it, not to the client that made them, until the last client leaves.
    let server = start();
    let stays = connect(&server).await;
    let maker = connect(&server).await;
    maker
        .batch_execute("CREATE TEMP TABLE scratch(x int); PREPARE sql_statement AS SELECT 1")
        .await
        .unwrap();
    leave(&server, maker).await;
    stays
        .batch_execute("SELECT * FROM scratch; EXECUTE sql_statement")
        .await
        .unwrap();
    // DEALLOCATE ALL from one of several clients leaves SQL-level statements alone; from the
    // only client it drops them, as on a server of its own.
    let other = connect(&server).await;
    stays.batch_execute("DEALLOCATE ALL").await.unwrap();
    stays.batch_execute("EXECUTE sql_statement").await.unwrap();
    leave(&server, other).await;
    stays.batch_execute("DEALLOCATE ALL").await.unwrap();
    assert_eq!(error_code(&stays, "EXECUTE sql_statement").await, "26000");
}

/// A client speaking the protocol itself: what it sends, and the messages it reads back up to
/// ReadyForQuery, as (type, body) pairs.
struct RawClient(tokio::net::TcpStream);

impl RawClient {
    async fn connect(server: &Server) -> RawClient {
        let mut client = RawClient(tokio::net::TcpStream::connect(server.local_addr()).await.unwrap());
        let mut startup = bytes::BytesMut::new();
        postgres_protocol::message::frontend::startup_message([("user", "postgres")], &mut startup).unwrap();
        client.0.write_all(&startup).await.unwrap();
        client.until_ready().await;
        client
    }

    /// Sends what `build` writes, then Sync unless it is a simple Query.
    async fn send(&mut self, build: impl FnOnce(&mut bytes::BytesMut)) -> Vec<(u8, Vec<u8>)> {
        let mut out = bytes::BytesMut::new();
        build(&mut out);
        if out.first() != Some(&b'Q') {
            postgres_protocol::message::frontend::sync(&mut out);
        }
        self.0.write_all(&out).await.unwrap();
        self.until_ready().await
    }

    async fn until_ready(&mut self) -> Vec<(u8, Vec<u8>)> {
        let mut messages = Vec::new();
        loop {
            let tag = self.0.read_u8().await.unwrap();
            let len = self.0.read_u32().await.unwrap() as usize;
            let mut body = vec![0u8; len - 4];
            self.0.read_exact(&mut body).await.unwrap();
            messages.push((tag, body));
            if tag == b'Z' {
                return messages;
            }
        }
    }
}

/// The text of the first column of the first DataRow, or the SQLSTATE of an ErrorResponse.
fn first_value(reply: &[(u8, Vec<u8>)]) -> String {
    for (tag, body) in reply {
        if *tag == b'D' {
            let len = i32::from_be_bytes(body[2..6].try_into().unwrap()) as usize;
            return String::from_utf8_lossy(&body[6..6 + len]).into_owned();
        }
        if *tag == b'E' {
            let code = body
                .split(|&b| b == 0)
                .find(|f| f.first() == Some(&b'C'))
                .unwrap();
            return format!("error {}", String::from_utf8_lossy(&code[1..]));
        }
    }
    panic!("no row and no error in {reply:?}")
}

#[tokio::test]
async fn each_client_has_its_own_unnamed_statement() {
    use postgres_protocol::message::frontend;
    let server = start();
    let bind_and_run = |m: &mut bytes::BytesMut| {
        frontend::bind(
            "",
            "",
            [],
            std::iter::empty::<&[u8]>(),
            |_: &[u8], _| Ok(postgres_protocol::IsNull::No),
            [],
            m,
        )
        .map_err(|_| ())
        .unwrap();
        frontend::execute("", 0, m).unwrap();
    };
    let mut a = RawClient::connect(&server).await;
    let mut b = RawClient::connect(&server).await;
    let mut c = RawClient::connect(&server).await;
    a.send(|m| frontend::parse("", "SELECT 'a'", [], m).unwrap())
        .await;
    b.send(|m| frontend::parse("", "SELECT 'b'", [], m).unwrap())
        .await;
    // Each binds the statement it parsed, whoever parsed last.
    assert_eq!(first_value(&a.send(bind_and_run).await), "a");
    assert_eq!(first_value(&b.send(bind_and_run).await), "b");
    // Also after a simple query (which drops the session's unnamed statement) by someone else.
    c.send(|m| frontend::query("SELECT 1", m).unwrap()).await;
    assert_eq!(first_value(&a.send(bind_and_run).await), "a");
    // One that never parsed one has none, as on a server of its own.
    assert_eq!(first_value(&c.send(bind_and_run).await), "error 26000");
    // Its own simple query drops a client's unnamed statement, as in Postgres.
    b.send(|m| frontend::query("SELECT 2", m).unwrap()).await;
    assert_eq!(first_value(&b.send(bind_and_run).await), "error 26000");
    assert_eq!(first_value(&a.send(bind_and_run).await), "a");
}

#[tokio::test]
async fn unknown_database_and_role_get_postgres_errors() {
    let server = start();
    let url = format!("postgresql://postgres@{}/nope", server.local_addr());
    let err = tokio_postgres::connect(&url, NoTls).await.err().expect("refused");
    assert_eq!(err.code().map(|c| c.code()), Some("3D000"), "{err}");
    let url = format!("postgresql://nobody@{}/postgres", server.local_addr());
    let err = tokio_postgres::connect(&url, NoTls).await.err().expect("refused");
    assert_eq!(err.code().map(|c| c.code()), Some("28000"), "{err}");
}

#[test]
fn a_port_in_use_is_a_clear_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let err = Server::builder()
        .port(port)
        .start(Backend::builder().open().unwrap())
        .unwrap_err();
    assert!(
        matches!(&err, ServerError::Bind { address, .. } if address.ends_with(&format!(":{port}"))),
        "{err}"
    );
    assert!(err.to_string().contains(&port.to_string()), "{err}");
}

#[test]
fn ssl_is_declined_and_the_client_continues_in_the_clear() {
    let server = start();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let url = format!("{}?sslmode=prefer", server.url());
        let (client, connection) = tokio_postgres::connect(&url, NoTls).await.unwrap();
        tokio::spawn(connection);
        let one: i32 = client.query_one("SELECT 1", &[]).await.unwrap().get(0);
        assert_eq!(one, 1);
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cancel_request_ends_the_running_statement_of_that_connection() {
    let server = start();
    let client = connect(&server).await;
    let token = client.cancel_token();
    let canceller = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        token.cancel_query(NoTls).await.unwrap();
    });
    let err = client.query_one("SELECT pg_sleep(30)", &[]).await.unwrap_err();
    canceller.await.unwrap();
    assert_eq!(err.code().map(|c| c.code()), Some("57014"), "{err}");
    let n: i32 = client.query_one("SELECT 5", &[]).await.unwrap().get(0);
    assert_eq!(n, 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn password_authentication_with_scram() {
    let server = Server::builder()
        .password("s3cr&t")
        .start(Backend::builder().open().unwrap())
        .unwrap();
    assert!(server.url().contains(":s3cr%26t@"), "{}", server.url());
    let client = connect(&server).await;
    let n: i32 = client.query_one("SELECT 1", &[]).await.unwrap().get(0);
    assert_eq!(n, 1);

    let wrong = format!("postgresql://postgres:nope@{}/postgres", server.local_addr());
    let err = tokio_postgres::connect(&wrong, NoTls)
        .await
        .err()
        .expect("refused");
    assert_eq!(err.code().map(|c| c.code()), Some("28P01"), "{err}");
    let missing = format!("postgresql://postgres@{}/postgres", server.local_addr());
    assert!(tokio_postgres::connect(&missing, NoTls).await.is_err());

    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .connect(&server.url())
        .await
        .unwrap();
    let one: i32 = sqlx::query_scalar("SELECT 1").fetch_one(&pool).await.unwrap();
    assert_eq!(one, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_sqlx_pool_of_five_serves_fifty_concurrent_transactions() {
    let server = start();
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(5)
        .connect(&server.url())
        .await
        .unwrap();
    sqlx::query("CREATE TABLE ledger(task int, step int, amount int, PRIMARY KEY (task, step))")
        .execute(&pool)
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for task in 0..50 {
        let pool = pool.clone();
        tasks.push(tokio::spawn(async move {
            let mut tx = pool.begin().await.unwrap();
            for step in 0..10 {
                sqlx::query("INSERT INTO ledger VALUES ($1, $2, $3)")
                    .bind(task)
                    .bind(step)
                    .bind(task * step)
                    .execute(&mut *tx)
                    .await
                    .unwrap();
            }
            let (count, sum): (i64, i64) =
                sqlx::query_as("SELECT count(*), sum(amount)::int8 FROM ledger WHERE task = $1")
                    .bind(task)
                    .fetch_one(&mut *tx)
                    .await
                    .unwrap();
            tx.commit().await.unwrap();
            (task, count, sum)
        }));
    }
    for task in tasks {
        let (task, count, sum) = task.await.unwrap();
        assert_eq!((count, sum), (10, (task * 45) as i64), "task {task}");
    }
    let total: i64 = sqlx::query_scalar("SELECT count(*) FROM ledger")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(total, 500);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn listen_on_one_connection_and_notify_from_another() {
    use futures_util::StreamExt;
    let server = start();
    let (listener, mut connection) = tokio_postgres::connect(&server.url(), NoTls).await.unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(Ok(message)) = messages.next().await {
            if let tokio_postgres::AsyncMessage::Notification(n) = message {
                let _ = tx.send((n.channel().to_owned(), n.payload().to_owned()));
            }
        }
    });
    listener.batch_execute("LISTEN jobs").await.unwrap();
    let bystander = connect(&server).await;
    let notifier = connect(&server).await;
    notifier
        .batch_execute("NOTIFY jobs, 'first'; NOTIFY other, 'not for anyone'")
        .await
        .unwrap();
    notifier
        .query("SELECT pg_notify('jobs', 'second')", &[])
        .await
        .unwrap();
    let first = tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .unwrap()
        .unwrap();
    let second = tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first, ("jobs".to_owned(), "first".to_owned()));
    assert_eq!(second, ("jobs".to_owned(), "second".to_owned()));
    // The bystander and the notifier, not listening, got nothing; after UNLISTEN, neither does the listener.
    assert_eq!(
        bystander
            .query_one("SELECT 1", &[])
            .await
            .unwrap()
            .get::<_, i32>(0),
        1
    );
    // Another client's DISCARD ALL (UNLISTEN * among other things) ends its own LISTENs only.
    bystander.batch_execute("DISCARD ALL").await.unwrap();
    notifier
        .batch_execute("NOTIFY jobs, 'after discard'")
        .await
        .unwrap();
    let after = tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(after, ("jobs".to_owned(), "after discard".to_owned()));
    listener.batch_execute("UNLISTEN jobs").await.unwrap();
    notifier.batch_execute("NOTIFY jobs, 'third'").await.unwrap();
    listener.batch_execute("SELECT 1").await.unwrap();
    assert!(
        tokio::time::timeout(Duration::from_millis(300), rx.recv())
            .await
            .is_err(),
        "delivered after UNLISTEN"
    );
}

async fn show(client: &tokio_postgres::Client) -> String {
    client.query_one("SHOW work_mem", &[]).await.unwrap().get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn each_connection_keeps_its_own_set_values() {
    let server = start();
    let a = connect(&server).await;
    let b = connect(&server).await;
    a.batch_execute("SET work_mem = '7MB'; SET application_name = 'client a'")
        .await
        .unwrap();
    assert_eq!(show(&b).await, "4MB", "b does not see a's SET");
    assert_eq!(show(&a).await, "7MB", "a's SET is back in force for a");
    let name: String = a
        .query_one("SELECT current_setting('application_name')", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(name, "client a");
    b.batch_execute("SET work_mem = '9MB'").await.unwrap();
    assert_eq!(show(&a).await, "7MB");
    assert_eq!(show(&b).await, "9MB");
    a.batch_execute("RESET work_mem").await.unwrap();
    assert_eq!(show(&a).await, "4MB");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_conversion_pglite_cannot_run_fails_that_statement_only() {
    // PGlite's LATIN1 conversion needs a function its main module does not export: the statement
    // fails with feature_not_supported, and neither the instance nor the connection is lost.
    let server = start();
    let a = connect(&server).await;
    let b = connect(&server).await;
    a.batch_execute("SET client_encoding = 'LATIN1'").await.unwrap();
    let error = a
        .simple_query("SELECT convert_to('caf\u{e9}', 'LATIN1')")
        .await
        .unwrap_err();
    let db_error = error.as_db_error().expect("a Postgres error");
    assert_eq!(db_error.code().code(), "0A000", "{db_error}");
    assert!(db_error.message().contains("pg_utf8_islegal"), "{db_error}");
    let one: i32 = b.query_one("SELECT 1", &[]).await.unwrap().get(0);
    assert_eq!(one, 1, "another client is served");
    a.batch_execute("SET client_encoding = 'UTF8'").await.unwrap();
    let text: String = a.query_one("SELECT 'caf\u{e9}'", &[]).await.unwrap().get(0);
    assert_eq!(text, "caf\u{e9}", "the client that failed carries on");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn settings_changed_by_set_config_hold_for_that_connection_only() {
    let server = start();
    let a = connect(&server).await;
    let b = connect(&server).await;
    // Called in a query ...
    a.batch_execute("SELECT set_config('work_mem', '7MB', false)")
        .await
        .unwrap();
    assert_eq!(show(&b).await, "4MB");
    assert_eq!(show(&a).await, "7MB");
    // ... through a prepared statement, executed again later ...
    let set = a
        .prepare("SELECT set_config('work_mem', $1, false)")
        .await
        .unwrap();
    for value in ["8MB", "9MB"] {
        a.query_one(&set, &[&value]).await.unwrap();
        assert_eq!(show(&b).await, "4MB", "b after a set {value}");
        assert_eq!(show(&a).await, value);
    }
    // ... and inside a function, for a setting the server is told of (search_path).
    a.batch_execute(
        "CREATE SCHEMA app; \
         CREATE FUNCTION use_app() RETURNS void LANGUAGE plpgsql \
           AS $$ BEGIN PERFORM set_config('search_path', 'app, public', false); END $$; \
         SELECT use_app()",
    )
    .await
    .unwrap();
    let path = |client| async move {
        let row = tokio_postgres::Client::query_one(client, "SHOW search_path", &[])
            .await
            .unwrap();
        row.get::<_, String>(0)
    };
    assert_eq!(path(&b).await, "public", "PGlite's default");
    assert_eq!(path(&a).await, "app, public");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_list_setting_comes_back_as_the_list_it_was() {
    let server = start();
    let a = connect(&server).await;
    a.batch_execute("CREATE SCHEMA app; CREATE TABLE app.items(x int); INSERT INTO app.items VALUES (1)")
        .await
        .unwrap();
    a.batch_execute("SET search_path = public, app").await.unwrap();
    // Another connection takes the backend, and with it the session's settings, in between.
    let b = connect(&server).await;
    b.batch_execute("SET search_path = public").await.unwrap();
    let path: String = a.query_one("SHOW search_path", &[]).await.unwrap().get(0);
    assert_eq!(path, "public, app", "two schemas, not one named \"public, app\"");
    let n: i32 = a.query_one("SELECT x FROM items", &[]).await.unwrap().get(0);
    assert_eq!(n, 1);
    // The same for a list given at startup.
    let mut config: tokio_postgres::Config = server.url().parse().unwrap();
    config.options("-c search_path=app,public");
    let (c, connection) = config.connect(NoTls).await.unwrap();
    tokio::spawn(connection);
    let n: i32 = c.query_one("SELECT x FROM items", &[]).await.unwrap().get(0);
    assert_eq!(n, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn startup_options_are_in_force_for_that_connection() {
    use sqlx::ConnectOptions;
    let server = start();
    // sqlx sends these as the startup packet's `options` (`-c search_path=app ...`).
    let options: sqlx::postgres::PgConnectOptions = server.url().parse().unwrap();
    let mut app = options
        .options([("search_path", "app"), ("work_mem", "7MB")])
        .connect()
        .await
        .unwrap();
    let other = connect(&server).await;
    let (search_path, work_mem): (String, String) =
        sqlx::query_as("SELECT current_setting('search_path'), current_setting('work_mem')")
            .fetch_one(&mut app)
            .await
            .unwrap();
    assert_eq!((search_path.as_str(), work_mem.as_str()), ("app", "7MB"));
    assert_eq!(show(&other).await, "4MB", "another connection keeps its own");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_startup_setting_postgres_refuses_closes_that_connection_only() {
    let server = start();
    let other = connect(&server).await;
    for (options, code) in [
        ("-c work_mem=lots", "22023"),
        ("-c no_such_setting=1", "42704"),
        ("-x", "42601"),
    ] {
        let mut config: tokio_postgres::Config = server.url().parse().unwrap();
        config.options(options);
        // As Postgres, at connection start (the backend is free).
        let error = config.connect(NoTls).await.map(drop).unwrap_err();
        let db_error = error
            .as_db_error()
            .unwrap_or_else(|| panic!("{options}: {error}"));
        assert_eq!(db_error.severity(), "FATAL", "{options}: {db_error}");
        assert_eq!(db_error.code().code(), code, "{options}: {db_error}");
        assert_eq!(show(&other).await, "4MB", "the others are served");
    }
    // While another connection holds the backend in a transaction, the check waits for the
    // connection's first statement rather than holding up its start.
    other.batch_execute("BEGIN").await.unwrap();
    let mut config: tokio_postgres::Config = server.url().parse().unwrap();
    config.options("-c work_mem=lots");
    let (client, connection) = config.connect(NoTls).await.unwrap();
    tokio::spawn(connection);
    let first = tokio::spawn(async move { client.simple_query("SELECT 1").await.map(drop) });
    other.batch_execute("COMMIT").await.unwrap();
    let error = first.await.unwrap().unwrap_err();
    let db_error = error.as_db_error().expect("a Postgres error");
    assert_eq!((db_error.severity(), db_error.code().code()), ("FATAL", "22023"));
}

#[tokio::test]
async fn a_non_utf8_client_encoding_is_refused_at_startup() {
    let server = start();
    // tokio-postgres always sends client_encoding=UTF8: speak the protocol by hand.
    let mut raw = tokio::net::TcpStream::connect(server.local_addr()).await.unwrap();
    let mut startup = bytes::BytesMut::new();
    postgres_protocol::message::frontend::startup_message(
        [("user", "postgres"), ("client_encoding", "LATIN1")],
        &mut startup,
    )
    .unwrap();
    raw.write_all(&startup).await.unwrap();
    let mut answer = Vec::new();
    raw.read_to_end(&mut answer).await.unwrap();
    let text = String::from_utf8_lossy(&answer);
    assert!(text.contains("22023") && text.contains("LATIN1"), "{text}");
    // The server is fine.
    let client = connect(&server).await;
    assert_eq!(
        client.query_one("SELECT 2", &[]).await.unwrap().get::<_, i32>(0),
        2
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn clients_get_the_instances_user_and_database() {
    let backend = Backend::builder().user("app").database("app").open().unwrap();
    let server = Server::builder().password("pw").start(backend).unwrap();
    assert_eq!(
        server.url(),
        format!("postgresql://app:pw@{}/app", server.local_addr())
    );
    let client = connect(&server).await;
    let row = client
        .query_one("SELECT current_user, current_database()", &[])
        .await
        .unwrap();
    assert_eq!(
        (row.get::<_, String>(0), row.get::<_, String>(1)),
        ("app".to_owned(), "app".to_owned())
    );
    let url = format!("postgresql://postgres:pw@{}/app", server.local_addr());
    let err = tokio_postgres::connect(&url, NoTls).await.err().expect("refused");
    assert_eq!(err.code().map(|c| c.code()), Some("28000"), "{err}");

    // What gives a real session back to its login role gives this one back to `app`.
    for reset in [
        "DISCARD ALL",
        "RESET SESSION AUTHORIZATION",
        "SET SESSION AUTHORIZATION DEFAULT",
    ] {
        client.batch_execute(reset).await.unwrap();
        let user: String = client.query_one("SELECT current_user", &[]).await.unwrap().get(0);
        assert_eq!(user, "app", "after {reset}");
    }
}

/// `session_user` and `current_user` as the client sees them.
async fn identity(client: &tokio_postgres::Client) -> (String, String) {
    let row = client
        .query_one("SELECT session_user::text, current_user::text", &[])
        .await
        .unwrap();
    (row.get(0), row.get(1))
}

fn pair(session: &str, current: &str) -> (String, String) {
    (session.to_owned(), current.to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn set_session_authorization_and_set_role_hold_for_that_connection_only() {
    let server = start();
    let (a, b) = (connect(&server).await, connect(&server).await);
    a.batch_execute("CREATE ROLE bob; CREATE ROLE carol; GRANT carol TO bob")
        .await
        .unwrap();

    a.batch_execute("SET SESSION AUTHORIZATION bob").await.unwrap();
    assert_eq!(identity(&b).await, pair("postgres", "postgres"), "b is not bob");
    assert_eq!(identity(&a).await, pair("bob", "bob"), "a is bob again");

    a.batch_execute("SET ROLE carol").await.unwrap();
    assert_eq!(identity(&b).await, pair("postgres", "postgres"));
    assert_eq!(identity(&a).await, pair("bob", "carol"));
    // What bob may not do, b may: it is still the superuser.
    b.batch_execute("CREATE TABLE made_by_b(x int)").await.unwrap();
    let err = a.batch_execute("DROP TABLE made_by_b").await.unwrap_err();
    assert_eq!(err.code().map(|c| c.code()), Some("42501"), "{err}");

    a.batch_execute("RESET ROLE").await.unwrap();
    assert_eq!(identity(&b).await, pair("postgres", "postgres"));
    assert_eq!(identity(&a).await, pair("bob", "bob"));

    // A connection that leaves as bob leaves no bob behind.
    let c = connect(&server).await;
    c.batch_execute("SET SESSION AUTHORIZATION carol").await.unwrap();
    drop(c);
    let d = connect(&server).await;
    assert_eq!(identity(&d).await, pair("postgres", "postgres"));
    assert_eq!(identity(&a).await, pair("bob", "bob"));
    a.batch_execute("RESET SESSION AUTHORIZATION").await.unwrap();
    assert_eq!(identity(&a).await, pair("postgres", "postgres"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_instance_users_connections_go_back_to_it_after_another_connections_role() {
    let backend = Backend::builder().user("app").open().unwrap();
    let server = Server::builder().start(backend).unwrap();
    let (a, b) = (connect(&server).await, connect(&server).await);
    // `app` is the instance's superuser; its connections start and stay as `app`.
    a.batch_execute("CREATE ROLE reader; SET ROLE reader")
        .await
        .unwrap();
    assert_eq!(identity(&b).await, pair("app", "app"));
    assert_eq!(identity(&a).await, pair("app", "reader"));
    b.batch_execute("SET SESSION AUTHORIZATION reader").await.unwrap();
    assert_eq!(identity(&a).await, pair("app", "reader"));
    assert_eq!(identity(&b).await, pair("reader", "reader"));
    b.batch_execute("SET SESSION AUTHORIZATION DEFAULT")
        .await
        .unwrap();
    assert_eq!(identity(&b).await, pair("app", "app"));
}
