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
//! Session settings changed with `SET`, temporary tables, `LISTEN` and advisory locks belong to
//! the one shared session.
//!
//! ```no_run
//! use pglite_harness::{Backend, Server};
//!
//! let server = Server::builder().start(Backend::builder().open()?)?;
//! println!("connect to {}", server.url());          // postgresql://postgres@127.0.0.1:PORT/postgres
//! server.shutdown()?;                               // clean shutdown of the backend
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod connection;
mod messages;
mod metrics;
mod scram;
mod session;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use crate::backend::{Backend, BackendError};
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

    /// Serves `backend` on the configured address, from threads of the server's own.
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
        // One thread: the backend runs one batch at a time anyway, and a single thread spares
        // the wake-ups between workers (SELECT 1 over sqlx: ~80 -> ~45 µs).
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(ServerError::Runtime)?;

        let counters = Arc::new(metrics::Counters::default());
        counters.sample_memory(&backend);
        let shared = Arc::new(connection::Shared {
            metrics: counters.clone(),
            cancel: backend.cancel_handle(),
            backend: Arc::new(tokio::sync::Mutex::new(backend)),
            verifier: self.password.as_deref().map(scram::ScramVerifier::from_password),
            keys: std::sync::Mutex::new(std::collections::HashMap::new()),
            executing: std::sync::Mutex::new(None),
            listeners: std::sync::Mutex::new(std::collections::HashMap::new()),
            mailboxes: std::sync::Mutex::new(std::collections::HashMap::new()),
            session_settings: std::sync::Mutex::new(Default::default()),
            parameter_statuses,
            config: self,
            next_id: AtomicU32::new(1),
        });
        let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
        let config = shared.config.clone();
        let monitor = Monitor {
            backend: shared.backend.clone(),
            counters,
            runtime: runtime.handle().clone(),
        };
        // The server's runtime lives on a thread of its own, so the server can be started and
        // stopped from any context: sync code, or inside another tokio runtime.
        let thread = std::thread::Builder::new()
            .name("pglite-server-main".into())
            .spawn(move || -> Option<Backend> {
                let accept_shared = shared.clone();
                runtime.block_on(async move {
                    let listener = match tokio::net::TcpListener::from_std(listener) {
                        Ok(listener) => listener,
                        Err(e) => return tracing::error!("cannot serve: {e}"),
                    };
                    let unix = match unix_socket.map(|(l, _)| tokio::net::UnixListener::from_std(l)).transpose() {
                        Ok(unix) => unix,
                        Err(e) => return tracing::error!("cannot serve the Unix socket: {e}"),
                    };
                    loop {
                        tokio::select! {
                            accepted = listener.accept() => match accepted {
                                Ok((stream, _)) => {
                                    let _ = stream.set_nodelay(true);
                                    let (reader, writer) = stream.into_split();
                                    tokio::spawn(connection::serve(Box::new(reader), Box::new(writer), accept_shared.clone()));
                                }
                                Err(e) => tracing::warn!("accept failed: {e}"),
                            },
                            accepted = async { unix.as_ref().expect("guarded").accept().await }, if unix.is_some() => match accepted {
                                Ok((stream, _)) => {
                                    let (reader, writer) = stream.into_split();
                                    tokio::spawn(connection::serve(Box::new(reader), Box::new(writer), accept_shared.clone()));
                                }
                                Err(e) => tracing::warn!("accept failed: {e}"),
                            },
                            _ = stop_rx.changed() => break,
                        }
                    }
                });
                runtime.shutdown_timeout(Duration::from_secs(5));
                Arc::try_unwrap(shared)
                    .ok()
                    .and_then(|shared| Arc::try_unwrap(shared.backend).ok())
                    .map(|m| m.into_inner())
            })
            .map_err(ServerError::Runtime)?;
        Ok(Server {
            local_addr,
            config,
            unix_socket_path,
            thread: Some(thread),
            stop: stop_tx,
            monitor: Some(monitor),
        })
    }
}

/// A running server. Dropping it stops it; [`Server::shutdown`] also reports the backend's
/// shutdown result.
pub struct Server {
    local_addr: SocketAddr,
    config: ServerBuilder,
    unix_socket_path: Option<std::path::PathBuf>,
    /// The server's thread; it hands the backend back when it ends.
    thread: Option<std::thread::JoinHandle<Option<Backend>>>,
    stop: tokio::sync::watch::Sender<bool>,
    /// For health checks and metrics; dropped before the backend is taken back at shutdown.
    monitor: Option<Monitor>,
}

/// What [`Server::ping`] and [`Server::metrics`] need of a running server.
struct Monitor {
    backend: Arc<tokio::sync::Mutex<Backend>>,
    counters: Arc<metrics::Counters>,
    runtime: tokio::runtime::Handle,
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
        // The server thread takes the backend back to close it: let go of our reference first.
        self.monitor = None;
        let _ = self.stop.send(true);
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
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let ping = metrics::ping(monitor.backend.clone(), monitor.counters.clone(), timeout);
        monitor.runtime.spawn(async move {
            let _ = tx.send(ping.await);
        });
        rx.recv_timeout(timeout + Duration::from_secs(1))
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

    /// The server's counters since it started. The backend's memory size is sampled now if the
    /// backend is free, else it is the last sample.
    ///
    /// ```no_run
    /// # let server = pglite_harness::Server::builder().start(pglite_harness::Backend::builder().open()?)?;
    /// println!("{} connections open", server.metrics().connections_open);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn metrics(&self) -> ServerMetrics {
        let Some(monitor) = &self.monitor else {
            return ServerMetrics::default();
        };
        if let Ok(backend) = monitor.backend.try_lock() {
            monitor.counters.sample_memory(&backend);
        }
        monitor.counters.snapshot()
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
