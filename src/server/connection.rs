//! One client connection, after its StartupMessage: authentication, then batches of messages run
//! on the shared backend while the connection owns it.
//!
//! Connections run on the backend's own thread (see [`Backend::lend`]), so a batch runs on the
//! engine directly, with no thread hop: the thread reads a client's messages, runs them, and
//! writes the reply, as a Postgres backend process does.
//!
//! [`Backend::lend`]: crate::backend::Backend::lend

use std::cell::RefCell;
use std::collections::HashSet;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::AtomicU32;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{Mutex, OwnedMutexGuard};

use super::ServerBuilder;
use super::accept::CancelRegistry;
use super::blocking::SocketFd;
use super::messages::{self, RenameEffect, error_response, put_message};
use super::metrics::Counted;
use super::session;
use crate::backend::{BackendError, Engine};

/// State shared by all connections of one server, on the backend's thread.
pub(crate) struct Shared {
    /// The engine, lent by the backend for as long as the server runs. Borrowed only for the
    /// length of one synchronous run, never across an `.await`.
    pub engine: RefCell<Option<Engine>>,
    /// The FIFO queue of connections waiting for their turn on the backend; holding its guard is
    /// owning the backend.
    pub turn: Arc<Mutex<()>>,
    /// Connections' cancel keys and the running connection, shared with the accept thread.
    pub cancels: Arc<CancelRegistry>,
    /// The connection whose unnamed prepared statement the session holds, if any.
    pub unnamed_owner: std::cell::Cell<Option<u32>>,
    /// The SCRAM verifier of the configured password, if any.
    pub verifier: Option<super::scram::ScramVerifier>,
    /// Connections listening on each channel.
    pub listeners: std::sync::Mutex<std::collections::HashMap<String, HashSet<u32>>>,
    /// Where each connection's notifications go.
    pub mailboxes:
        std::sync::Mutex<std::collections::HashMap<u32, tokio::sync::mpsc::UnboundedSender<Vec<u8>>>>,
    /// Session settings per connection.
    pub session_settings: std::sync::Mutex<SessionSettings>,
    /// ParameterStatus messages sent to every client at startup.
    pub parameter_statuses: Vec<u8>,
    pub config: ServerBuilder,
    pub next_id: AtomicU32,
    /// Traffic counters and the backend's death, for health checks and metrics.
    pub metrics: Arc<super::metrics::Counters>,
    /// Raised when the server stops, to end a COPY's wait for its client at once.
    pub stopping: super::blocking::StopSignal,
    /// Connections past their startup and not yet gone: when the last leaves, the session is
    /// reset for whoever comes next (see [`Connection::clean_up`]).
    pub clients: std::cell::Cell<usize>,
}

/// The client's socket and the bytes read from it but not yet taken.
struct ClientIo {
    /// First, so that it is dropped before the socket closes.
    _watched: super::blocking::Watched,
    reader: ClientReader,
    writer: Arc<Mutex<ClientWriter>>,
    input: BytesMut,
    max_message_size: usize,
    /// The socket, for the blocking reads and writes of a COPY FROM STDIN (see
    /// [`Connection::exec`]); it stays open as long as `reader` and `writer`.
    socket: SocketFd,
    /// Ends those blocking waits when the server stops.
    stopping: super::blocking::StopSignal,
}

struct Connection {
    /// Also reached by the COPY input source while the backend runs (see [`Connection::exec`]).
    io: Arc<Mutex<ClientIo>>,
    /// The socket's write half (also reachable from `io`), so notifications can be written while
    /// a read is pending.
    writer: Arc<Mutex<ClientWriter>>,
    /// Notifications for this connection, from whichever connection's reply carried them.
    notifications: Option<tokio::sync::mpsc::UnboundedReceiver<Vec<u8>>>,
    /// LISTEN/UNLISTEN commands in the batch being run.
    pending_listen: Vec<session::ListenCommand>,
    /// This client's last Parse of the unnamed statement (a simple Query drops it), to put back
    /// when another client's has replaced it in the shared session.
    unnamed_parse: Option<Vec<u8>>,
    /// Whether the batch being gathered binds or describes the unnamed statement before it
    /// parses one.
    needs_own_unnamed: bool,
    /// The command the client sent in place of the batch being run (see
    /// [`Connection::discard`]), whose answer it gets.
    answer_as: Option<session::DiscardCommand>,
    /// Whether the batch being run may put the session's authorization back to the bootstrap
    /// role (DISCARD ALL, RESET SESSION AUTHORIZATION): it is set to the instance's user again.
    pending_reauthorize: bool,

