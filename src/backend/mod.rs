//! One PGlite backend: a PostgreSQL 18.6 session running in its own wasmtime store on a thread of
//! its own, driven with wire-protocol bytes.
//!
//! ```no_run
//! use pglite_harness::Backend;
//! use postgres_protocol::message::frontend;
//!
//! let mut backend = Backend::builder().open()?;           // memory://, booted from the template
//! let mut msg = bytes::BytesMut::new();
//! frontend::query("SELECT version()", &mut msg)?;
//! let reply = backend.exec(&msg)?;                          // RowDescription, DataRow, ..., ReadyForQuery
//! assert_eq!(reply.last(), Some(&b'I'));
//! backend.close()?;                                         // shutdown checkpoint
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod datadir;
mod engine;
mod handoff;
mod log;
mod protocol;
mod simple;

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub use datadir::{DataDir, LOCK_FILE};
pub(crate) use engine::Engine;
pub use protocol::ProtocolError;
pub use simple::{Notification, ServerMessage, SimpleQueryOutput, StatementResult};

use crate::assets;
use crate::runtime::{
    BACKEND_THREAD_STACK, CallError, InstanceSnapshot, InterruptFlags, PgInstance, Runtime, RuntimeError,
};
use crate::vfs::{Durability, Vfs};
use log::ServerLog;
use protocol::StartupPacket;

/// Where PGDATA is mounted in the virtual filesystem.
const PGDATA: &str = "/pglite/data";

