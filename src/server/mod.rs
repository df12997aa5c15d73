//! A PostgreSQL wire-protocol server in front of one [`Backend`]: many clients, one session,
//! correct results.
//!
//! PGlite is a single Postgres session. The server shares it the way a real server would look to
//! clients whose transactions happen not to overlap:
//! * a connection owns the backend from its first message until the backend is idle again
//!   (ReadyForQuery `I`): a whole transaction, a whole extended-protocol batch up to Sync. Others
//!   wait their turn in FIFO order; nothing interleaves inside a transaction;
//! * prepared statement and portal names are per connection (renamed on the way in, and back in
//!   error texts), so two clients may both prepare `s1`;
//! * a client that disconnects has its open transaction rolled back and its prepared statements
//!   closed; one that stays idle inside a transaction longer than the idle timeout is ended with
//!   Postgres' own error (25P03) and rolled back;
//! * malformed bytes are answered with a protocol-violation error on that connection only and
//!   never reach the backend.
//!
//! `SET` values, `SET SESSION AUTHORIZATION` and `SET ROLE` are per connection: each
//! connection's are put in force when it takes its turn.
//! Temporary tables and advisory locks belong to the one shared session; `LISTEN` registers in it,
//! but a notification is delivered only to the connections listening on its channel.
//!
//! The connections run on the backend's own thread, which reads a client's messages, runs them
//! and writes the reply, as a Postgres backend process does; a statement therefore never waits
//! for a hand-over between threads. New clients, and CancelRequests for a running statement, are
//! taken meanwhile by one accept thread shared by every server of the process.
//!
//! ```no_run
//! use pglite_harness::{Backend, Server};
//!
//! let server = Server::builder().start(Backend::builder().open()?)?;
//! println!("connect to {}", server.url());          // postgresql://postgres@127.0.0.1:PORT/postgres
//! server.shutdown()?;                               // clean shutdown of the backend
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod accept;
mod blocking;
mod connection;
mod messages;
mod metrics;
mod scram;
mod session;

use std::cell::RefCell;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use crate::backend::{Backend, BackendError, Engine};
pub use metrics::ServerMetrics;

