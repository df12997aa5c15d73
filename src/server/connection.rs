//! One client connection: startup, then batches of messages run on the shared backend while the
//! connection owns it.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::AtomicU32;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{Mutex, OwnedMutexGuard};

use super::ServerBuilder;
use super::messages::{self, RenameEffect, error_response, put_message};
use crate::backend::{Backend, BackendError};

/// State shared by all connections of one server.
pub(crate) struct Shared {
    /// The backend; its lock is the FIFO queue of connections waiting for their turn.
    pub backend: Arc<Mutex<Backend>>,
    /// Cancels the backend's running statement.
    pub cancel: crate::backend::CancelHandle,
    /// The SCRAM verifier of the configured password, if any.
    pub verifier: Option<super::scram::ScramVerifier>,
    /// The secret of each connection's BackendKeyData, by connection id.
    pub keys: std::sync::Mutex<std::collections::HashMap<u32, u32>>,
    /// The connection whose messages the backend is running, if any.
    pub executing: std::sync::Mutex<Option<u32>>,
    /// ParameterStatus messages sent to every client at startup.
    pub parameter_statuses: Vec<u8>,
    pub config: ServerBuilder,
    pub next_id: AtomicU32,
}

/// Protocol codes of packets without a type byte.
const SSL_REQUEST: u32 = 80_877_103;
const GSSENC_REQUEST: u32 = 80_877_104;
const CANCEL_REQUEST: u32 = 80_877_102;
const PROTOCOL_3_0: u32 = 196_608;
/// Largest startup packet Postgres accepts.
const MAX_STARTUP_PACKET: usize = 10_000;

/// The client's socket and the bytes read from it but not yet taken.
struct ClientIo {
    stream: TcpStream,
    input: BytesMut,
    max_message_size: usize,
}

struct Connection {
    /// Shared with the backend thread while it streams COPY data (see [`Connection::exec`]).
    io: Arc<Mutex<ClientIo>>,
    shared: Arc<Shared>,
    id: u32,
    prefix: String,
    /// The backend, while this connection owns it.
    owner: Option<OwnedMutexGuard<Backend>>,
    /// Prepared statements this connection created (client names).
    prepared: HashSet<Vec<u8>>,
}

pub(crate) async fn serve(stream: TcpStream, shared: Arc<Shared>) {
    let id = super::next_id(&shared.next_id);
    let io = ClientIo {
        stream,
        input: BytesMut::with_capacity(8192),
        max_message_size: shared.config.max_message_size,
    };
    let mut conn = Connection {
        io: Arc::new(Mutex::new(io)),
        shared,
        id,
        prefix: format!("_c{id}_"),
        owner: None,
        prepared: HashSet::new(),
    };
    if let Ok(true) = conn.startup().await {
        let _ = conn.run().await;
    }
    conn.clean_up().await;
}

impl Connection {
    /// Handles the startup phase; `Ok(true)` when the client is ready for queries.
    async fn startup(&mut self) -> std::io::Result<bool> {
        loop {
            let mut io = self.io.lock().await;
            let mut len = [0u8; 4];
            io.stream.read_exact(&mut len).await?;
            let len = u32::from_be_bytes(len) as usize;
            if !(8..=MAX_STARTUP_PACKET).contains(&len) {
                io.fatal("08P01", "invalid length of startup packet").await;
                return Ok(false);
            }
            let mut body = vec![0u8; len - 4];
            io.stream.read_exact(&mut body).await?;
            drop(io);
            let code = u32::from_be_bytes(body[0..4].try_into().expect("4 bytes"));
            match code {
                // TLS and GSS encryption are not offered: the client continues in the clear.
                SSL_REQUEST | GSSENC_REQUEST => self.io.lock().await.stream.write_all(b"N").await?,
                CANCEL_REQUEST => {
                    if body.len() == 12 {
                        let pid = u32::from_be_bytes(body[4..8].try_into().expect("4 bytes"));
                        let secret = u32::from_be_bytes(body[8..12].try_into().expect("4 bytes"));
                        self.shared.cancel_if_running(pid, secret);
                    }
                    return Ok(false);
                }
                PROTOCOL_3_0 => return self.accept_startup(&body[4..]).await,
                other => {
                    let message = format!(
                        "unsupported frontend protocol {}.{}: server supports 3.0",
                        other >> 16,
                        other & 0xffff
                    );
                    self.fatal("0A000", &message).await;
                    return Ok(false);
                }
            }
        }
    }