/// Errors of a backend.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The engine or module is unavailable.
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    /// PostgreSQL did not start.
    #[error("PostgreSQL failed to start: {reason}")]
    Boot {
        /// What the backend reported (its last FATAL line, or the trap).
        reason: String,
        /// The last lines of the server log.
        log: Vec<String>,
    },
    /// The data directory is open in another backend, in this process or another.
    #[error("data directory {path} is already in use by another PGlite backend (lock file {LOCK_FILE})")]
    DataDirLocked {
        /// The directory.
        path: PathBuf,
    },
    /// The data directory cannot be used.
    #[error("data directory {path}: {reason}")]
    DataDir {
        /// The directory.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// An extension bundle that the package does not ship.
    #[error("unknown extension bundle {name:?}; available: {available}")]
    UnknownExtension {
        /// The name asked for.
        name: String,
        /// The names that exist.
        available: String,
    },
    /// An invalid setting name or value.
    #[error("invalid setting {name:?}: {reason}")]
    InvalidSetting {
        /// The name.
        name: String,
        /// What is wrong.
        reason: String,
    },
    /// The bytes given to `exec` are not complete frontend messages; nothing was executed.
    #[error("malformed frontend message: {0}")]
    Protocol(#[from] ProtocolError),
    /// This call ended the backend (a FATAL error or a trap). `output` holds what it sent
    /// before, usually the FATAL ErrorResponse, for the client.
    #[error("the backend died: {reason}")]
    Fatal {
        /// Why.
        reason: String,
        /// The backend's bytes up to the failure.
        output: Vec<u8>,
    },
    /// The backend died earlier; it serves no more calls.
    #[error("the backend is dead: {reason}")]
    Dead {
        /// Why it died.
        reason: String,
    },
    /// The clean shutdown failed; the data directory will be recovered on next open.
    #[error("shutdown failed: {0}")]
    Shutdown(String),
    /// A saved snapshot could not be written or read.
    #[error("snapshot {}: {reason}", path.display())]
    SnapshotFile {
        /// The snapshot's directory.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The backend cannot be snapshotted; the reason says why.
    #[error("cannot snapshot the backend: {0}")]
    Snapshot(String),
    /// An I/O error outside the data directory.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The cause.
        source: std::io::Error,
    },
}

/// How to start a [`Backend`]; see [`Backend::builder`].
#[derive(Debug, Clone)]
pub struct BackendBuilder {
    data_dir: DataDir,
    settings: Vec<(String, String)>,
    extensions: Vec<String>,
    durability: Durability,
    debug: Option<u8>,
    user: String,
    database: String,
    name: Option<String>,
}

impl Default for BackendBuilder {
    fn default() -> Self {
        Self {
            data_dir: DataDir::Memory,
            settings: Vec::new(),
            extensions: Vec::new(),
            durability: Durability::Relaxed,
            debug: None,
            user: "postgres".into(),
            database: "postgres".into(),
            name: None,
        }
    }
}

/// Settings always passed at start (the official client's, §3.1 step 12).
const OFFICIAL_SETTINGS: &[(&str, &str)] = &[
    ("search_path", "public"),
    ("exit_on_error", "false"),
    ("log_checkpoints", "false"),
    ("max_worker_processes", "0"),
    ("max_parallel_workers", "0"),
    ("max_parallel_workers_per_gather", "0"),
    ("io_method", "sync"),
    ("max_parallel_maintenance_workers", "0"),
];

/// Settings this crate chooses for tests, overridable with [`BackendBuilder::setting`]:
/// 16 MB of shared buffers keeps an instance at the module's 128 MiB minimum of linear memory
/// (the template's 128 MB would grow it to ~190 MiB).
const DEFAULT_SETTINGS: &[(&str, &str)] = &[("shared_buffers", "16MB")];

impl BackendBuilder {
    /// Where the data lives (default: [`DataDir::Memory`]).
    ///
    /// ```no_run
    /// let backend = pglite_harness::Backend::builder().data_dir("./data/app").open()?;
    /// # Ok::<(), pglite_harness::BackendError>(())
    /// ```
    pub fn data_dir(mut self, data_dir: impl Into<DataDir>) -> Self {
        self.data_dir = data_dir.into();
        self
    }

    /// A server setting passed at start as `-c name=value` (e.g. `work_mem`, `shared_buffers`).
    ///
    /// ```no_run
    /// let backend = pglite_harness::Backend::builder().setting("work_mem", "16MB").open()?;
    /// # Ok::<(), pglite_harness::BackendError>(())
    /// ```
    pub fn setting(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.settings.push((name.into(), value.into()));
        self
    }

    /// Makes an extension bundle available (`hstore`, `pg_trgm`, `citext`, `pgcrypto`, ...; see
    /// [`extension_bundle_names`](crate::extension_bundle_names)); `CREATE EXTENSION` then works.
    ///
    /// ```no_run
    /// let backend = pglite_harness::Backend::builder().extension("hstore").open()?;
    /// # Ok::<(), pglite_harness::BackendError>(())
    /// ```
    pub fn extension(mut self, bundle: impl Into<String>) -> Self {
        self.extensions.push(bundle.into());
        self
    }

    /// Whether fsync really syncs (default [`Durability::Relaxed`], PGlite's own: committed data
    /// survives a crash of the process, not necessarily of the machine).
    ///
    /// ```no_run
    /// use pglite_harness::{Backend, Durability};
    ///
    /// let backend = Backend::builder().data_dir("./data/app").durability(Durability::Durable).open()?;
    /// # Ok::<(), pglite_harness::BackendError>(())
    /// ```
    pub fn durability(mut self, durability: Durability) -> Self {
        self.durability = durability;
        self
    }

    /// The role the session runs as (default `postgres`); created as a superuser if missing, and
    /// made the session user, so `current_user` reports it.
    ///
    /// ```no_run
    /// let mut backend = pglite_harness::Backend::builder().user("app").database("app").open()?;
    /// assert_eq!(backend.simple_query("SELECT current_user")?.scalar(), Some("app"));
    /// # Ok::<(), pglite_harness::BackendError>(())
    /// ```
    pub fn user(mut self, user: impl Into<String>) -> Self {
        self.user = user.into();
        self
    }

    /// The database the session is connected to (default `postgres`); created if missing.
    ///
    /// ```no_run
    /// let mut backend = pglite_harness::Backend::builder().database("shop").open()?;
    /// assert_eq!(backend.simple_query("SELECT current_database()")?.scalar(), Some("shop"));
    /// # Ok::<(), pglite_harness::BackendError>(())
    /// ```
    pub fn database(mut self, database: impl Into<String>) -> Self {
        self.database = database.into();
        self
    }

    /// A name for the backend's server log: every line it sends to `tracing` (target
    /// `pglite_harness::server_log`) carries the field `instance = name`, so the logs of several
    /// backends can be told apart.
    ///
    /// ```no_run
    /// let backend = pglite_harness::Backend::builder().name("app").debug(1).open()?;
    /// # Ok::<(), pglite_harness::BackendError>(())
    /// ```
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// Postgres' debug level (`-d N`, 1–5), for its server log.
    ///
    /// ```no_run
    /// // The server log goes to `tracing`, target `pglite_harness::server_log`.
    /// let backend = pglite_harness::Backend::builder().debug(2).open()?;
    /// # Ok::<(), pglite_harness::BackendError>(())
    /// ```
    pub fn debug(mut self, level: u8) -> Self {
        self.debug = Some(level);
        self
    }

    /// Boots the backend.
    ///
    /// ```no_run
    /// let mut backend = pglite_harness::Backend::builder().open()?;
    /// assert_eq!(backend.simple_query("SELECT 1")?.scalar(), Some("1"));
    /// # Ok::<(), pglite_harness::BackendError>(())
    /// ```
    pub fn open(self) -> Result<Backend, BackendError> {
        Backend::open(self)
    }

    fn argv(&self, database: &str) -> Result<Vec<String>, BackendError> {
        let mut argv: Vec<String> = ["/pglite/bin/postgres", "--single"].map(String::from).to_vec();
        if self.durability == Durability::Relaxed {
            argv.push("-F".into());
        }
        argv.extend(["-O", "-j"].map(String::from));
        if let Some(level) = self.debug {
            argv.extend(["-d".to_owned(), level.clamp(1, 5).to_string()]);
        }
        let user = self.settings.iter().map(|(n, v)| (n.as_str(), v.as_str()));
        let defaults = DEFAULT_SETTINGS
            .iter()
            .copied()
            .filter(|(n, _)| !self.settings.iter().any(|(m, _)| m == n));
        for (name, value) in OFFICIAL_SETTINGS.iter().copied().chain(defaults).chain(user) {
            validate_setting(name, value)?;
            argv.extend(["-c".to_owned(), format!("{name}={value}")]);
        }
        argv.extend(["-D".to_owned(), PGDATA.to_owned(), database.to_owned()]);
        Ok(argv)
    }
}

fn validate_setting(name: &str, value: &str) -> Result<(), BackendError> {
    let invalid = |reason: &str| BackendError::InvalidSetting {
        name: name.to_owned(),
        reason: reason.to_owned(),
    };
    if name.is_empty()
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.')
    {
        return Err(invalid("names are letters, digits, '_' and '.'"));
    }
    if value.contains('\0') {
        return Err(invalid("values cannot contain NUL"));
    }
    Ok(())
}

/// A running PGlite backend: one PostgreSQL session in a store of its own, on a thread of its own.
///
/// Each backend is fully isolated from every other (its own linear memory, filesystem and
/// session). It is a single session: [`exec`](Backend::exec) is serial, and the TCP server of this
/// crate is what shares one backend among many clients.
pub struct Backend {
    user: String,
    database: String,
    commands: handoff::Caller<Command, Reply>,
    cancel: CancelHandle,
    thread: Option<JoinHandle<()>>,
    data_dir: DataDir,
    dead: Option<String>,
    boot_time: Duration,
}

impl std::fmt::Debug for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Backend")
            .field("data_dir", &self.data_dir)
            .field("dead", &self.dead)
            .finish_non_exhaustive()
    }
}