/// Errors of the server layer.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The address could not be bound (a port in use, an address not on this machine).
    #[error("cannot listen on {address}: {source}")]
    Bind {
        /// The address.
        address: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The server's runtime could not be started.
    #[error("cannot start the server runtime: {0}")]
    Runtime(std::io::Error),
    /// The backend refused the connection setup or failed at shutdown.
    #[error(transparent)]
    Backend(#[from] BackendError),
    /// The backend did not answer a health check in time (busy with a long statement or
    /// transaction, or hung).
    #[error("the backend did not answer SELECT 1 within {0:?}")]
    Timeout(Duration),
}

/// How to run a [`Server`]; see [`Server::builder`].
#[derive(Debug, Clone)]
pub struct ServerBuilder {
    host: String,
    port: u16,
    user: String,
    database: String,
    password: Option<String>,
    unix_socket_dir: Option<std::path::PathBuf>,
    idle_in_transaction_timeout: Duration,
    max_message_size: usize,
}

impl Default for ServerBuilder {
    fn default() -> Self {
        Self {
            host: "127.0.0.1".into(),
            port: 0,
            user: "postgres".into(),
            database: "postgres".into(),
            password: None,
            unix_socket_dir: None,
            idle_in_transaction_timeout: Duration::from_secs(60),
            max_message_size: 1 << 30,
        }
    }
}

impl ServerBuilder {
    /// The address to listen on (default `127.0.0.1`).
    ///
    /// ```no_run
    /// # use pglite_harness::{Backend, Server};
    /// let server = Server::builder().host("0.0.0.0").start(Backend::builder().open()?)?; // all interfaces
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn host(mut self, host: impl Into<String>) -> Self {
        self.host = host.into();
        self
    }

    /// The port (default 0: the OS picks a free one, see [`Server::port`]).
    ///
    /// ```no_run
    /// # use pglite_harness::{Backend, Server};
    /// let server = Server::builder().port(5433).start(Backend::builder().open()?)?;
    /// assert_eq!(server.port(), 5433);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn port(mut self, port: u16) -> Self {
        self.port = port;
        self
    }

    /// Requires this password, checked with SCRAM-SHA-256 (what sqlx, tokio-postgres and libpq
    /// negotiate by default). Without one, authentication is `trust`.
    ///
    /// ```no_run
    /// # use pglite_harness::{Backend, Server};
    /// let server = Server::builder().password("secret").start(Backend::builder().open()?)?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn password(mut self, password: impl Into<String>) -> Self {
        self.password = Some(password.into());
        self
    }

    /// Also listens on a Unix socket in `dir`, named as Postgres names it (`.s.PGSQL.<port>`), so
    /// `psql -h DIR -p PORT` and libpq URLs with `host=DIR` connect without TCP.
    ///
    /// ```no_run
    /// # use pglite_harness::{Backend, Server};
    /// let dir = std::env::temp_dir();
    /// let server = Server::builder().unix_socket_dir(&dir).start(Backend::builder().open()?)?;
    /// println!("{}", server.unix_socket_path().unwrap().display());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn unix_socket_dir(mut self, dir: impl Into<std::path::PathBuf>) -> Self {
        self.unix_socket_dir = Some(dir.into());
        self
    }

    /// How long a client may sit idle inside a transaction while others wait for the backend
    /// (default 60 s). After it, the client's connection ends with error 25P03 and its
    /// transaction is rolled back.
    ///
    /// ```no_run
    /// # use pglite_harness::{Backend, Server};
    /// use std::time::Duration;
    ///
    /// let builder = Server::builder().idle_in_transaction_timeout(Duration::from_secs(5));
    /// let server = builder.start(Backend::builder().open()?)?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn idle_in_transaction_timeout(mut self, timeout: Duration) -> Self {
        self.idle_in_transaction_timeout = timeout;
        self
    }

    /// The largest message a client may send (default 1 GiB, as Postgres).
    ///
    /// ```no_run
    /// # use pglite_harness::{Backend, Server};
    /// let server = Server::builder().max_message_size(64 << 20).start(Backend::builder().open()?)?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn max_message_size(mut self, bytes: usize) -> Self {
        self.max_message_size = bytes;
        self
    }

    /// Serves `backend` on the configured address. The connections run on the backend's own
    /// thread (a batch runs there directly, with no hand-over between threads); new clients
    /// and CancelRequests are taken by one accept thread shared by every server of the process.
    ///
    /// ```no_run
    /// # use pglite_harness::{Backend, Server};
    /// let server = Server::builder().port(0).start(Backend::builder().open()?)?;
    /// assert_ne!(server.port(), 0);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn start(mut self, mut backend: Backend) -> Result<Server, ServerError> {
        // The instance's user and database are the backend's.
        self.user = backend.user().to_owned();
        self.database = backend.database().to_owned();
        // What every client is told at startup (server_version, encodings, DateStyle, ...).
        let mut startup = bytes::BytesMut::new();
        postgres_protocol::message::frontend::startup_message(
            [("user", self.user.as_str()), ("database", self.database.as_str())],
            &mut startup,
        )
        .map_err(ServerError::Runtime)?;
        let parameter_statuses = messages::parameter_statuses(&backend.exec(&startup)?);
        // The backend holds reports of settings changed before (its boot, the instance's own
        // SETs) for the end of its next query: an empty one takes them, so that no client's
        // first reply carries them.
        let mut empty_query = bytes::BytesMut::new();
        postgres_protocol::message::frontend::query("", &mut empty_query).map_err(ServerError::Runtime)?;
        backend.exec(&empty_query)?;

        let address = format!("{}:{}", self.host, self.port);
        let listener = std::net::TcpListener::bind(&address)
            .and_then(|l| l.set_nonblocking(true).map(|()| l))
            .map_err(|source| ServerError::Bind {
                address: address.clone(),
                source,
            })?;
        let local_addr = listener
            .local_addr()
            .map_err(|source| ServerError::Bind { address, source })?;
        let unix_socket = match &self.unix_socket_dir {
            Some(dir) => {
                let path = dir.join(format!(".s.PGSQL.{}", local_addr.port()));
                let listener = std::os::unix::net::UnixListener::bind(&path)
                    .and_then(|l| l.set_nonblocking(true).map(|()| l))
                    .map_err(|source| ServerError::Bind {
                        address: path.display().to_string(),
                        source,
                    })?;
                Some((listener, path))
            }
            None => None,
        };
        let unix_socket_path = unix_socket.as_ref().map(|(_, path)| path.clone());
        // The connections run on the backend's thread, in a runtime of their own: one thread,
        // since the backend runs one batch at a time anyway.
        let watchlist = blocking::Watchlist::default();
        let watching = watchlist.clone();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .on_thread_park(move || watching.spin_until_readable(PARK_SPIN))
            .build()
            .map_err(ServerError::Runtime)?;

        let counters = Arc::new(metrics::Counters::default());
        counters.set_memory_size(backend.memory_size());
        let cancels = Arc::new(accept::CancelRegistry::new(backend.cancel_handle()));
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let stopping = blocking::StopSignal::new().map_err(ServerError::Runtime)?;
        let (arrivals_tx, arrivals_rx) = tokio::sync::mpsc::unbounded_channel();
        let (requests_tx, requests_rx) = tokio::sync::mpsc::unbounded_channel();
        let listening = accept::listen(
            listener,
            unix_socket.map(|(l, _)| l),
            cancels.clone(),
            arrivals_tx,
            stop_rx.clone(),
        )
        .map_err(ServerError::Runtime)?;
        let config = self.clone();
        let serving = Serving {
            config: self,
            counters: counters.clone(),
            cancels,
            parameter_statuses,
            watchlist,
            arrivals: arrivals_rx,
            requests: requests_rx,
            stop: stop_rx,
            stopping: stopping.clone(),
        };
        // This thread lends the backend to the server for as long as it runs (the connections
        // then run on the backend's thread), and hands it back at the end.
        let thread = std::thread::Builder::new()
            .name("pglite-server".into())
            .stack_size(256 << 10)
            .spawn(move || -> Option<Backend> {
                match backend.lend(move |engine| serving.run(engine, runtime)) {
                    Ok(()) => Some(backend),
                    Err(e) => {
                        tracing::error!("the server's backend failed: {e}");
                        None
                    }
                }
            })
            .map_err(ServerError::Runtime)?;
        Ok(Server {
            local_addr,
            config,
            unix_socket_path,
            thread: Some(thread),
            stop: stop_tx,
            stopping,
            listening: Some(std::sync::Mutex::new(listening)),
            monitor: Some(Monitor {
                requests: requests_tx,
                counters,
            }),
        })
    }
}