    async fn accept_startup(&mut self, params: &[u8]) -> std::io::Result<bool> {
        let mut fields = params
            .split(|&b| b == 0)
            .map(|s| String::from_utf8_lossy(s).into_owned());
        let (mut user, mut database) = (None, None);
        while let (Some(key), Some(value)) = (fields.next(), fields.next()) {
            if key.is_empty() {
                break;
            }
            match key.as_str() {
                "user" => user = Some(value),
                "database" => database = Some(value),
                _ => {}
            }
        }
        let config = &self.shared.config;
        let Some(user) = user else {
            self.fatal("28000", "no PostgreSQL user name specified in startup packet")
                .await;
            return Ok(false);
        };
        let database = database.filter(|d| !d.is_empty()).unwrap_or_else(|| user.clone());
        if user != config.user {
            let message = format!("role \"{user}\" does not exist");
            self.fatal("28000", &message).await;
            return Ok(false);
        }
        if database != config.database {
            let message = format!("database \"{database}\" does not exist");
            self.fatal("3D000", &message).await;
            return Ok(false);
        }
        let mut out = BytesMut::new();
        if let Some(verifier) = &self.shared.verifier {
            match self.authenticate(verifier.clone(), &user).await? {
                Some(server_final) => out.extend_from_slice(&server_final),
                None => return Ok(false),
            }
        }
        put_message(&mut out, b'R', &0u32.to_be_bytes()); // AuthenticationOk
        out.extend_from_slice(&self.shared.parameter_statuses);
        let mut secret = [0u8; 4];
        getrandom::fill(&mut secret).map_err(|e| std::io::Error::other(e.to_string()))?;
        self.shared
            .keys
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(self.id, u32::from_be_bytes(secret));
        put_message(&mut out, b'K', &[self.id.to_be_bytes(), secret].concat());
        put_message(&mut out, b'Z', b"I");
        self.io.lock().await.stream.write_all(&out).await?;
        Ok(true)
    }

    /// SCRAM-SHA-256: AuthenticationSASL, two SASL responses, AuthenticationSASLFinal. Returns the
    /// final message to send before AuthenticationOk, or `None` after telling the client why not.
    async fn authenticate(
        &mut self,
        verifier: super::scram::ScramVerifier,
        user: &str,
    ) -> std::io::Result<Option<BytesMut>> {
        let mut exchange = super::scram::ScramExchange::new(&verifier);
        let mut out = BytesMut::new();
        put_message(
            &mut out,
            b'R',
            &[
                &10u32.to_be_bytes()[..],
                super::scram::ScramExchange::mechanisms(),
            ]
            .concat(),
        );
        self.io.lock().await.stream.write_all(&out).await?;
        for step in [11u32, 12] {
            let Some(body) = self.read_auth_message().await? else {
                return Ok(None);
            };
            let result = if step == 11 {
                exchange.client_first(&body)
            } else {
                exchange.client_final(&body)
            };
            match result {
                Ok(reply) => {
                    let mut out = BytesMut::new();
                    put_message(&mut out, b'R', &[&step.to_be_bytes()[..], &reply].concat());
                    if step == 11 {
                        self.io.lock().await.stream.write_all(&out).await?;
                    } else {
                        return Ok(Some(out));
                    }
                }
                Err(super::scram::ScramError::WrongPassword) => {
                    let message = format!("password authentication failed for user \"{user}\"");
                    self.fatal("28P01", &message).await;
                    return Ok(None);
                }
                Err(e) => {
                    self.fatal(e.sqlstate(), &e.to_string()).await;
                    return Ok(None);
                }
            }
        }
        Ok(None)
    }