/// What the handle asks of the backend thread.
enum Command {
    Exec(Vec<u8>),
    Startup(Vec<u8>),
    InTransaction,
    MemorySize,
    SetBlob(Vec<u8>),
    TakeBlob,
    Snapshot,
    /// Runs code on the backend thread with the engine in hand (see [`Backend::lend`]).
    Lend(Box<dyn FnOnce(Engine) -> Engine + Send>),
    Close,
}

/// The backend thread's answers, one per command.
enum Reply {
    Output(Result<Vec<u8>, BackendError>),
    InTransaction(Result<bool, BackendError>),
    MemorySize(usize),
    Blob(Vec<u8>),
    Snapshot(Result<Box<InstanceSnapshot>, BackendError>),
    /// The engine is back from a loan; why it died meanwhile, if it did.
    Returned(Option<String>),
    Done(Result<(), BackendError>),
}

impl Backend {
    /// A builder: in memory by default, with the official start parameters.
    ///
    /// ```no_run
    /// use pglite_harness::Backend;
    ///
    /// let backend = Backend::builder().user("app").database("app").extension("pg_trgm").open()?;
    /// # Ok::<(), pglite_harness::BackendError>(())
    /// ```
    pub fn builder() -> BackendBuilder {
        BackendBuilder::default()
    }

    fn open(builder: BackendBuilder) -> Result<Backend, BackendError> {
        let started = Instant::now();
        let runtime = Runtime::global()?;
        for (what, name) in [("user", &builder.user), ("database", &builder.database)] {
            if name.is_empty() || name.contains('\0') || name.len() > 63 {
                return Err(BackendError::InvalidSetting {
                    name: what.to_owned(),
                    reason: format!("{name:?} is not a valid {what} name (1 to 63 bytes, no NUL)"),
                });
            }
        }
        let argv = builder.argv("postgres")?;
        let target_argv = builder.argv(&builder.database)?;
        let (user, database) = (builder.user.clone(), builder.database.clone());
        let extensions = builder
            .extensions
            .iter()
            .map(|name| {
                assets::extension_bundle(name).ok_or_else(|| BackendError::UnknownExtension {
                    name: name.clone(),
                    available: assets::extension_bundle_names().collect::<Vec<_>>().join(", "),
                })
            })
            .collect::<Result<Vec<_>, _>>()?;

        let (lock, mut vfs) = match &builder.data_dir {
            DataDir::Memory => (None, fork(memory_template_vfs())?),
            DataDir::Path(dir) => {
                let lock = datadir::prepare(dir)?;
                let mut vfs = fork(base_vfs())?;
                vfs.create_dir_all(PGDATA, 0o700).map_err(|e| vfs_error(dir, e))?;
                vfs.mount_host_dir(PGDATA, dir, builder.durability)
                    .map_err(|e| vfs_error(dir, e))?;
                (Some(lock), vfs)
            }
        };
        for bundle in extensions {
            for (path, mode) in &bundle.dirs {
                vfs.create_dir_all(&format!("/pglite/{path}"), *mode)
                    .map_err(|e| vfs_error(Path::new(path), e))?;
            }
            for file in &bundle.files {
                vfs.write_file(&format!("/pglite/{}", file.path), &file.data, 0o755)
                    .map_err(|e| vfs_error(Path::new(&file.path), e))?;
            }
        }
        let log = ServerLog::labelled(builder.name.clone());
        install_log(&mut vfs, &log);
        let identity = (builder.user, builder.database, builder.data_dir);
        Backend::spawn(identity, lock, log, started, move |log| {
            PgInstance::instantiate(runtime, vfs, environ())
                .and_then(|mut i| i.boot(&argv).map(|()| i))
                .map_err(|e| boot_error(e, log))
                .and_then(|i| become_user_and_database(runtime, i, &user, &database, &target_argv, log))
        })
    }