/// What the server's thread needs to serve.
struct Serving {
    config: ServerBuilder,
    counters: Arc<metrics::Counters>,
    cancels: Arc<accept::CancelRegistry>,
    parameter_statuses: Vec<u8>,
    /// The client sockets, watched before the thread sleeps.
    watchlist: blocking::Watchlist,
    /// Clients from the accept thread, past their StartupMessage.
    arrivals: tokio::sync::mpsc::UnboundedReceiver<accept::Arrival>,
    /// Health checks from [`Server::ping`].
    requests: tokio::sync::mpsc::UnboundedReceiver<PingRequest>,
    stop: tokio::sync::watch::Receiver<bool>,
    stopping: blocking::StopSignal,
}

/// A [`Server::ping`] waiting for its answer.
struct PingRequest {
    timeout: Duration,
    answer: std::sync::mpsc::SyncSender<Result<Duration, ServerError>>,
}

impl Serving {
    /// Serves clients on the backend's thread until told to stop; returns the engine.
    fn run(mut self, engine: Engine, runtime: tokio::runtime::Runtime) -> (Engine, ()) {
        let shared = Rc::new(connection::Shared {
            engine: RefCell::new(Some(engine)),
            turn: Arc::new(tokio::sync::Mutex::new(())),
            cancels: self.cancels.clone(),
            unnamed_owner: std::cell::Cell::new(None),
            verifier: self
                .config
                .password
                .as_deref()
                .map(scram::ScramVerifier::from_password),
            listeners: std::sync::Mutex::new(std::collections::HashMap::new()),
            mailboxes: std::sync::Mutex::new(std::collections::HashMap::new()),
            session_settings: std::sync::Mutex::new(Default::default()),
            parameter_statuses: std::mem::take(&mut self.parameter_statuses),
            config: self.config.clone(),
            next_id: AtomicU32::new(1),
            metrics: self.counters.clone(),
            clients: std::cell::Cell::new(0),
            stopping: self.stopping.clone(),
        });
        let tasks = tokio::task::LocalSet::new();
        tasks.block_on(&runtime, self.serve(shared.clone()));
        // Every connection's task goes with the set, and with it every use of the engine.
        drop(tasks);
        drop(runtime);
        let engine = shared
            .engine
            .borrow_mut()
            .take()
            .expect("the engine is taken back only once");
        (engine, ())
    }