    shared: Rc<Shared>,
    id: u32,
    /// Prepended to this client's statement and portal names in the shared session.
    prefix: Arc<str>,
    /// This connection's turn on the backend, while it owns it.
    owner: Option<OwnedMutexGuard<()>>,
    /// Prepared statements this connection created (client names).
    prepared: HashSet<Vec<u8>>,
    /// Whether the batch being run may change settings without a SET (see
    /// [`Connection::note_set_config`]).
    settings_may_change: bool,
    /// This client's prepared statements that call `set_config` (client names).
    set_config_statements: HashSet<Vec<u8>>,
}

/// The read half of a client socket (TCP or Unix).
pub(crate) type ClientReader = Box<dyn tokio::io::AsyncRead + Send + Unpin>;
/// The write half of a client socket (TCP or Unix).
pub(crate) type ClientWriter = Box<dyn tokio::io::AsyncWrite + Send + Unpin>;

/// Serves a client whose StartupMessage carried `parameters`, until it leaves.
pub(crate) async fn serve(
    reader: ClientReader,
    writer: ClientWriter,
    socket: SocketFd,
    watched: super::blocking::Watched,
    parameters: Vec<u8>,
    shared: Rc<Shared>,
) {
    let id = super::next_id(&shared.next_id);
    let _open = shared.metrics.connection();
    let reader: ClientReader = Box::new(Counted::new(reader, shared.metrics.clone()));
    let writer: ClientWriter = Box::new(Counted::new(writer, shared.metrics.clone()));
    let writer = Arc::new(Mutex::new(writer));
    let io = ClientIo {
        _watched: watched,
        reader,
        writer: writer.clone(),
        input: BytesMut::with_capacity(8192),
        max_message_size: shared.config.max_message_size,
        socket,
        stopping: shared.stopping.clone(),
    };
    let (mailbox, notifications) = tokio::sync::mpsc::unbounded_channel();
    shared
        .mailboxes
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(id, mailbox);
    let mut conn = Connection {
        io: Arc::new(Mutex::new(io)),
        writer,
        notifications: Some(notifications),
        pending_listen: Vec::new(),
        pending_reauthorize: false,
        answer_as: None,
        unnamed_parse: None,
        needs_own_unnamed: false,
        shared,
        id,
        prefix: format!("_c{id}_").into(),
        owner: None,
        prepared: HashSet::new(),
        settings_may_change: false,
        set_config_statements: HashSet::new(),
    };
    if let Ok(true) = conn.accept_startup(&parameters).await {
        let clients = &conn.shared.clients;
        clients.set(clients.get() + 1);
        let _ = conn.run().await;
        let clients = &conn.shared.clients;
        clients.set(clients.get() - 1);
        conn.clean_up(true).await;
    } else {
        conn.clean_up(false).await;
    }
}