    /// Starts the backend thread: `start` makes the instance on it, then the thread serves
    /// commands until closed.
    fn spawn(
        (user, database, data_dir): (String, String, DataDir),
        lock: Option<datadir::DataDirLock>,
        log: Arc<ServerLog>,
        started: Instant,
        start: impl FnOnce(&Arc<ServerLog>) -> Result<PgInstance, BackendError> + Send + 'static,
    ) -> Result<Backend, BackendError> {
        let (commands, receiver) = handoff::pair();
        let (ready_tx, ready_rx) = mpsc::sync_channel(1);
        let in_memory = data_dir == DataDir::Memory;
        let thread = std::thread::Builder::new()
            .name("pglite-backend".into())
            .stack_size(BACKEND_THREAD_STACK)
            .spawn(move || {
                let instance = match start(&log) {
                    Ok(instance) => instance,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                receiver.register();
                let _ = ready_tx.send(Ok(instance.interrupts()));
                // The engine (and its instance) is gone when `serve` returns, before the lock.
                serve(Engine::new(instance, log, in_memory), receiver);
                drop(lock);
            })
            .map_err(|source| BackendError::Io {
                context: "cannot start the backend thread".into(),
                source,
            })?;
        let interrupts = match ready_rx.recv() {
            Ok(Ok(flag)) => flag,
            Ok(Err(e)) => {
                let _ = thread.join();
                return Err(e);
            }
            Err(_) => {
                let _ = thread.join();
                return Err(BackendError::Boot {
                    reason: "the backend thread panicked".into(),
                    log: Vec::new(),
                });
            }
        };
        Ok(Backend {
            user,
            database,
            commands,
            cancel: CancelHandle { interrupts },
            thread: Some(thread),
            data_dir,
            dead: None,
            boot_time: started.elapsed(),
        })
    }

    /// Gives the session a fresh start, as a new connection would have: an open transaction is
    /// rolled back; prepared statements, portals, `SET` values, `LISTEN`s, temporary tables and
    /// advisory locks are discarded; the session runs as the backend's user again.
    pub(crate) fn reset_session(&mut self) -> Result<(), BackendError> {
        // A Sync first: after an error in an extended-protocol batch that was never ended (its
        // client gone), the backend ignores everything until one.
        let mut sync = bytes::BytesMut::new();
        postgres_protocol::message::frontend::sync(&mut sync);
        self.exec(&sync)?;
        // One statement per query: DISCARD ALL cannot run in the implicit transaction of a
        // multi-statement query.
        let mut steps = vec!["ROLLBACK".to_owned(), "DISCARD ALL".to_owned()];
        if self.user != "postgres" {
            steps.push(format!(
                "SET SESSION AUTHORIZATION {}",
                quote_identifier(&self.user)
            ));
        }
        for sql in steps {
            if let Some(error) = self.simple_query(&sql)?.error {
                return Err(BackendError::Fatal {
                    reason: format!("resetting the session failed: {sql}: {error}"),
                    output: Vec::new(),
                });
            }
        }
        Ok(())
    }

    /// Freezes this backend — its memory, its session, its in-memory data — into a
    /// [`Snapshot`] that new, fully independent backends start from in about a millisecond
    /// instead of booting. This is how test fixtures give every test a fresh database: boot once,
    /// apply the schema, snapshot, then [`Snapshot::open`] per test.
    ///
    /// The backend must be in memory (`memory://`), idle (outside a transaction block), and must
    /// not have loaded a library yet (PL/pgSQL runs or `CREATE EXTENSION` of an extension with a
    /// shared library): those cases are refused with [`BackendError::Snapshot`]. The backend
    /// itself carries on unchanged.
    ///
    /// ```no_run
    /// use pglite_harness::Backend;
    ///
    /// let mut template = Backend::builder().open()?;
    /// template.simple_query("CREATE TABLE users(id int PRIMARY KEY, name text)")?;
    /// let snapshot = template.snapshot()?;
    /// let mut a = snapshot.open()?;
    /// let mut b = snapshot.open()?;
    /// a.simple_query("INSERT INTO users VALUES (1, 'ada')")?;
    /// assert_eq!(b.simple_query("SELECT count(*) FROM users")?.scalar(), Some("0"));
    /// # Ok::<(), pglite_harness::BackendError>(())
    /// ```
    pub fn snapshot(&mut self) -> Result<Snapshot, BackendError> {
        self.check_alive()?;
        if self.data_dir != DataDir::Memory {
            return Err(BackendError::Snapshot(
                "only a memory:// backend can be snapshotted (its data directory is on disk)".into(),
            ));
        }
        if self.in_transaction()? {
            return Err(BackendError::Snapshot(
                "the backend is inside a transaction block; COMMIT or ROLLBACK first".into(),
            ));
        }
        match self.commands.call(Command::Snapshot) {
            Some(Reply::Snapshot(Ok(instance))) => Ok(Snapshot {
                inner: Arc::new(SnapshotInner {
                    instance: *instance,
                    user: self.user.clone(),
                    database: self.database.clone(),
                }),
            }),
            Some(Reply::Snapshot(Err(e))) => Err(e),
            _ => {
                let reason = "the backend thread is gone".to_owned();
                self.dead = Some(reason.clone());
                Err(BackendError::Dead { reason })
            }
        }
    }

    /// Executes complete frontend messages (simple or extended protocol, COPY data included) and
    /// returns the backend's reply bytes.
    ///
    /// * A StartupMessage (a packet without a type byte) is answered like a fresh connection:
    ///   AuthenticationOk, ParameterStatus, BackendKeyData, ReadyForQuery. SSLRequest and
    ///   GSSENCRequest are answered `N`; CancelRequest and Terminate are not forwarded.
    /// * An SQL error is an ErrorResponse in the reply; the backend keeps serving.
    /// * `COPY ... FROM STDIN` must come with all its CopyData and CopyDone in the same call;
    ///   without them the COPY fails with an error (and the backend survives).
    /// * Malformed bytes are refused with [`BackendError::Protocol`] without reaching Postgres.
    ///
    /// ```no_run
    /// # let mut backend = pglite_harness::Backend::builder().open()?;
    /// let mut msg = bytes::BytesMut::new();
    /// postgres_protocol::message::frontend::query("SELECT 1/0", &mut msg)?;
    /// let reply = backend.exec(&msg)?; // an ErrorResponse (22012), then ReadyForQuery
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn exec(&mut self, messages: &[u8]) -> Result<Vec<u8>, BackendError> {
        if messages.first() == Some(&0) {
            self.check_alive()?;
            return match protocol::startup_packet(messages)? {
                StartupPacket::SslRequest | StartupPacket::GssEncRequest => Ok(b"N".to_vec()),
                StartupPacket::CancelRequest => Ok(Vec::new()),
                StartupPacket::Startup => self.round_trip(Command::Startup(messages.to_vec())),
            };
        }
        self.check_alive()?;
        self.round_trip(Command::Exec(messages.to_vec()))
    }

    fn check_alive(&self) -> Result<(), BackendError> {
        match &self.dead {
            Some(reason) => Err(BackendError::Dead {
                reason: reason.clone(),
            }),
            None => Ok(()),
        }
    }

    fn round_trip(&mut self, command: Command) -> Result<Vec<u8>, BackendError> {
        let reply = self.commands.call(command);
        self.settle(reply)
    }

    /// Turns the backend thread's answer into the caller's result, noting a death.
    fn settle(&mut self, reply: Option<Reply>) -> Result<Vec<u8>, BackendError> {
        match reply {
            Some(Reply::Output(result)) => self.noting_death(result),
            _ => Err(self.thread_gone()),
        }
    }

    /// `result`, after noting the backend's death if it reports one.
    fn noting_death<T>(&mut self, result: Result<T, BackendError>) -> Result<T, BackendError> {
        if let Err(BackendError::Fatal { reason, .. } | BackendError::Dead { reason }) = &result {
            self.dead.get_or_insert_with(|| reason.clone());
        }
        result
    }

    /// Notes that the backend thread ended (it panicked) and says so.
    fn thread_gone(&mut self) -> BackendError {
        let reason = "the backend thread is gone".to_owned();
        self.dead = Some(reason.clone());
        BackendError::Dead { reason }
    }

    /// Runs `f` on the backend's thread with the engine in hand, and returns its result when it
    /// returns the engine: code that drives the backend with many small calls (the server) runs
    /// them there directly instead of handing each one to the thread and back. The backend's
    /// other methods are not available meanwhile (this call blocks its caller throughout).
    pub(crate) fn lend<R: Send + 'static>(
        &mut self,
        f: impl FnOnce(Engine) -> (Engine, R) + Send + 'static,
    ) -> Result<R, BackendError> {
        self.check_alive()?;
        let result = Arc::new(Mutex::new(None));
        let slot = result.clone();
        let lent = Box::new(move |engine: Engine| {
            let (engine, value) = f(engine);
            *slot.lock().unwrap_or_else(|e| e.into_inner()) = Some(value);
            engine
        });
        match self.commands.call(Command::Lend(lent)) {
            Some(Reply::Returned(dead)) => {
                if let Some(reason) = dead {
                    self.dead.get_or_insert(reason);
                }
                let value = result.lock().unwrap_or_else(|e| e.into_inner()).take();
                value.ok_or_else(|| self.thread_gone())
            }
            _ => Err(self.thread_gone()),
        }
    }