    async fn serve(mut self, shared: Rc<connection::Shared>) {
        loop {
            tokio::select! {
                arrival = self.arrivals.recv() => match arrival {
                    Some(arrival) => {
                        if let Err(e) = Self::welcome(arrival, &shared, &self.watchlist) {
                            tracing::warn!("cannot serve a client: {e}");
                        }
                    }
                    None => break,
                },
                Some(request) = self.requests.recv() => {
                    let shared = shared.clone();
                    tokio::task::spawn_local(async move {
                        let _ = request.answer.send(metrics::ping(shared, request.timeout).await);
                    });
                }
                _ = self.stop.changed() => break,
            }
        }
    }

    /// Starts serving a client that sent its StartupMessage.
    fn welcome(
        arrival: accept::Arrival,
        shared: &Rc<connection::Shared>,
        watchlist: &blocking::Watchlist,
    ) -> std::io::Result<()> {
        let accept::Arrival { stream, parameters } = arrival;
        let (reader, writer, socket): (connection::ClientReader, connection::ClientWriter, _) = match stream {
            accept::ClientStream::Tcp(stream) => {
                let stream = tokio::net::TcpStream::from_std(stream)?;
                let socket = blocking::SocketFd::new(stream.as_raw_fd());
                let (reader, writer) = stream.into_split();
                (Box::new(reader), Box::new(writer), socket)
            }
            accept::ClientStream::Unix(stream) => {
                let stream = tokio::net::UnixStream::from_std(stream)?;
                let socket = blocking::SocketFd::new(stream.as_raw_fd());
                let (reader, writer) = stream.into_split();
                (Box::new(reader), Box::new(writer), socket)
            }
        };
        let watched = watchlist.watch(socket.raw());
        tokio::task::spawn_local(connection::serve(
            reader,
            writer,
            socket,
            watched,
            parameters,
            shared.clone(),
        ));
        Ok(())
    }
}

/// How long the server's thread watches its clients' sockets before it sleeps (see
/// [`blocking::Watchlist`]).
const PARK_SPIN: Duration = Duration::from_micros(50);

/// A running server. Dropping it stops it; [`Server::shutdown`] also reports the backend's
/// shutdown result.
pub struct Server {
    local_addr: SocketAddr,
    config: ServerBuilder,
    unix_socket_path: Option<std::path::PathBuf>,
    /// The thread that lent the backend to the server; it hands the backend back when it ends.
    thread: Option<std::thread::JoinHandle<Option<Backend>>>,
    stop: tokio::sync::watch::Sender<bool>,
    /// Raised with `stop`, for the server thread's blocking waits on a client (a COPY's).
    stopping: blocking::StopSignal,
    /// Disconnects once the accept thread has closed the listeners.
    listening: Option<std::sync::Mutex<std::sync::mpsc::Receiver<()>>>,
    /// For health checks and metrics.
    monitor: Option<Monitor>,
}