    /// Reads a SASL response ('p'), at most 64 KiB as in Postgres.
    async fn read_auth_message(&mut self) -> std::io::Result<Option<BytesMut>> {
        match self.read_message().await? {
            Some((b'p', body)) if body.len() <= 65_535 => Ok(Some(body)),
            Some((tag, _)) => {
                let message = format!("expected SASL response, got message type {}", tag as char);
                self.fatal("08P01", &message).await;
                Ok(None)
            }
            None => Ok(None),
        }
    }

    /// The message loop, until the client leaves or the connection is ended.
    async fn run(&mut self) -> std::io::Result<()> {
        let mut batch = BytesMut::new();
        loop {
            let message = if self.owner.is_some() && batch.is_empty() {
                let idle = self.shared.config.idle_in_transaction_timeout;
                match tokio::time::timeout(idle, self.read_message()).await {
                    Ok(m) => m?,
                    Err(_) => {
                        self.fatal(
                            "25P03",
                            "terminating connection due to idle-in-transaction timeout",
                        )
                        .await;
                        return Ok(());
                    }
                }
            } else {
                self.read_message().await?
            };
            let Some((tag, body)) = message else {
                return Ok(());
            };
            if tag == b'X' {
                return Ok(());
            }
            match messages::rename(tag, &body, &self.prefix, &mut batch) {
                Some(RenameEffect::Prepared(name)) => {
                    self.prepared.insert(name);
                }
                Some(RenameEffect::Closed(name)) => {
                    self.prepared.remove(&name);
                }
                Some(RenameEffect::None) => {}
                None => {
                    let text = format!("invalid {:?} message", tag as char);
                    self.fatal("08P01", &text).await;
                    return Ok(());
                }
            }
            // Run at a point where the client waits for an answer.
            if !matches!(tag, b'S' | b'Q' | b'H' | b'F') {
                continue;
            }
            let reply = match self.exec(&batch).await {
                Ok(reply) => reply,
                Err(BackendError::Fatal { output, .. }) => {
                    let reply = messages::unrename_reply(&output, &self.prefix);
                    self.io.lock().await.stream.write_all(&reply).await?;
                    return Ok(());
                }
                Err(e) => {
                    self.fatal("57P03", &format!("the database is unavailable: {e}"))
                        .await;
                    return Ok(());
                }
            };
            batch.clear();
            let unrenamed = messages::unrename_reply(&reply, &self.prefix);
            self.io.lock().await.stream.write_all(&unrenamed).await?;
            if messages::ready_status(&reply) == Some(b'I') {
                self.owner = None; // the next connection in line may go
            }
        }
    }

    /// Runs `bytes` on the backend, waiting for this connection's turn first.
    ///
    /// A COPY FROM STDIN needs the client's data, which it sends only after the CopyInResponse:
    /// the backend thread then writes the reply so far to the client and reads the client's next
    /// messages itself, until CopyDone or CopyFail.
    async fn exec(&mut self, bytes: &[u8]) -> Result<Vec<u8>, BackendError> {
        if self.owner.is_none() {
            self.owner = Some(self.shared.backend.clone().lock_owned().await);
        }
        let (io, prefix, runtime) = (
            self.io.clone(),
            self.prefix.clone(),
            tokio::runtime::Handle::current(),
        );
        let more_input: crate::runtime::MoreInput = Box::new(move |output: Vec<u8>| {
            runtime.block_on(async {
                let mut io = io.lock().await;
                io.stream
                    .write_all(&messages::unrename_reply(&output, &prefix))
                    .await
                    .ok()?;
                let mut more = BytesMut::new();
                loop {
                    let (tag, body) = io.read_message().await.ok()??;
                    messages::rename(tag, &body, &prefix, &mut more)?;
                    if matches!(tag, b'c' | b'f') || more.len() >= 1 << 20 || !io.has_message() {
                        return Some(more.to_vec());
                    }
                }
            })
        });
        let backend = self.owner.as_mut().expect("owned");
        self.shared.set_executing(Some(self.id));
        let result = tokio::task::block_in_place(|| backend.exec_with_input(bytes, Some(more_input)));
        self.shared.set_executing(None);
        result
    }