    /// Runs `sql` with the simple query protocol and returns its rows as text. An SQL error is
    /// in [`SimpleQueryOutput::error`], not an `Err`: the backend is fine.
    ///
    /// ```no_run
    /// let mut backend = pglite_harness::Backend::builder().open()?;
    /// let out = backend.simple_query("SELECT 6 * 7 AS answer")?;
    /// assert_eq!(out.scalar(), Some("42"));
    /// # Ok::<(), pglite_harness::BackendError>(())
    /// ```
    pub fn simple_query(&mut self, sql: &str) -> Result<SimpleQueryOutput, BackendError> {
        let mut msg = bytes::BytesMut::new();
        postgres_protocol::message::frontend::query(sql, &mut msg).map_err(|source| BackendError::Io {
            context: "cannot encode the query".into(),
            source,
        })?;
        Ok(SimpleQueryOutput::parse(&self.exec(&msg)?))
    }

    /// Whether a transaction block is open (the session is not idle).
    ///
    /// ```no_run
    /// # let mut backend = pglite_harness::Backend::builder().open()?;
    /// backend.simple_query("BEGIN")?;
    /// assert!(backend.in_transaction()?);
    /// backend.simple_query("COMMIT")?;
    /// assert!(!backend.in_transaction()?);
    /// # Ok::<(), pglite_harness::BackendError>(())
    /// ```
    pub fn in_transaction(&mut self) -> Result<bool, BackendError> {
        self.check_alive()?;
        match self.commands.call(Command::InTransaction) {
            Some(Reply::InTransaction(result)) => self.noting_death(result),
            _ => Err(self.thread_gone()),
        }
    }

    /// A handle that cancels whatever statement the backend is running, from any thread.
    ///
    /// ```no_run
    /// let mut backend = pglite_harness::Backend::builder().open()?;
    /// let cancel = backend.cancel_handle(); // Clone + Send: give it to another thread
    /// std::thread::spawn(move || cancel.cancel());
    /// # Ok::<(), pglite_harness::BackendError>(())
    /// ```
    pub fn cancel_handle(&self) -> CancelHandle {
        self.cancel.clone()
    }

    /// The role the session runs as.
    ///
    /// ```no_run
    /// let backend = pglite_harness::Backend::builder().user("app").open()?;
    /// assert_eq!(backend.user(), "app");
    /// # Ok::<(), pglite_harness::BackendError>(())
    /// ```
    pub fn user(&self) -> &str {
        &self.user
    }

    /// The database the session is connected to.
    ///
    /// ```no_run
    /// let backend = pglite_harness::Backend::builder().database("shop").open()?;
    /// assert_eq!(backend.database(), "shop");
    /// # Ok::<(), pglite_harness::BackendError>(())
    /// ```
    pub fn database(&self) -> &str {
        &self.database
    }

    /// Why the backend died, if it did.
    ///
    /// ```no_run
    /// let backend = pglite_harness::Backend::builder().open()?;
    /// assert_eq!(backend.dead_reason(), None); // alive
    /// # Ok::<(), pglite_harness::BackendError>(())
    /// ```
    pub fn dead_reason(&self) -> Option<&str> {
        self.dead.as_deref()
    }

    /// Where its data lives.
    ///
    /// ```no_run
    /// use pglite_harness::{Backend, DataDir};
    ///
    /// let backend = Backend::builder().data_dir("./data/app").open()?;
    /// assert_eq!(backend.data_dir(), &DataDir::Path("./data/app".into()));
    /// # Ok::<(), pglite_harness::BackendError>(())
    /// ```
    pub fn data_dir(&self) -> &DataDir {
        &self.data_dir
    }

    /// How long [`BackendBuilder::open`] took.
    ///
    /// ```no_run
    /// let backend = pglite_harness::Backend::builder().open()?;
    /// println!("booted in {:?}", backend.boot_time());
    /// # Ok::<(), pglite_harness::BackendError>(())
    /// ```
    pub fn boot_time(&self) -> Duration {
        self.boot_time
    }

    /// Size of the backend's linear memory in bytes.
    ///
    /// ```no_run
    /// let backend = pglite_harness::Backend::builder().open()?;
    /// println!("{} MiB of linear memory", backend.memory_size() >> 20);
    /// # Ok::<(), pglite_harness::BackendError>(())
    /// ```
    pub fn memory_size(&self) -> usize {
        match self.commands.call(Command::MemorySize) {
            Some(Reply::MemorySize(size)) => size,
            _ => 0,
        }
    }