/// What [`Server::ping`] and [`Server::metrics`] need of a running server.
struct Monitor {
    requests: tokio::sync::mpsc::UnboundedSender<PingRequest>,
    counters: Arc<metrics::Counters>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("local_addr", &self.local_addr)
            .finish_non_exhaustive()
    }
}

impl Server {
    /// A builder with the defaults: 127.0.0.1, a free port, user and database `postgres`.
    ///
    /// ```no_run
    /// # use pglite_harness::{Backend, Server};
    /// let server = Server::builder().port(5433).password("secret").start(Backend::builder().open()?)?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn builder() -> ServerBuilder {
        ServerBuilder::default()
    }

    /// The address the server listens on.
    ///
    /// ```no_run
    /// # use pglite_harness::{Backend, Server};
    /// let server = Server::builder().start(Backend::builder().open()?)?;
    /// assert!(server.local_addr().ip().is_loopback());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The port the server listens on.
    ///
    /// ```no_run
    /// # use pglite_harness::{Backend, Server};
    /// let server = Server::builder().start(Backend::builder().open()?)?;
    /// println!("psql -h 127.0.0.1 -p {} -U postgres", server.port());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn port(&self) -> u16 {
        self.local_addr.port()
    }

    /// The Unix socket, when [`ServerBuilder::unix_socket_dir`] asked for one.
    ///
    /// ```no_run
    /// # use pglite_harness::{Backend, Server};
    /// let server = Server::builder().start(Backend::builder().open()?)?;
    /// assert_eq!(server.unix_socket_path(), None); // TCP only
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn unix_socket_path(&self) -> Option<&std::path::Path> {
        self.unix_socket_path.as_deref()
    }

    /// A connection URL that sqlx, tokio-postgres, psql and diesel accept.
    ///
    /// ```no_run
    /// # use pglite_harness::{Backend, Server};
    /// let server = Server::builder().start(Backend::builder().open()?)?;
    /// assert!(server.url().starts_with("postgresql://postgres@127.0.0.1:"));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn url(&self) -> String {
        let config = &self.config;
        match &config.password {
            Some(password) => format!(
                "postgresql://{}:{}@{}/{}",
                config.user,
                percent_encode(password),
                self.local_addr,
                config.database
            ),
            None => format!(
                "postgresql://{}@{}/{}",
                config.user, self.local_addr, config.database
            ),
        }
    }

    /// Stops accepting, closes every connection, and shuts the backend down cleanly.
    ///
    /// ```no_run
    /// # use pglite_harness::{Backend, Server};
    /// let server = Server::builder().start(Backend::builder().data_dir("./data/app").open()?)?;
    /// // ... clients connect to server.url() ...
    /// server.shutdown()?; // the data directory is checkpointed and unlocked
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn shutdown(mut self) -> Result<(), ServerError> {
        match self.stop_all()? {
            Some(backend) => Ok(backend.close()?),
            None => Ok(()),
        }
    }

    /// Stops accepting and closes every connection, like [`shutdown`](Self::shutdown), but hands
    /// the backend back, running, with a fresh session: an open transaction rolled back, and
    /// prepared statements, `SET` values, `LISTEN`s, temporary tables and advisory locks of the
    /// old connections gone. The data stays: serve it again, on the same port if you like.
    ///
    /// ```no_run
    /// # use pglite_harness::{Backend, Server};
    /// let server = Server::builder().start(Backend::builder().open()?)?;
    /// let port = server.port();
    /// let backend = server.stop()?;
    /// let again = Server::builder().port(port).start(backend)?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn stop(mut self) -> Result<Backend, ServerError> {
        let mut backend = self.stop_all()?.ok_or_else(|| {
            ServerError::Runtime(std::io::Error::other("the server's backend was not handed back"))
        })?;
        backend.reset_session()?;
        Ok(backend)
    }

    fn stop_all(&mut self) -> Result<Option<Backend>, ServerError> {
        self.monitor = None;
        let _ = self.stop.send(true);
        self.stopping.raise();
        // The port is free again once this returns.
        if let Some(listening) = self.listening.take() {
            let listening = listening.into_inner().unwrap_or_else(|e| e.into_inner());
            let _ = listening.recv_timeout(Duration::from_secs(5));
        }
        if let Some(path) = self.unix_socket_path.take() {
            let _ = std::fs::remove_file(path);
        }
        match self.thread.take().map(|t| t.join()) {
            Some(Ok(backend)) => Ok(backend),
            Some(Err(_)) => Err(ServerError::Runtime(std::io::Error::other(
                "the server thread panicked",
            ))),
            None => Ok(None),
        }
    }
}