impl Connection {
    async fn accept_startup(&mut self, params: &[u8]) -> std::io::Result<bool> {
        let mut fields = params
            .split(|&b| b == 0)
            .map(|s| String::from_utf8_lossy(s).into_owned());
        let (mut user, mut database) = (None, None);
        // The `options` switches come first, so that a parameter of its own overrides them, as
        // in Postgres.
        let (mut option_settings, mut startup_settings) = (Vec::new(), Vec::new());
        while let (Some(key), Some(value)) = (fields.next(), fields.next()) {
            if key.is_empty() {
                break;
            }
            match key.as_str() {
                "user" => user = Some(value),
                "database" => database = Some(value),
                "client_encoding" if !is_utf8(&value) => {
                    let message =
                        format!("unsupported client encoding \"{value}\": this server speaks UTF8 only");
                    self.fatal("22023", &message).await;
                    return Ok(false);
                }
                "options" => match session::options_settings(&value) {
                    Ok(settings) => option_settings.extend(settings),
                    Err(message) => {
                        self.fatal("42601", &message).await;
                        return Ok(false);
                    }
                },
                // Sent by every driver with the server's own values; nothing to apply.
                "client_encoding" | "replication" => {}
                // Protocol options (`_pq_.*`), none of which this server implements.
                _ if key.starts_with("_pq_.") => {}
                _ if session::is_server_default(&key, &value) => {}
                _ => startup_settings.push((key, value)),
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
        let startup_settings: Vec<(String, String)> = option_settings
            .into_iter()
            .filter(|(name, value)| !session::is_server_default(name, value))
            .chain(startup_settings)
            .collect();
        let has_settings = !startup_settings.is_empty();
        self.shared.settings().saved.insert(self.id, startup_settings);
        let mut out = BytesMut::new();
        if let Some(verifier) = &self.shared.verifier {
            match self.authenticate(verifier.clone(), &user).await? {
                Some(server_final) => out.extend_from_slice(&server_final),
                None => return Ok(false),
            }
        }
        // The startup settings are put in force now, so that one the session refuses fails the
        // connection as in Postgres, when the backend is free; when it is not, at the first
        // statement (waiting for it here would hold up the connection behind a transaction).
        if has_settings && let Ok(turn) = self.shared.turn.clone().try_lock_owned() {
            self.owner = Some(turn);
            let applied = self.apply_settings().await;
            self.release();
            match applied {
                Ok(None) => {}
                Ok(Some(error)) => {
                    self.fatal(&error.code, &error.message).await;
                    return Ok(false);
                }
                Err(e) => {
                    self.fatal("57P03", &format!("the database is unavailable: {e}"))
                        .await;
                    return Ok(false);
                }
            }
        }
        put_message(&mut out, b'R', &0u32.to_be_bytes()); // AuthenticationOk
        out.extend_from_slice(&self.shared.parameter_statuses);
        let mut secret = [0u8; 4];
        getrandom::fill(&mut secret).map_err(|e| std::io::Error::other(e.to_string()))?;
        self.shared.cancels.register(self.id, u32::from_be_bytes(secret));
        put_message(&mut out, b'K', &[self.id.to_be_bytes(), secret].concat());
        put_message(&mut out, b'Z', b"I");
        self.writer.lock().await.write_all(&out).await?;
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
        self.writer.lock().await.write_all(&out).await?;
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
                        self.writer.lock().await.write_all(&out).await?;
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
        let mut notifications = self.notifications.take().expect("taken once");
        loop {
            let idle_in_transaction = self.owner.is_some() && batch.is_empty();
            let idle = self.shared.config.idle_in_transaction_timeout;
            // The rest of a batch is usually read already: take it without waiting.
            let buffered = match self.io.try_lock() {
                Ok(mut io) => io.buffered_message(),
                Err(_) => Ok(None),
            };
            let message = match buffered {
                Ok(Some(message)) => Some(message),
                Ok(None) => {
                    let io = self.io.clone();
                    let read = async move { io.lock().await.read_message().await };
                    tokio::pin!(read);
                    // Wait for the client's next message; meanwhile deliver notifications, and
                    // end a transaction left idle too long.
                    loop {
                        tokio::select! {
                            message = &mut read => break message?,
                            Some(note) = notifications.recv() => {
                                self.writer.lock().await.write_all(&note).await?;
                            }
                            // In a block, so that no timer is made unless it is waited for.
                            _ = async { tokio::time::sleep(idle).await }, if idle_in_transaction => {
                                self.fatal("25P03", "terminating connection due to idle-in-transaction timeout").await;
                                return Ok(());
                            }
                        }
                    }
                }
                Err(text) => {
                    self.fatal("08P01", &text).await;
                    return Ok(());
                }
            };
            let Some((tag, body)) = message else { return Ok(()) };
            if tag == b'X' {
                return Ok(());
            }
            self.shared.metrics.message(tag);
            let sql = statement_text(tag, &body);
            // DISCARD ALL and DEALLOCATE ALL, on their own outside a transaction, are run on this
            // connection's share of the session only.
            let discard = match &sql {
                Some(sql) if tag == b'Q' && batch.is_empty() && self.owner.is_none() => {
                    session::discard_command(sql)
                }
                _ => None,
            };
            if let Some(command) = discard {
                self.discard(command, &mut batch);
            } else if let Some(sql) = &sql {
                self.pending_listen.extend(session::listen_commands(sql));
                self.pending_reauthorize |= session::resets_authorization(sql);
            }
            self.note_set_config(tag, &body, sql.as_deref());
            match messages::unnamed_statement(tag, &body) {
                messages::UnnamedStatement::Parsed => {
                    let mut parse = BytesMut::new();
                    put_message(&mut parse, tag, &body);
                    self.unnamed_parse = Some(parse.to_vec());
                }
                messages::UnnamedStatement::Used if !batch_parses_unnamed(&batch) => {
                    self.needs_own_unnamed = true;
                }
                messages::UnnamedStatement::Dropped => self.unnamed_parse = None,
                _ => {}
            }
            let renamed = match discard {
                Some(_) => Some(RenameEffect::None),
                None => messages::rename(tag, &body, &self.prefix, &mut batch),
            };
            match renamed {
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
            let result = match self.take_turn().await {
                Ok(None) => self.exec(&batch),
                Ok(Some(refused)) => {
                    // As Postgres refuses a connection whose startup settings it cannot apply.
                    self.fatal(&refused.code, &refused.message).await;
                    return Ok(());
                }
                Err(e) => Err(e),
            };
            if let Err(e) = &result {
                self.shared.metrics.observe(e);
            }
            let reply = match result {
                Ok(reply) => {
                    self.shared.metrics.reply(&reply);
                    reply
                }
                Err(BackendError::Fatal { output, .. }) => {
                    self.shared.metrics.reply(&output);
                    let reply = messages::unrename_reply(&output, &self.prefix);
                    self.writer.lock().await.write_all(&reply).await?;
                    return Ok(());
                }
                Err(e) => {
                    self.fatal("57P03", &format!("the database is unavailable: {e}"))
                        .await;
                    return Ok(());
                }
            };
            batch.clear();
            let mut reply = self.after_exec(reply).await;
            if let Some(command) = self.answer_as.take() {
                reply = messages::answer_as(&reply, command.tag());
            }
            let unrenamed = messages::unrename_reply(&reply, &self.prefix);
            self.writer.lock().await.write_all(&unrenamed).await?;
            if messages::ready_status(&reply) == Some(b'I') {
                self.release();
            }
        }
    }

    /// Puts into `batch`, in place of a client's `DISCARD ALL` or `DEALLOCATE ALL`, what that
    /// does to this connection's share of the shared session: its prepared statements closed
    /// (those of SQL `PREPARE` too when it is the only client),
    /// and for DISCARD ALL the rest of it (its LISTENs ended, settings reset, role restored; the
    /// session-wide parts — plans, temporary tables, sequences, advisory locks — as the real
    /// command does). The client is answered as if by the command itself.
    fn discard(&mut self, command: session::DiscardCommand, batch: &mut BytesMut) {
        for name in std::mem::take(&mut self.prepared) {
            let mut body = vec![b'S'];
            body.extend_from_slice(self.prefix.as_bytes());
            body.extend_from_slice(&name);
            body.push(0);
            put_message(batch, b'C', &body);
        }
        match command {
            session::DiscardCommand::DeallocateAll => postgres_protocol::message::frontend::sync(batch),
            session::DiscardCommand::DiscardAll => {
                let _ =
                    postgres_protocol::message::frontend::query(session::DISCARD_ALL_BUT_DEALLOCATE, batch);
                self.pending_listen.push(session::ListenCommand::UnlistenAll);
                self.pending_reauthorize = true;
            }
        }
        // Statements prepared with SQL PREPARE share one namespace, whose owners are not known:
        // with no other client connected, they are this one's, and go as on a server of its own.
        if self.shared.clients.get() == 1 {
            let _ = postgres_protocol::message::frontend::query("DEALLOCATE ALL", batch);
        }
        self.answer_as = Some(command);
    }

    /// Notes whether the batch may change settings through `set_config`, which no command tag
    /// reports: a Query calling it, or a Bind of a statement whose Parse (`sql`, if it was read)
    /// calls it.
    fn note_set_config(&mut self, tag: u8, body: &[u8], sql: Option<&str>) {
        let calls_set_config = sql.is_some_and(session::calls_set_config);
        if tag == b'Q' {
            self.settings_may_change |= calls_set_config;
            return;
        }
        if !calls_set_config && self.set_config_statements.is_empty() {
            return;
        }
        let Some(name) = messages::statement_named(tag, body) else {
            return;
        };
        match tag {
            b'P' if calls_set_config => {
                self.set_config_statements.insert(name.to_vec());
            }
            b'P' => {
                self.set_config_statements.remove(name);
            }
            _ => self.settings_may_change |= self.set_config_statements.contains(name),
        }
    }

    /// Routes notifications out of `reply`, records LISTEN/UNLISTEN and SET effects, and
    /// returns what is left for this client.
    async fn after_exec(&mut self, reply: Vec<u8>) -> Vec<u8> {
        let (kept, notes) = session::take_notifications(reply);
        self.shared.deliver(notes);
        if std::mem::take(&mut self.settings_may_change) || session::changes_settings(&kept) {
            self.shared.settings().dirty = true;
        }
        let mut relisten = Vec::new();
        {
            let mut listeners = self.shared.listeners.lock().unwrap_or_else(|e| e.into_inner());
            for command in std::mem::take(&mut self.pending_listen) {
                let channels: Vec<String> = match command {
                    session::ListenCommand::Listen(channel) => {
                        listeners.entry(channel).or_default().insert(self.id);
                        continue;
                    }
                    session::ListenCommand::Unlisten(channel) => vec![channel],
                    session::ListenCommand::UnlistenAll => listeners.keys().cloned().collect(),
                };
                for channel in channels {
                    if let Some(ids) = listeners.get_mut(&channel) {
                        ids.remove(&self.id);
                        if ids.is_empty() {
                            listeners.remove(&channel);
                        } else {
                            relisten.push(channel);
                        }
                    }
                }
            }
        }
        // The session runs as the instance's user, as a login would make it, unless the client
        // changed that within a transaction that has failed since (its ROLLBACK undoes it).
        if self.pending_reauthorize && matches!(messages::ready_status(&kept), Some(b'I' | b'T')) {
            self.pending_reauthorize = false;
            // Always: PGlite's single-user backend keeps the authorization those statements reset.
            let sql = session::set_authorization_sql(&self.shared.config.user);
            let _ = self.run_sql(&sql).await;
        } else if matches!(messages::ready_status(&kept), Some(b'E')) {
            self.pending_reauthorize = false;
        }
        // Others still listen on a channel this connection left: the shared session must too.
        if !relisten.is_empty() {
            let sql: String = relisten
                .iter()
                .map(|c| format!("LISTEN {};", session::quote_identifier(c)))
                .collect();
            let _ = self.run_sql(&sql).await;
        }
        kept
    }

    /// Lets the next connection in line have the backend.
    fn release(&mut self) {
        self.owner = None;
    }

    /// Puts this connection's session settings in force, after taking the backend. Settings
    /// change hands lazily: only when the last owner's differ (or were changed with SET, in which
    /// case they are first saved for it), so clients that never SET pay nothing.
    ///
    /// Returns the error of a setting the session refuses: one of the client's startup
    /// parameters (checked at connection start when the backend is free, else here at its first
    /// statement), or, rarely, a SET that no longer holds (a role dropped since).
    async fn apply_settings(&mut self) -> Result<Option<crate::backend::ServerMessage>, BackendError> {
        let (previous, dirty, applied, wanted) = {
            let state = self.shared.settings();
            if state.applied_for == Some(self.id) {
                return Ok(None);
            }
            let wanted = state.saved.get(&self.id).cloned().unwrap_or_default();
            (state.applied_for, state.dirty, state.applied.clone(), wanted)
        };
        if dirty && let Some(previous) = previous {
            let reply = self
                .run_sql(&session::settings_query(&self.shared.config.user))
                .await?;
            let rows = crate::backend::SimpleQueryOutput::parse(&reply);
            let saved: Vec<(String, String)> = rows
                .rows()
                .iter()
                .filter_map(|row| Some((row.first()?.clone()?, row.get(1)?.clone()?)))
                .collect();
            if let Some(slot) = self.shared.settings().saved.get_mut(&previous) {
                *slot = saved;
            }
        }
        if dirty || wanted != applied {
            let sql = session::apply_settings_sql(&wanted, &self.shared.config.user);
            let reply = self.run_sql(&sql).await?;
            if let Some(error) = crate::backend::SimpleQueryOutput::parse(&reply).error {
                // The session holds part of them: the next owner's settings are applied afresh.
                let mut state = self.shared.settings();
                state.applied_for = None;
                state.dirty = true;
                state.saved.remove(&self.id);
                return Ok(Some(error));
            }
        }
        let mut state = self.shared.settings();
        state.applied_for = Some(self.id);
        state.applied = wanted;
        state.dirty = false;
        Ok(None)
    }

    /// Runs SQL of the server's own on the owned backend.
    async fn run_sql(&mut self, sql: &str) -> Result<Vec<u8>, BackendError> {
        let mut msg = BytesMut::new();
        let _ = postgres_protocol::message::frontend::query(sql, &mut msg);
        let reply = self.shared.exec(None, &msg, None)?;
        let (kept, notes) = session::take_notifications(reply);
        self.shared.deliver(notes);
        Ok(kept)
    }

    /// Takes the backend for this connection, unless it holds it already: waits for its turn,
    /// then puts its settings in force. Returns the error of a setting the session refuses (see
    /// [`Connection::apply_settings`]).
    async fn take_turn(&mut self) -> Result<Option<crate::backend::ServerMessage>, BackendError> {
        if self.owner.is_some() {
            return Ok(None);
        }
        let queued = std::time::Instant::now();
        self.owner = Some(self.shared.turn.clone().lock_owned().await);
        self.shared.metrics.waited(queued.elapsed());
        self.apply_settings().await
    }

    /// Runs `bytes` on the backend, which this connection holds (see [`Connection::take_turn`]).
    ///
    /// A COPY FROM STDIN needs the client's data, which it sends only after the CopyInResponse,
    /// while the backend is running on this very thread: the backend then writes the reply so
    /// far to the client and reads the client's next messages itself, blocking (see
    /// [`copy_input`]), until CopyDone or CopyFail.
    fn exec(&mut self, bytes: &[u8]) -> Result<Vec<u8>, BackendError> {
        if std::mem::take(&mut self.needs_own_unnamed) {
            self.restore_unnamed()?;
        }
        let more_input = copy_input(
            self.io.clone(),
            self.prefix.clone(),
            self.shared.config.idle_in_transaction_timeout,
            self.shared.metrics.clone(),
        );
        self.shared.cancels.set_executing(Some(self.id));
        let started = std::time::Instant::now();
        let result = self.shared.exec(Some(self.id), bytes, Some(more_input));
        self.shared.metrics.busy(started.elapsed());
        self.shared.cancels.set_executing(None);
        result
    }

    async fn read_message(&mut self) -> std::io::Result<Option<(u8, BytesMut)>> {
        self.io.lock().await.read_message().await
    }

    /// Makes the session's unnamed statement this client's again, before a batch that binds or
    /// describes it, when another client's Parse, or a simple Query, replaced or dropped it
    /// meanwhile: this client's last Parse of it runs again, or, if it has none, the unnamed
    /// statement is closed (so the batch fails as it would on a server of its own).
    fn restore_unnamed(&mut self) -> Result<(), BackendError> {
        if self.shared.unnamed_owner.get() == Some(self.id) {
            return Ok(());
        }
        let mut restore = BytesMut::new();
        match &self.unnamed_parse {
            Some(parse) => restore.extend_from_slice(parse),
            None => put_message(&mut restore, b'C', b"S\0"),
        }
        postgres_protocol::message::frontend::sync(&mut restore);
        self.shared.exec(Some(self.id), &restore, None)?;
        Ok(())
    }

    /// Sends a FATAL error to the client (through the write half: a read may be pending).
    async fn fatal(&mut self, code: &str, message: &str) {
        send_fatal(&self.writer, code, message).await;
    }

    /// Leaves nothing behind for the next client: an open transaction is rolled back and the
    /// connection's prepared statements are closed. When the last client that was `served`
    /// (past its startup) leaves, what the session holds for all of them goes too, as it would
    /// with their sessions on a server of their own: temporary tables, SQL `PREPARE`d statements,
    /// advisory locks, cursors, cached plans (`DISCARD ALL`).
    async fn clean_up(&mut self, served: bool) {
        // Whether the client left inside a transaction: it still owns the backend then.
        let in_transaction = self.owner.is_some();
        let maybe_last = served && self.shared.clients.get() == 0;
        self.shared.cancels.forget(self.id);
        self.shared
            .mailboxes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.id);
        let mut abandoned = Vec::new();
        {
            let mut listeners = self.shared.listeners.lock().unwrap_or_else(|e| e.into_inner());
            listeners.retain(|channel, ids| {
                if ids.remove(&self.id) && ids.is_empty() {
                    abandoned.push(channel.clone());
                }
                !ids.is_empty()
            });
        }
        let settings_in_force = {
            let mut state = self.shared.settings();
            state.saved.remove(&self.id);
            state.applied_for == Some(self.id)
        };
        if !in_transaction
            && self.prepared.is_empty()
            && abandoned.is_empty()
            && !settings_in_force
            && !maybe_last
        {
            return;
        }
        if self.owner.is_none() {
            self.owner = Some(self.shared.turn.clone().lock_owned().await);
        }
        // Still the last once the backend is ours? A client may have come meanwhile.
        let last = maybe_last && self.shared.clients.get() == 0;
        // Whose settings are in force only changes while the backend is owned: decide now.
        let reset_settings = {
            let mut state = self.shared.settings();
            let mine = state.applied_for == Some(self.id);
            let reset = last || (mine && (state.dirty || !state.applied.is_empty()));
            if mine || last {
                state.applied_for = None;
                state.applied.clear();
                state.dirty = false;
            }
            reset
        };
        let mut cleanup = BytesMut::new();
        if in_transaction {
            // A Sync first: after an error in an extended-protocol batch the client never ended
            // (a COPY it abandoned, a batch without its Sync), the backend ignores everything
            // until one, the ROLLBACK too.
            postgres_protocol::message::frontend::sync(&mut cleanup);
            let _ = postgres_protocol::message::frontend::query("ROLLBACK", &mut cleanup);
        }
        if last {
            // Outside any transaction block, as it must run. It also resets settings and
            // authorization, which the settings reset below then puts right for PGlite.
            let _ = postgres_protocol::message::frontend::query("DISCARD ALL", &mut cleanup);
        }
        if reset_settings {
            let sql = session::apply_settings_sql(&[], &self.shared.config.user);
            let _ = postgres_protocol::message::frontend::query(&sql, &mut cleanup);
        }
        if !abandoned.is_empty() {
            let sql: String = abandoned
                .iter()
                .map(|c| format!("UNLISTEN {};", session::quote_identifier(c)))
                .collect();
            let _ = postgres_protocol::message::frontend::query(&sql, &mut cleanup);
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
        if !cleanup.is_empty()
            && let Err(e) = self.shared.exec(None, &cleanup, None)
        {
            tracing::debug!(connection = self.id, "cleanup after disconnect failed: {e}");
        }
        self.release();
    }
}

impl ClientIo {
    /// Reads one message; `None` at EOF. A length beyond the limit ends the connection.
    async fn read_message(&mut self) -> std::io::Result<Option<(u8, BytesMut)>> {
        loop {
            match self.buffered_message() {
                Ok(Some(message)) => return Ok(Some(message)),
                Ok(None) => {}
                Err(text) => {
                    self.fatal("08P01", &text).await;
                    return Ok(None);
                }
            }
            if self.reader.read_buf(&mut self.input).await? == 0 {
                return Ok(None);
            }
        }
    }

    /// The next message, if the input holds all of it (and room for it reserved if not); `Err`
    /// with the text of the protocol violation for a length beyond the limit.
    fn buffered_message(&mut self) -> Result<Option<(u8, BytesMut)>, String> {
        if self.input.len() < 5 {
            return Ok(None);
        }
        let tag = self.input[0];
        let len = u32::from_be_bytes(self.input[1..5].try_into().expect("4 bytes")) as usize;
        if len < 4 || len > self.max_message_size {
            return Err(format!(
                "invalid message length {len} for message type {:?}",
                tag as char
            ));
        }
        if self.input.len() > len {
            self.input.advance(5);
            let body = self.input.split_to(len - 4);
            return Ok(Some((tag, body)));
        }
        self.input.reserve(len + 1 - self.input.len());
        Ok(None)
    }

    /// [`read_message`](Self::read_message) for a caller that holds the server's thread (a COPY
    /// during a backend run): waits on the socket itself, at most `timeout` for each read.
    /// `None` at EOF, on an error, or for a length beyond the limit (left in the buffer for the
    /// message loop to refuse).
    fn read_message_blocking(
        &mut self,
        timeout: std::time::Duration,
        metrics: &super::metrics::Counters,
    ) -> Option<(u8, BytesMut)> {
        loop {
            match self.buffered_message() {
                Ok(Some(message)) => return Some(message),
                Ok(None) => {}
                // A bad length is not consumed: the message loop refuses it.
                Err(_) => return None,
            }
            match self.socket.read(&mut self.input, timeout, &self.stopping) {
                Ok(0) | Err(_) => return None,
                Ok(read) => metrics.received(read),
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
        send_fatal(&self.writer, code, message).await;
    }
}

/// The source of a COPY FROM STDIN's data during one backend run on the server's thread: it
/// writes the reply so far (up to the CopyInResponse) to the client, then reads the client's next
/// messages from the socket directly, up to CopyDone or CopyFail (or 1 MiB, or what has arrived),
/// renamed like any other. `None`, failing the COPY, when the client is gone or silent for
/// `timeout`.
fn copy_input(
    io: Arc<Mutex<ClientIo>>,
    prefix: Arc<str>,
    timeout: std::time::Duration,
    metrics: Arc<super::metrics::Counters>,
) -> crate::runtime::MoreInput {
    Box::new(move |output: Vec<u8>| {
        // Free: the connection's read finished before the run began, and nothing else runs on
        // this thread during it.
        let mut io = io.try_lock().ok()?;
        let reply = messages::unrename_reply(&output, &prefix);
        io.socket.write_all(&reply, timeout, &io.stopping).ok()?;
        metrics.sent(reply.len());
        let mut more = BytesMut::new();
        loop {
            let (tag, body) = io.read_message_blocking(timeout, &metrics)?;
            messages::rename(tag, &body, &prefix, &mut more)?;
            if matches!(tag, b'c' | b'f') || more.len() >= 1 << 20 || !io.has_message() {
                return Some(more.to_vec());
            }
        }
    })
}

fn is_utf8(encoding: &str) -> bool {
    matches!(
        encoding.to_ascii_lowercase().replace(['-', '_'], "").as_str(),
        "utf8" | "unicode"
    )
}

/// Whether the gathered `batch` parses the unnamed statement.
fn batch_parses_unnamed(batch: &[u8]) -> bool {
    messages::frames(batch)
        .any(|(kind, body, _)| messages::unnamed_statement(kind, body) == messages::UnnamedStatement::Parsed)
}

/// Writes a FATAL ErrorResponse; a client already gone is not an error here.
async fn send_fatal(writer: &Mutex<ClientWriter>, code: &str, message: &str) {
    let _ = writer
        .lock()
        .await
        .write_all(&error_response("FATAL", code, message))
        .await;
}

/// The SQL text of a Query or Parse message that may hold a LISTEN, UNLISTEN, DISCARD,
/// DEALLOCATE, change of session authorization or call of `set_config`.
fn statement_text(tag: u8, body: &[u8]) -> Option<String> {
    let text = match tag {
        b'Q' => body,
        b'P' => &body[body.iter().position(|&b| b == 0)? + 1..],
        _ => return None,
    };
    let end = text.iter().position(|&b| b == 0).unwrap_or(text.len());
    let text = &text[..end];
    // Only those matter here: skip the copy and the parse for every other statement. One pass,
    // trying a keyword only where its first letter is.
    const KEYWORDS: [&[u8]; 5] = [
        b"listen",
        b"discard",
        b"authorization",
        b"deallocate",
        b"set_config",
    ];
    let mentions_one = (0..text.len()).any(|at| {
        let first = text[at].to_ascii_lowercase();
        KEYWORDS.iter().any(|word| {
            word[0] == first
                && text[at..]
                    .get(..word.len())
                    .is_some_and(|w| w.eq_ignore_ascii_case(word))
        })
    });
    if !mentions_one {
        return None;
    }
    Some(String::from_utf8_lossy(text).into_owned())
}

/// Whose session settings are in force in the shared session, and every connection's own.
#[derive(Default)]
pub(crate) struct SessionSettings {
    /// The connection whose settings the session has now.
    applied_for: Option<u32>,
    /// The settings applied for it at its last turn.
    applied: Vec<(String, String)>,
    /// Whether it changed settings since (SET, RESET, DISCARD): then they are read back before
    /// another connection's are applied.
    dirty: bool,
    /// Each connection's settings, by connection id.
    saved: std::collections::HashMap<u32, Vec<(String, String)>>,
}

impl Shared {
    fn settings(&self) -> std::sync::MutexGuard<'_, SessionSettings> {
        self.session_settings.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records whose unnamed statement the session holds once `bytes` have run for `caller`.
    fn note_unnamed(&self, caller: Option<u32>, bytes: &[u8]) {
        for (kind, body, _) in messages::frames(bytes) {
            match messages::unnamed_statement(kind, body) {
                messages::UnnamedStatement::Parsed => self.unnamed_owner.set(caller),
                messages::UnnamedStatement::Dropped => self.unnamed_owner.set(None),
                _ => {}
            }
        }
    }

    /// Sends notifications to the connections listening on their channels.
    fn deliver(&self, notes: Vec<(String, Vec<u8>)>) {
        if notes.is_empty() {
            return;
        }
        let listeners = self.listeners.lock().unwrap_or_else(|e| e.into_inner());
        let mailboxes = self.mailboxes.lock().unwrap_or_else(|e| e.into_inner());
        for (channel, note) in notes {
            for id in listeners.get(&channel).into_iter().flatten() {
                if let Some(mailbox) = mailboxes.get(id) {
                    let _ = mailbox.send(note.clone());
                }
            }
        }
    }

    /// Runs `bytes` on the engine, on this thread, for connection `caller` (`None`: the server
    /// itself). The caller owns the backend (its turn).
    pub(crate) fn exec(
        &self,
        caller: Option<u32>,
        bytes: &[u8],
        more_input: Option<crate::runtime::MoreInput>,
    ) -> Result<Vec<u8>, BackendError> {
        self.note_unnamed(caller, bytes);
        let mut slot = self.engine.borrow_mut();
        let Some(engine) = slot.as_mut() else {
            return Err(BackendError::Dead {
                reason: "the server is stopping".into(),
            });
        };
        let result = engine.exec(bytes, more_input);
        if result.is_ok() {
            self.metrics.sample_memory(engine);
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_statements_naming_a_session_keyword_are_read() {
        let query = |sql: &str| [sql.as_bytes(), b"\0"].concat();
        assert_eq!(
            statement_text(b'Q', &query("Listen jobs")).as_deref(),
            Some("Listen jobs")
        );
        assert_eq!(
            statement_text(b'Q', &query("select 1; DISCARD ALL")).as_deref(),
            Some("select 1; DISCARD ALL")
        );
        assert!(statement_text(b'Q', &query("RESET SESSION AUTHORIZATION")).is_some());
        assert!(statement_text(b'Q', &query("deallocate all")).is_some());
        assert_eq!(statement_text(b'Q', &query("SELECT 1")), None);
        assert_eq!(
            statement_text(b'Q', &query("SELECT 'liste'")),
            None,
            "a keyword cut short"
        );
        let parse = [b"s1\0".as_slice(), &query("LISTEN x"), &[0, 0]].concat();
        assert_eq!(statement_text(b'P', &parse).as_deref(), Some("LISTEN x"));
        assert_eq!(statement_text(b'B', b"\0s1\0"), None);
    }
}