    /// Sets the bytes `COPY ... FROM '/dev/blob'` reads, like the `blob` option of PGlite's
    /// `query()`.
    ///
    /// ```no_run
    /// # let mut backend = pglite_harness::Backend::builder().open()?;
    /// backend.simple_query("CREATE TABLE t(a int, b text)")?;
    /// backend.set_copy_blob(b"1,one\n2,two\n".to_vec());
    /// backend.simple_query("COPY t FROM '/dev/blob' (FORMAT csv)")?;
    /// # Ok::<(), pglite_harness::BackendError>(())
    /// ```
    pub fn set_copy_blob(&mut self, data: Vec<u8>) {
        let _ = self.commands.call(Command::SetBlob(data));
    }

    /// Takes what `COPY ... TO '/dev/blob'` wrote since the last call.
    ///
    /// ```no_run
    /// # let mut backend = pglite_harness::Backend::builder().open()?;
    /// backend.simple_query("COPY (SELECT 1, 'one') TO '/dev/blob' (FORMAT csv)")?;
    /// assert_eq!(backend.take_copy_blob(), b"1,one\n");
    /// # Ok::<(), pglite_harness::BackendError>(())
    /// ```
    pub fn take_copy_blob(&mut self) -> Vec<u8> {
        match self.commands.call(Command::TakeBlob) {
            Some(Reply::Blob(data)) => data,
            _ => Vec::new(),
        }
    }

    /// Shuts down cleanly: a shutdown checkpoint, so that a data directory reopens without
    /// recovery, then the lock is released. Dropping a backend does the same, ignoring errors.
    ///
    /// ```no_run
    /// let mut backend = pglite_harness::Backend::builder().data_dir("./data/app").open()?;
    /// backend.simple_query("CREATE TABLE t(id int)")?;
    /// backend.close()?; // checkpointed: reopens without recovery
    /// # Ok::<(), pglite_harness::BackendError>(())
    /// ```
    pub fn close(mut self) -> Result<(), BackendError> {
        self.shutdown()
    }

    fn shutdown(&mut self) -> Result<(), BackendError> {
        let Some(thread) = self.thread.take() else {
            return Ok(());
        };
        let result = match self.commands.call(Command::Close) {
            Some(Reply::Done(result)) => result,
            _ => Ok(()),
        };
        let _ = thread.join();
        match (result, &self.dead) {
            (_, Some(_)) | (Ok(()), None) => Ok(()),
            (Err(e), None) => Err(e),
        }
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        if let Err(e) = self.shutdown() {
            tracing::warn!("PGlite backend shutdown on drop: {e}");
        }
    }
}

/// A booted backend frozen in time (see [`Backend::snapshot`]); cheap to clone and to share
/// between threads. Each [`open`](Snapshot::open) starts a new independent backend from it: its
/// linear memory mapped copy-on-write from the snapshot, its in-memory files shared until
/// written.
#[derive(Clone)]
pub struct Snapshot {
    inner: Arc<SnapshotInner>,
}

struct SnapshotInner {
    instance: InstanceSnapshot,
    user: String,
    database: String,
}

impl std::fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Snapshot")
            .field("user", &self.inner.user)
            .field("database", &self.inner.database)
            .field("memory_size", &self.inner.instance.memory_size())
            .finish()
    }
}

impl Snapshot {
    /// Starts a new backend from the snapshot: same data, same session (user, database,
    /// settings), nothing shared with any other backend.
    ///
    /// ```no_run
    /// let snapshot = pglite_harness::Backend::builder().open()?.snapshot()?;
    /// let mut fresh = snapshot.open()?;
    /// assert_eq!(fresh.simple_query("SELECT 1")?.scalar(), Some("1"));
    /// # Ok::<(), pglite_harness::BackendError>(())
    /// ```
    pub fn open(&self) -> Result<Backend, BackendError> {
        let started = Instant::now();
        let runtime = Runtime::global()?;
        let inner = self.inner.clone();
        let identity = (inner.user.clone(), inner.database.clone(), DataDir::Memory);
        Backend::spawn(identity, None, ServerLog::new(), started, move |log| {
            let mut vfs = inner.instance.fork_vfs().map_err(|e| boot_error(e, log))?;
            install_log(&mut vfs, log);
            PgInstance::restore(runtime, &inner.instance, vfs).map_err(|e| boot_error(e, log))
        })
    }

    /// Saves the snapshot as the directory `dir` (written under a temporary name, then renamed
    /// into place, so `dir` appears whole or not at all; an existing `dir` is left as it is).
    /// [`Snapshot::load`] reads it back, in this process or another: the memory is mapped from
    /// the file, shared by every backend opened from it.
    ///
    /// ```no_run
    /// # use pglite_harness::{Backend, Snapshot};
    /// let snapshot = Backend::builder().open()?.snapshot()?;
    /// snapshot.save("/tmp/my-template")?;
    /// let again = Snapshot::load("/tmp/my-template")?;
    /// let backend = again.open()?;
    /// # Ok::<(), pglite_harness::BackendError>(())
    /// ```
    pub fn save(&self, dir: impl AsRef<Path>) -> Result<(), BackendError> {
        let label = format!("{}\0{}", self.inner.user, self.inner.database);
        crate::runtime::save_snapshot(&self.inner.instance, label.as_bytes(), dir.as_ref())
            .map_err(|e| snapshot_file_error(dir.as_ref(), e))
    }