    async fn read_message(&mut self) -> std::io::Result<Option<(u8, BytesMut)>> {
        self.io.lock().await.read_message().await
    }

    /// Sends a FATAL error to the client.
    async fn fatal(&mut self, code: &str, message: &str) {
        self.io.lock().await.fatal(code, message).await;
    }

    /// Leaves nothing behind for the next client: an open transaction is rolled back and the
    /// connection's prepared statements are closed.
    async fn clean_up(&mut self) {
        self.shared
            .keys
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.id);
        let in_transaction = self.owner.is_some();
        if !in_transaction && self.prepared.is_empty() {
            return;
        }
        let mut cleanup = BytesMut::new();
        if in_transaction {
            let _ = postgres_protocol::message::frontend::query("ROLLBACK", &mut cleanup);
        }
        if !self.prepared.is_empty() {
            for name in std::mem::take(&mut self.prepared) {
                let mut body = vec![b'S'];
                body.extend_from_slice(self.prefix.as_bytes());
                body.extend_from_slice(&name);
                body.push(0);
                put_message(&mut cleanup, b'C', &body);
            }
            postgres_protocol::message::frontend::sync(&mut cleanup);
        }
        if let Err(e) = self.exec(&cleanup).await {
            tracing::debug!(connection = self.id, "cleanup after disconnect failed: {e}");
        }
        self.owner = None;
    }
}

impl ClientIo {
    /// Reads one message; `None` at EOF. A length beyond the limit ends the connection.
    async fn read_message(&mut self) -> std::io::Result<Option<(u8, BytesMut)>> {
        loop {
            if self.input.len() >= 5 {
                let tag = self.input[0];
                let len = u32::from_be_bytes(self.input[1..5].try_into().expect("4 bytes")) as usize;
                if len < 4 || len > self.max_message_size {
                    let text = format!("invalid message length {len} for message type {:?}", tag as char);
                    self.fatal("08P01", &text).await;
                    return Ok(None);
                }
                if self.input.len() > len {
                    self.input.advance(5);
                    let body = self.input.split_to(len - 4);
                    return Ok(Some((tag, body)));
                }
                self.input.reserve(len + 1 - self.input.len());
            }
            if self.stream.read_buf(&mut self.input).await? == 0 {
                return Ok(None);
            }
        }
    }

    /// Whether a complete message is already buffered.
    fn has_message(&self) -> bool {
        self.input.len() >= 5
            && self.input.len() > u32::from_be_bytes(self.input[1..5].try_into().expect("4 bytes")) as usize
    }

    /// Sends a FATAL error to the client.
    async fn fatal(&mut self, code: &str, message: &str) {
        let _ = self
            .stream
            .write_all(&error_response("FATAL", code, message))
            .await;
    }
}

impl Shared {
    /// Records which connection the backend runs for; a cancel request only reaches that one.
    /// A request not delivered by the end of the run is withdrawn, so it cannot hit the next one.
    fn set_executing(&self, id: Option<u32>) {
        let mut executing = self.executing.lock().unwrap_or_else(|e| e.into_inner());
        *executing = id;
        self.cancel.withdraw();
    }

    /// Handles a CancelRequest: cancels the running statement if it is that connection's.
    fn cancel_if_running(&self, pid: u32, secret: u32) {
        let known = self.keys.lock().unwrap_or_else(|e| e.into_inner()).get(&pid) == Some(&secret);
        let executing = self.executing.lock().unwrap_or_else(|e| e.into_inner());
        if known && *executing == Some(pid) {
            self.cancel.cancel();
        }
    }
}