// Health and metrics, for instance management.
impl Server {
    /// Runs `SELECT 1` through the connection queue (after the clients already waiting) and
    /// returns how long the answer took. Fails with [`ServerError::Timeout`] when the backend does
    /// not answer within `timeout` (a client holds it in a long transaction, or a statement runs
    /// long), and with [`BackendError::Dead`] once the backend died.
    ///
    /// Blocks the calling thread; from async code, call it in `spawn_blocking`.
    ///
    /// ```no_run
    /// # use pglite_harness::{Backend, Server};
    /// let server = Server::builder().start(Backend::builder().open()?)?;
    /// let latency = server.ping(std::time::Duration::from_secs(2))?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn ping(&self, timeout: Duration) -> Result<Duration, ServerError> {
        let Some(monitor) = &self.monitor else {
            return Err(ServerError::Runtime(std::io::Error::other(
                "the server is stopped",
            )));
        };
        if let Some(reason) = monitor.counters.dead_reason() {
            return Err(BackendError::Dead { reason }.into());
        }
        let (answer, answered) = std::sync::mpsc::sync_channel(1);
        let _ = monitor.requests.send(PingRequest { timeout, answer });
        // The server's thread may be running a long statement and not see the request for a
        // while: the wait here is bounded regardless.
        answered
            .recv_timeout(timeout)
            .unwrap_or(Err(ServerError::Timeout(timeout)))
    }

    /// Why the backend died, once a client's call or a [`ping`](Self::ping) saw it die; a server
    /// with a dead backend answers every client with error 57P03.
    ///
    /// ```no_run
    /// # let server = pglite_harness::Server::builder().start(pglite_harness::Backend::builder().open()?)?;
    /// if let Some(reason) = server.dead_reason() {
    ///     eprintln!("the database died: {reason}");
    /// }
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn dead_reason(&self) -> Option<String> {
        self.monitor.as_ref()?.counters.dead_reason()
    }

    /// The server's counters since it started. The backend's memory size is the one sampled
    /// after its last run.
    ///
    /// ```no_run
    /// # let server = pglite_harness::Server::builder().start(pglite_harness::Backend::builder().open()?)?;
    /// println!("{} connections open", server.metrics().connections_open);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn metrics(&self) -> ServerMetrics {
        match &self.monitor {
            Some(monitor) => monitor.counters.snapshot(),
            None => ServerMetrics::default(),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        match self.stop_all() {
            Ok(Some(backend)) => {
                if let Err(e) = backend.close() {
                    tracing::warn!("PGlite server shutdown: {e}");
                }
            }
            Ok(None) => {}
            Err(e) => tracing::warn!("PGlite server shutdown: {e}"),
        }
    }
}

pub(crate) fn next_id(counter: &AtomicU32) -> u32 {
    counter.fetch_add(1, Ordering::Relaxed)
}

/// Percent-encodes everything but unreserved URL characters.
fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}