    /// Reads a snapshot saved by [`Snapshot::save`]. Damaged or foreign files are refused with
    /// [`BackendError::SnapshotFile`].
    ///
    /// ```no_run
    /// let snapshot = pglite_harness::Snapshot::load("/tmp/my-template")?;
    /// let mut backend = snapshot.open()?;
    /// # Ok::<(), pglite_harness::BackendError>(())
    /// ```
    pub fn load(dir: impl AsRef<Path>) -> Result<Snapshot, BackendError> {
        let (instance, label) =
            crate::runtime::load_snapshot(dir.as_ref()).map_err(|e| snapshot_file_error(dir.as_ref(), e))?;
        let label = String::from_utf8(label).unwrap_or_default();
        let Some((user, database)) = label.split_once('\0') else {
            return Err(snapshot_file_error(
                dir.as_ref(),
                crate::runtime::SnapshotFileError::Invalid(
                    "the snapshot does not name its user and database".into(),
                ),
            ));
        };
        Ok(Snapshot {
            inner: Arc::new(SnapshotInner {
                instance,
                user: user.to_owned(),
                database: database.to_owned(),
            }),
        })
    }

    /// The role the snapshot's session runs as.
    ///
    /// ```no_run
    /// let snapshot = pglite_harness::Backend::builder().user("app").open()?.snapshot()?;
    /// assert_eq!(snapshot.user(), "app");
    /// # Ok::<(), pglite_harness::BackendError>(())
    /// ```
    pub fn user(&self) -> &str {
        &self.inner.user
    }

    /// The database the snapshot's session is connected to.
    ///
    /// ```no_run
    /// let snapshot = pglite_harness::Backend::builder().database("shop").open()?.snapshot()?;
    /// assert_eq!(snapshot.database(), "shop");
    /// # Ok::<(), pglite_harness::BackendError>(())
    /// ```
    pub fn database(&self) -> &str {
        &self.inner.database
    }
}

fn snapshot_file_error(dir: &Path, e: crate::runtime::SnapshotFileError) -> BackendError {
    BackendError::SnapshotFile {
        path: dir.to_owned(),
        reason: e.to_string(),
    }
}

/// Sends the instance's stdout and stderr (Postgres' server log) to `log`.
fn install_log(vfs: &mut Vfs, log: &Arc<ServerLog>) {
    for fd in [1, 2] {
        let log = log.clone();
        vfs.set_output_sink(fd, Arc::new(move |bytes: &[u8]| log.write(bytes)));
    }
}

/// Cancels the statement a [`Backend`] is running, like a CancelRequest to a real server: the
/// statement ends with error 57014 (`canceling statement due to user request`) and the backend
/// keeps serving. Without a running statement, the next one that checks for interrupts is
/// cancelled, as in Postgres; [`CancelHandle::withdraw`] takes a request back.
///
/// ```no_run
/// let mut backend = pglite_harness::Backend::builder().open()?;
/// let cancel = backend.cancel_handle();
/// std::thread::spawn(move || { std::thread::sleep(std::time::Duration::from_millis(100)); cancel.cancel() });
/// let out = backend.simple_query("SELECT pg_sleep(30)")?;
/// assert_eq!(out.error.unwrap().code, "57014");
/// # Ok::<(), pglite_harness::BackendError>(())
/// ```
#[derive(Clone)]
pub struct CancelHandle {
    interrupts: Arc<InterruptFlags>,
}

impl std::fmt::Debug for CancelHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CancelHandle").finish_non_exhaustive()
    }
}

impl CancelHandle {
    /// Requests the cancel.
    ///
    /// ```no_run
    /// # let mut backend = pglite_harness::Backend::builder().open()?;
    /// backend.cancel_handle().cancel(); // nothing runs now: the next statement is cancelled
    /// let out = backend.simple_query("SELECT pg_sleep(30)")?;
    /// assert_eq!(out.error.unwrap().code, "57014");
    /// # Ok::<(), pglite_harness::BackendError>(())
    /// ```
    pub fn cancel(&self) {
        self.interrupts.request();
    }

    /// Takes back a request not yet acted on (call it between statements: a running statement
    /// may already have seen the request).
    ///
    /// ```no_run
    /// # let mut backend = pglite_harness::Backend::builder().open()?;
    /// let cancel = backend.cancel_handle();
    /// cancel.cancel();
    /// cancel.withdraw(); // taken back before a statement saw it
    /// assert!(backend.simple_query("SELECT 1")?.error.is_none());
    /// # Ok::<(), pglite_harness::BackendError>(())
    /// ```
    pub fn withdraw(&self) {
        self.interrupts.withdraw();
    }
}

/// The worker loop: runs commands until `Close` or until the handle is dropped.
fn serve(mut engine: Engine, commands: handoff::Worker<Command, Reply>) {
    while let Some(command) = commands.recv() {
        let reply = match command {
            Command::Exec(bytes) => Reply::Output(engine.exec(&bytes, None)),
            Command::Startup(bytes) => Reply::Output(engine.startup(&bytes)),
            Command::InTransaction => Reply::InTransaction(engine.in_transaction()),
            Command::MemorySize => Reply::MemorySize(engine.memory_size()),
            Command::SetBlob(data) => {
                engine.instance_mut().vfs_mut().set_blob_input(data);
                Reply::Done(Ok(()))
            }
            Command::TakeBlob => Reply::Blob(engine.instance_mut().vfs_mut().take_blob_output()),
            Command::Snapshot => Reply::Snapshot(match engine.dead_reason() {
                Some(reason) => Err(BackendError::Dead {
                    reason: reason.to_owned(),
                }),
                None => engine
                    .instance_mut()
                    .snapshot()
                    .map(Box::new)
                    .map_err(|e| BackendError::Snapshot(e.to_string())),
            }),
            Command::Lend(f) => {
                engine = f(engine);
                Reply::Returned(engine.dead_reason().map(str::to_owned))
            }
            Command::Close => {
                commands.reply(Reply::Done(engine.shut_down()));
                return;
            }
        };
        commands.reply(reply);
    }
    // The handle was dropped without Close (it always sends Close; this is a panic path).
    let _ = engine.shut_down();
}

