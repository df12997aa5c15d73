//! The `pglite-harness serve` command, run as a child process: queried with psql (PostgreSQL
//! 18.6, from scripts/native-postgres), stopped with SIGTERM, its data intact on the next start.

mod support;

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use support::client_bin_dir;

/// `psql URL -c SQL`, tuples only; fails the test on an error.
fn psql(url: &str, sql: &str) -> String {
    let output = Command::new(client_bin_dir().join("psql"))
        .args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", url, "-c", sql])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    assert!(
        output.status.success(),
        "psql {sql}: {text}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    text
}

/// A running `pglite-harness serve`, with the lines it printed up to its instruction line.
struct Serve {
    child: Child,
    stdout: BufReader<ChildStdout>,
    printed: Vec<String>,
}

impl Serve {
    fn start(args: &[&str], dir: &Path) -> Serve {
        let mut child = Command::new(env!("CARGO_BIN_EXE_pglite-harness"))
            .arg("serve")
            .args(args)
            .current_dir(dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let mut serve = Serve {
            child,
            stdout,
            printed: Vec::new(),
        };
        loop {
            let mut line = String::new();
            if serve.stdout.read_line(&mut line).unwrap() == 0 {
                let mut stderr = String::new();
                let mut pipe = serve.child.stderr.take().unwrap();
                pipe.read_to_string(&mut stderr).unwrap();
                panic!("serve ended early: {:?}\n{stderr}", serve.printed);
            }
            let line = line.trim_end().to_owned();
            let done = line.starts_with("Ctrl-C");
            serve.printed.push(line);
            if done {
                return serve;
            }
        }
    }

    /// The URL of instance `name`, from the printed table.
    fn url(&self, name: &str) -> String {
        self.printed
            .iter()
            .find_map(|l| {
                let mut words = l.split_whitespace();
                (words.next() == Some(name)).then(|| words.next().unwrap().to_owned())
            })
            .unwrap_or_else(|| panic!("no {name} in {:?}", self.printed))
    }

    /// Sends SIGTERM and waits for a clean exit; returns what it printed after the signal.
    fn terminate(mut self) -> String {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let deadline = Instant::now() + Duration::from_secs(30);
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            assert!(Instant::now() < deadline, "serve did not stop after SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        };
        let mut rest = String::new();
        self.stdout.read_to_string(&mut rest).unwrap();
        assert!(status.success(), "serve exited with {status}: {rest}");
        rest
    }
}

#[test]
fn serve_with_a_config_file_is_queried_with_psql_and_keeps_its_data_across_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("pglite.toml"),
        "[instances.default]\nport = 0\n\n[instances.app]\nport = 0\ndata_dir = \"./data/app\"\nusername = \"app\"\ndatabase = \"app\"\n",
    )
    .unwrap();
    let serve = Serve::start(&["--config", "--admin", "127.0.0.1:0"], dir.path());
    assert_eq!(
        serve.printed[0].split_whitespace().collect::<Vec<_>>(),
        ["NAME", "URL", "DATA", "DIR"]
    );
    let app = serve.url("app");
    assert!(app.starts_with("postgresql://app@127.0.0.1:"), "{app}");
    assert!(
        serve
            .printed
            .iter()
            .any(|l| l.ends_with(&format!("{}", dir.path().join("./data/app").display()))),
        "{:?}",
        serve.printed
    );
    psql(
        &app,
        "CREATE TABLE notes(id int PRIMARY KEY, body text); INSERT INTO notes SELECT g, 'n' || g FROM generate_series(1, 300) g",
    );
    assert_eq!(
        psql(
            &serve.url("default"),
            "SELECT count(*) FROM pg_tables WHERE tablename = 'notes'"
        ),
        "0"
    );

    // The admin endpoint answers for both.
    let admin = serve
        .printed
        .iter()
        .find_map(|l| l.strip_prefix("admin: http://"))
        .and_then(|rest| rest.split('/').next())
        .unwrap()
        .to_owned();
    let metrics = http_get(&admin, "/metrics");
    assert!(
        metrics.contains("pglite_queries_total{instance=\"app\"} 1"),
        "{metrics}"
    );
    assert!(http_get(&admin, "/health").starts_with("HTTP/1.1 200"));

    let after = serve.terminate();
    assert!(after.contains("stopped"), "{after}");
    assert!(
        !dir.path().join("data/app/postmaster.pid").exists(),
        "a clean shutdown"
    );

    let serve = Serve::start(&["--config", "pglite.toml"], dir.path());
    assert_eq!(
        psql(&serve.url("app"), "SELECT count(*), max(body) FROM notes"),
        "300|n99"
    );
    serve.terminate();
}

#[test]
fn serve_without_arguments_takes_the_next_free_port_when_5432_is_taken() {
    // Hold 5432 if it is free; if another program holds it, it is taken all the same.
    let _held = std::net::TcpListener::bind("127.0.0.1:5432");
    let dir = tempfile::tempdir().unwrap();
    let serve = Serve::start(&[], dir.path());
    let said = serve
        .printed
        .iter()
        .find(|l| l.starts_with("port 5432 is in use; serving on "));
    let port = said
        .unwrap_or_else(|| panic!("{:?}", serve.printed))
        .rsplit(' ')
        .next()
        .unwrap()
        .to_owned();
    let url = serve.url("default");
    assert_eq!(url, format!("postgresql://postgres@127.0.0.1:{port}/postgres"));
    assert!(serve.printed.iter().any(|l| l.ends_with("memory://")));
    assert_eq!(psql(&url, "SELECT 6 * 7"), "42");
    serve.terminate();
}

#[test]
fn serve_with_a_data_dir_and_port_runs_one_persistent_instance() {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let serve = Serve::start(&["--data-dir", "db", "--port", &port.to_string()], dir.path());
    let url = serve.url("default");
    assert_eq!(url, format!("postgresql://postgres@127.0.0.1:{port}/postgres"));
    psql(&url, "CREATE TABLE kept(x int); INSERT INTO kept VALUES (7)");
    serve.terminate();
    let serve = Serve::start(&["--data-dir", "file://db", "--port", "0"], dir.path());
    assert_eq!(psql(&serve.url("default"), "SELECT x FROM kept"), "7");
    serve.terminate();
}

#[test]
fn a_bad_config_file_is_refused_before_anything_starts() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("pglite.toml"),
        "[instances.a]\nport = 0\n\n[instances.b]\nport = 0\nusername = 5\n",
    )
    .unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_pglite-harness"))
        .args(["serve", "--config"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(output.stdout.is_empty(), "nothing started");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("pglite.toml:6: instances.b.username"), "{stderr}");
    assert!(stderr.contains("fix: write a quoted string"), "{stderr}");
}

/// A test that fails midway leaves no server behind.
impl Drop for Serve {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A raw HTTP/1.1 GET; the whole response.
fn http_get(address: &str, path: &str) -> String {
    use std::io::Write;
    let mut stream = std::net::TcpStream::connect(address).unwrap();
    write!(stream, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    response
}