/// Makes a freshly booted instance (database `postgres`, role `postgres`) run as `user` in
/// `database`: both are created if missing, and the instance is rebooted into the database.
fn become_user_and_database(
    runtime: &'static Runtime,
    mut instance: PgInstance,
    user: &str,
    database: &str,
    target_argv: &[String],
    log: &ServerLog,
) -> Result<PgInstance, BackendError> {
    let sql = |instance: &mut PgInstance, sql: &str| -> Result<SimpleQueryOutput, BackendError> {
        let mut msg = bytes::BytesMut::new();
        let _ = postgres_protocol::message::frontend::query(sql, &mut msg);
        let (output, result) = instance.exec(&msg, None);
        result.map_err(|e| boot_error(e, log))?;
        let out = SimpleQueryOutput::parse(&output);
        match out.error {
            Some(error) => Err(BackendError::Boot {
                reason: format!("{sql}: {error}"),
                log: log.recent(),
            }),
            None => Ok(out),
        }
    };
    if user != "postgres" {
        let exists = sql(
            &mut instance,
            &format!("SELECT 1 FROM pg_roles WHERE rolname = {}", quote_literal(user)),
        )?;
        if exists.rows().is_empty() {
            sql(
                &mut instance,
                &format!("CREATE ROLE {} SUPERUSER LOGIN", quote_identifier(user)),
            )?;
        }
    }
    if database != "postgres" {
        let exists = sql(
            &mut instance,
            &format!(
                "SELECT 1 FROM pg_database WHERE datname = {}",
                quote_literal(database)
            ),
        )?;
        if exists.rows().is_empty() {
            sql(
                &mut instance,
                &format!(
                    "CREATE DATABASE {} OWNER {}",
                    quote_identifier(database),
                    quote_identifier(user)
                ),
            )?;
        }
        // A backend is bound to one database: reboot into it, on the same filesystem.
        instance.shutdown().map_err(|e| boot_error(e, log))?;
        let vfs = instance.into_vfs();
        instance = PgInstance::instantiate(runtime, vfs, environ())
            .and_then(|mut i| i.boot(target_argv).map(|()| i))
            .map_err(|e| boot_error(e, log))?;
    }
    if user != "postgres" {
        sql(
            &mut instance,
            &format!("SET SESSION AUTHORIZATION {}", quote_identifier(user)),
        )?;
    }
    Ok(instance)
}

/// Quotes `name` as an SQL identifier.
pub(crate) fn quote_identifier(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Quotes `value` as an SQL string literal.
pub(crate) fn quote_literal(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

fn boot_error(e: CallError, log: &ServerLog) -> BackendError {
    let reason = match log.last_problem() {
        Some(line) => format!("{line} ({e})"),
        None => e.to_string(),
    };
    BackendError::Boot {
        reason,
        log: log.recent(),
    }
}

/// The last ErrorResponse in `output`, as text.
fn fatal_reason(output: &[u8]) -> Option<String> {
    SimpleQueryOutput::parse(output).error.map(|e| e.to_string())
}

/// The environment of §3.1, as libc sees it.
fn environ() -> Vec<Vec<u8>> {
    [
        "USER=postgres",
        "LOGNAME=postgres",
        "PATH=/",
        "PWD=/",
        "HOME=/home/postgres",
        "LANG=en_US.UTF-8",
        "_=/pglite/bin/postgres",
        "PGDATA=/pglite/data",
        "PGUSER=postgres",
        "PGDATABASE=postgres",
        "LC_CTYPE=en_US.UTF-8",
        "LC_COLLATE=en_US.UTF-8",
        "TZ=UTC",
        "PGTZ=UTC",
        "PGCLIENTENCODING=UTF8",
        "ICU_DATA=/pglite/icu",
    ]
    .iter()
    .map(|kv| kv.as_bytes().to_vec())
    .collect()
}

/// The filesystem every instance starts from: the contents of `pglite.data`.
fn base_vfs() -> &'static Mutex<Vfs> {
    static BASE: OnceLock<Mutex<Vfs>> = OnceLock::new();
    BASE.get_or_init(|| {
        let mut vfs = Vfs::new();
        let tree = assets::pglite_data_tree();
        for (dir, mode) in &tree.dirs {
            vfs.create_dir_all(dir, *mode)
                .expect("package directories are valid paths");
        }
        for file in &tree.files {
            vfs.write_file(&file.path, &file.data, file.mode)
                .expect("package files are valid paths");
        }
        vfs.create_dir_all(PGDATA, 0o700).expect("PGDATA is a valid path");
        Mutex::new(vfs)
    })
}

/// [`base_vfs`] with the template PGDATA in memory: what a `memory://` instance starts from.
fn memory_template_vfs() -> &'static Mutex<Vfs> {
    static TEMPLATE: OnceLock<Mutex<Vfs>> = OnceLock::new();
    TEMPLATE.get_or_init(|| {
        let mut vfs = base_vfs()
            .lock()
            .expect("base vfs")
            .fork()
            .expect("the base filesystem has no host mounts");
        let template = assets::pgdata_template();
        for (dir, mode) in &template.dirs {
            vfs.create_dir_all(&format!("{PGDATA}/{dir}"), *mode)
                .expect("template directories are valid paths");
        }
        for file in &template.files {
            vfs.write_file(&format!("{PGDATA}/{}", file.path), &file.data, file.mode)
                .expect("template files are valid paths");
        }
        Mutex::new(vfs)
    })
}

fn fork(template: &Mutex<Vfs>) -> Result<Vfs, BackendError> {
    template
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .fork()
        .map_err(|e| BackendError::Io {
            context: "cannot copy the template filesystem".into(),
            source: std::io::Error::other(e.to_string()),
        })
}

fn vfs_error(path: &Path, e: crate::vfs::Errno) -> BackendError {
    BackendError::DataDir {
        path: path.to_owned(),
        reason: format!("virtual filesystem: {e}"),
    }
}
