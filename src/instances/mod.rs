//! Many named instances in one process, each a [`Server`] on a port of its own in front of a
//! [`Backend`] of its own: declared in a config file ([`Config`]) or started at run time, each
//! with its health and metrics.
//!
//! Instances are independent: each has its own backend thread, linear memory, filesystem and
//! server runtime. One failing to start, or dying, leaves the others serving, and is reported
//! with its reason ([`InstanceState::Failed`]).
//!
//! ```no_run
//! use pglite_harness::{InstanceConfig, Instances};
//!
//! let instances = Instances::new();
//! instances.start("scratch", InstanceConfig::default())?;                      // memory://
//! let app = instances.start("app", InstanceConfig {
//!     port: 5433,
//!     data_dir: "./data/app".into(),
//!     ..InstanceConfig::default()
//! })?;
//! println!("app: {}", app.url);
//! instances.stop("app")?;                                                    // data flushed
//! # Ok::<(), pglite_harness::InstanceError>(())
//! ```

mod admin;
mod config;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub use admin::{AdminServer, prometheus_text};
pub use config::{Config, ConfigError, ConfigProblem, DEFAULT_CONFIG_FILE};

use crate::backend::{Backend, DataDir};
use crate::server::{Server, ServerError, ServerMetrics};

/// How to run one instance. Start from [`Default`]: `127.0.0.1`, a free port, in memory, user
/// and database `postgres`, no password.
///
/// ```
/// use pglite_harness::{DataDir, InstanceConfig};
///
/// let config = InstanceConfig {
///     port: 5433,
///     data_dir: DataDir::parse("./data/app"),
///     user: "app".into(),
///     database: "app".into(),
///     password: Some("secret".into()),
///     ..InstanceConfig::default()
/// };
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceConfig {
    /// The address to listen on.
    pub host: String,
    /// The port; 0 picks a free one.
    pub port: u16,
    /// Where the data lives.
    pub data_dir: DataDir,
    /// The role clients connect as (created if missing).
    pub user: String,
    /// A password, checked with SCRAM-SHA-256; `None` trusts every client.
    pub password: Option<String>,
    /// The database clients connect to (created if missing).
    pub database: String,
    /// Extension bundles to make available (`pg_trgm`, `hstore`, ...).
    pub extensions: Vec<String>,
    /// Server settings (`work_mem`, ...), passed at start.
    pub settings: Vec<(String, String)>,
    /// Postgres' debug level (1–5) for its server log (tracing target
    /// `pglite_harness::server_log`); `None` is off.
    pub debug: Option<u8>,
}

impl Default for InstanceConfig {
    fn default() -> Self {
        Self {
            host: "127.0.0.1".into(),
            port: 0,
            data_dir: DataDir::Memory,
            user: "postgres".into(),
            password: None,
            database: "postgres".into(),
            extensions: Vec::new(),
            settings: Vec::new(),
            debug: None,
        }
    }
}

/// Errors of instance management.
#[derive(Debug, thiserror::Error)]
pub enum InstanceError {
    /// No instance has this name.
    #[error("no instance named {0:?}")]
    Unknown(String),
    /// The instance is already running (or starting, or stopping): not started a second time.
    #[error("instance {name:?} is already {state}")]
    AlreadyRunning {
        /// The instance.
        name: String,
        /// Its state.
        state: InstanceState,
    },
    /// The data directory is already open in another instance of this registry.
    #[error("instance {name:?}: data directory {} is already open in instance {other:?}", path.display())]
    DataDirInUse {
        /// The instance being started.
        name: String,
        /// The directory.
        path: PathBuf,
        /// The instance that has it open.
        other: String,
    },
    /// The instance is not running, so it has no connection or health to give.
    #[error("instance {name:?} is {state}")]
    NotRunning {
        /// The instance.
        name: String,
        /// Its state.
        state: InstanceState,
    },
    /// The instance did not start (its backend did not boot, its port is taken, ...).
    #[error("instance {name:?} failed to start: {source}")]
    Start {
        /// The instance.
        name: String,
        /// Why.
        source: ServerError,
    },
    /// The instance stopped, but not cleanly (its data directory is recovered on next start).
    #[error("instance {name:?} did not stop cleanly: {source}")]
    Stop {
        /// The instance.
        name: String,
        /// Why.
        source: ServerError,
    },
    /// The admin HTTP server cannot listen.
    #[error("cannot serve the admin endpoint on {address}: {source}")]
    Admin {
        /// The address asked for.
        address: String,
        /// The cause.
        source: std::io::Error,
    },
}

/// Where an instance is in its life.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "state", rename_all = "lowercase")]
pub enum InstanceState {
    /// Its backend is booting.
    Starting,
    /// It serves clients.
    Ready,
    /// It is shutting down.
    Stopping,
    /// It was stopped cleanly; [`Instances::start`] or [`Instances::restart`] run it again.
    Stopped,
    /// It failed to start, or its backend died.
    Failed {
        /// Why.
        reason: String,
    },
}

impl std::fmt::Display for InstanceState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            InstanceState::Starting => f.write_str("starting"),
            InstanceState::Ready => f.write_str("ready"),
            InstanceState::Stopping => f.write_str("stopping"),
            InstanceState::Stopped => f.write_str("stopped"),
            InstanceState::Failed { reason } => write!(f, "failed: {reason}"),
        }
    }
}

/// How to connect to a running instance.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ConnectionInfo {
    /// The address it listens on.
    pub host: String,
    /// Its port (the one picked, for port 0).
    pub port: u16,
    /// The role to connect as.
    pub user: String,
    /// The database to connect to.
    pub database: String,
    /// A URL for sqlx, tokio-postgres, psql or diesel (with the password, if any).
    pub url: String,
}

/// One line of [`Instances::list`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceInfo {
    /// The instance's name.
    pub name: String,
    /// Its state.
    pub state: InstanceState,
    /// How to connect, while it runs.
    pub connection: Option<ConnectionInfo>,
    /// Where its data lives.
    pub data_dir: DataDir,
}

/// The answer of [`Instances::health`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Health {
    /// The instance's state.
    pub state: InstanceState,
    /// How long `SELECT 1` took, when the backend answered it.
    pub latency: Option<Duration>,
    /// Why the check failed, when it did (a timeout: the backend is busy or hung).
    pub error: Option<String>,
}

impl Health {
    /// Ready, and `SELECT 1` was answered in time.
    ///
    /// ```no_run
    /// # let instances = pglite_harness::Instances::new();
    /// # instances.start("app", Default::default())?;
    /// assert!(instances.health("app")?.is_healthy());
    /// # Ok::<(), pglite_harness::InstanceError>(())
    /// ```
    pub fn is_healthy(&self) -> bool {
        self.state == InstanceState::Ready && self.latency.is_some()
    }
}

/// The answer of [`Instances::metrics`]: the server's counters and the instance's sizes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceMetrics {
    /// Connections, queries, errors, bytes, queue wait, backend busy time, memory.
    pub server: ServerMetrics,
    /// Bytes in the data directory on disk (`None` in memory).
    pub data_dir_size: Option<u64>,
    /// Time since the instance became ready.
    pub uptime: Duration,
}

/// A registry of named instances, each a [`Server`] on a port of its own in front of a
/// [`Backend`] of its own, started from a [`Config`] or at run time. Instances are independent:
/// one failing to start, or dying, leaves the others serving and is reported with its reason
/// ([`InstanceState::Failed`]). Safe to share between threads (`Arc<Instances>`); dropping it
/// stops every instance cleanly.
///
/// ```no_run
/// use pglite_harness::{InstanceConfig, Instances};
///
/// let instances = Instances::new();
/// instances.start("scratch", InstanceConfig::default())?;                      // memory://
/// let app = instances.start("app", InstanceConfig {
///     port: 5433,
///     data_dir: "./data/app".into(),
///     ..InstanceConfig::default()
/// })?;
/// println!("app: {}", app.url);
/// instances.stop("app")?;                                                    // data flushed
/// # Ok::<(), pglite_harness::InstanceError>(())
/// ```
#[derive(Debug)]
pub struct Instances {
    entries: Mutex<Vec<(String, Entry)>>,
    health_timeout: Duration,
}

#[derive(Debug)]
struct Entry {
    config: InstanceConfig,
    state: Slot,
}

#[derive(Debug)]
enum Slot {
    Starting,
    Running {
        server: Arc<Server>,
        info: ConnectionInfo,
        since: Instant,
    },
    Stopping,
    Stopped,
    Failed(String),
}

impl Slot {
    fn state(&self) -> InstanceState {
        match self {
            Slot::Starting => InstanceState::Starting,
            Slot::Running { server, .. } => match server.dead_reason() {
                Some(reason) => InstanceState::Failed { reason },
                None => InstanceState::Ready,
            },
            Slot::Stopping => InstanceState::Stopping,
            Slot::Stopped => InstanceState::Stopped,
            Slot::Failed(reason) => InstanceState::Failed {
                reason: reason.clone(),
            },
        }
    }

    /// Whether the instance holds its port and data directory.
    fn is_live(&self) -> bool {
        matches!(self, Slot::Starting | Slot::Running { .. } | Slot::Stopping)
    }
}

impl Default for Instances {
    fn default() -> Self {
        Self::new()
    }
}

impl Instances {
    /// An empty registry, with a health check timeout of 5 s.
    ///
    /// ```
    /// let instances = pglite_harness::Instances::new();
    /// assert!(instances.list().is_empty());
    /// ```
    pub fn new() -> Self {
        Self {
            entries: Mutex::new(Vec::new()),
            health_timeout: Duration::from_secs(5),
        }
    }

    /// How long [`health`](Self::health) waits for `SELECT 1` (default 5 s).
    ///
    /// ```
    /// let instances = pglite_harness::Instances::new().health_timeout(std::time::Duration::from_secs(1));
    /// ```
    pub fn health_timeout(mut self, timeout: Duration) -> Self {
        self.health_timeout = timeout;
        self
    }

    fn entries(&self) -> std::sync::MutexGuard<'_, Vec<(String, Entry)>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn with_entry<T>(&self, name: &str, f: impl FnOnce(&mut Entry) -> T) -> Result<T, InstanceError> {
        let mut entries = self.entries();
        let entry = entries
            .iter_mut()
            .find(|(n, _)| n == name)
            .map(|(_, e)| e)
            .ok_or_else(|| InstanceError::Unknown(name.to_owned()))?;
        Ok(f(entry))
    }

    /// Starts the instance `name` and returns how to connect to it. A name already running, or a
    /// data directory already open, is an error, never a second copy. A stopped or failed name
    /// is started anew with this config. A failure is also recorded: [`list`](Self::list) shows
    /// the instance failed, with the reason.
    ///
    /// ```no_run
    /// let instances = pglite_harness::Instances::new();
    /// let info = instances.start("default", Default::default())?;
    /// println!("{}", info.url);
    /// assert!(instances.start("default", Default::default()).is_err());
    /// # Ok::<(), pglite_harness::InstanceError>(())
    /// ```
    pub fn start(&self, name: &str, config: InstanceConfig) -> Result<ConnectionInfo, InstanceError> {
        {
            let mut entries = self.entries();
            if let Some((_, entry)) = entries.iter().find(|(n, e)| n == name && e.state.is_live()) {
                return Err(InstanceError::AlreadyRunning {
                    name: name.to_owned(),
                    state: entry.state.state(),
                });
            }
            if let DataDir::Path(dir) = &config.data_dir {
                let wanted = canonical(dir);
                let other = entries.iter().find(|(_, e)| {
                    e.state.is_live()
                        && matches!(&e.config.data_dir, DataDir::Path(d) if canonical(d) == wanted)
                });
                if let Some((other, _)) = other {
                    return Err(InstanceError::DataDirInUse {
                        name: name.to_owned(),
                        path: dir.clone(),
                        other: other.clone(),
                    });
                }
            }
            let entry = Entry {
                config: config.clone(),
                state: Slot::Starting,
            };
            match entries.iter_mut().find(|(n, _)| n == name) {
                Some((_, slot)) => *slot = entry,
                None => entries.push((name.to_owned(), entry)),
            }
        }
        let started = launch(name, &config);
        let mut entries = self.entries();
        let entry = entries
            .iter_mut()
            .find(|(n, _)| n == name)
            .map(|(_, e)| e)
            .expect("a starting entry is never removed");
        match started {
            Ok(server) => {
                let info = ConnectionInfo {
                    host: config.host.clone(),
                    port: server.port(),
                    user: config.user.clone(),
                    database: config.database.clone(),
                    url: server.url(),
                };
                tracing::info!(instance = name, url = %info.url, "instance ready");
                entry.state = Slot::Running {
                    server: Arc::new(server),
                    info: info.clone(),
                    since: Instant::now(),
                };
                Ok(info)
            }
            Err(source) => {
                tracing::warn!(instance = name, "instance failed to start: {source}");
                entry.state = Slot::Failed(source.to_string());
                Err(InstanceError::Start {
                    name: name.to_owned(),
                    source,
                })
            }
        }
    }

    /// Starts every instance of `config`, each independently: one failing does not stop the
    /// others. Returns each instance's result, in file order.
    ///
    /// ```no_run
    /// let instances = pglite_harness::Instances::new();
    /// let config = pglite_harness::Config::load("pglite.toml")?;
    /// let failed = instances.start_config(&config).into_iter().filter(|(_, r)| r.is_err()).count();
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn start_config(&self, config: &Config) -> Vec<(String, Result<ConnectionInfo, InstanceError>)> {
        config
            .instances()
            .map(|(name, instance)| (name.to_owned(), self.start(name, instance.clone())))
            .collect()
    }

    /// Stops the instance cleanly: its connections are closed and its backend shuts down with a
    /// checkpoint, so a data directory reopens without recovery. The name stays listed, stopped.
    ///
    /// ```no_run
    /// # let instances = pglite_harness::Instances::new();
    /// # instances.start("app", Default::default())?;
    /// instances.stop("app")?;
    /// # Ok::<(), pglite_harness::InstanceError>(())
    /// ```
    pub fn stop(&self, name: &str) -> Result<(), InstanceError> {
        let server = self.with_entry(name, |entry| match &entry.state {
            Slot::Running { .. } => match std::mem::replace(&mut entry.state, Slot::Stopping) {
                Slot::Running { server, .. } => Ok(Some(server)),
                _ => unreachable!("matched above"),
            },
            Slot::Stopped | Slot::Failed(_) => Ok(None),
            Slot::Starting | Slot::Stopping => Err(InstanceError::NotRunning {
                name: name.to_owned(),
                state: entry.state.state(),
            }),
        })??;
        let Some(server) = server else {
            return Ok(());
        };
        let dead = server.dead_reason();
        let result = last_reference(server).shutdown();
        self.with_entry(name, |entry| {
            entry.state = match &dead {
                Some(reason) => Slot::Failed(reason.clone()),
                None => Slot::Stopped,
            };
        })?;
        tracing::info!(instance = name, "instance stopped");
        result.map_err(|source| InstanceError::Stop {
            name: name.to_owned(),
            source,
        })
    }

    /// Stops the instance (if it runs) and starts it again with the same config; the way back
    /// from a failed instance.
    ///
    /// ```no_run
    /// # let instances = pglite_harness::Instances::new();
    /// # instances.start("app", Default::default())?;
    /// let info = instances.restart("app")?;
    /// # Ok::<(), pglite_harness::InstanceError>(())
    /// ```
    pub fn restart(&self, name: &str) -> Result<ConnectionInfo, InstanceError> {
        let config = self.with_entry(name, |entry| entry.config.clone())?;
        if let Err(e) = self.stop(name) {
            tracing::warn!(instance = name, "restart: {e}");
        }
        self.start(name, config)
    }

    /// Stops the instance and forgets it.
    ///
    /// ```no_run
    /// # let instances = pglite_harness::Instances::new();
    /// # instances.start("app", Default::default())?;
    /// instances.remove("app")?;
    /// assert!(instances.list().is_empty());
    /// # Ok::<(), pglite_harness::InstanceError>(())
    /// ```
    pub fn remove(&self, name: &str) -> Result<(), InstanceError> {
        let result = self.stop(name);
        self.entries().retain(|(n, _)| n != name);
        result
    }

    /// Stops every instance cleanly; returns each one's result.
    ///
    /// ```no_run
    /// # let instances = pglite_harness::Instances::new();
    /// for (name, result) in instances.stop_all() {
    ///     if let Err(e) = result { eprintln!("{name}: {e}") }
    /// }
    /// ```
    pub fn stop_all(&self) -> Vec<(String, Result<(), InstanceError>)> {
        let names: Vec<String> = self.entries().iter().map(|(n, _)| n.clone()).collect();
        std::thread::scope(|scope| {
            let stops: Vec<_> = names
                .iter()
                .map(|name| scope.spawn(move || (name.clone(), self.stop(name))))
                .collect();
            stops
                .into_iter()
                .map(|stop| stop.join().expect("stop does not panic"))
                .collect()
        })
    }

    /// Every instance, in the order they were first started.
    ///
    /// ```no_run
    /// # let instances = pglite_harness::Instances::new();
    /// for instance in instances.list() {
    ///     println!("{} {}", instance.name, instance.state);
    /// }
    /// ```
    pub fn list(&self) -> Vec<InstanceInfo> {
        self.entries()
            .iter()
            .map(|(name, entry)| InstanceInfo {
                name: name.clone(),
                state: entry.state.state(),
                connection: match &entry.state {
                    Slot::Running { info, .. } => Some(info.clone()),
                    _ => None,
                },
                data_dir: entry.config.data_dir.clone(),
            })
            .collect()
    }

    /// How to connect to a running instance: host, port, user, database and URL.
    ///
    /// ```no_run
    /// # let instances = pglite_harness::Instances::new();
    /// # instances.start("app", Default::default())?;
    /// let info = instances.connection_info("app")?;
    /// println!("psql -h {} -p {} -U {} {}", info.host, info.port, info.user, info.database);
    /// # Ok::<(), pglite_harness::InstanceError>(())
    /// ```
    pub fn connection_info(&self, name: &str) -> Result<ConnectionInfo, InstanceError> {
        self.with_entry(name, |entry| match &entry.state {
            Slot::Running { info, .. } => Ok(info.clone()),
            other => Err(InstanceError::NotRunning {
                name: name.to_owned(),
                state: other.state(),
            }),
        })?
    }

    /// The instance's state and, when it runs, whether its backend answers `SELECT 1` within the
    /// health timeout (waiting its turn behind the clients). A backend found dead turns the
    /// instance [`InstanceState::Failed`] with the reason. Blocks the calling thread.
    ///
    /// ```no_run
    /// # let instances = pglite_harness::Instances::new();
    /// # instances.start("app", Default::default())?;
    /// let health = instances.health("app")?;
    /// println!("{} in {:?}", health.state, health.latency);
    /// # Ok::<(), pglite_harness::InstanceError>(())
    /// ```
    pub fn health(&self, name: &str) -> Result<Health, InstanceError> {
        let (state, server) = self.with_entry(name, |entry| {
            let server = match &entry.state {
                Slot::Running { server, .. } => Some(server.clone()),
                _ => None,
            };
            (entry.state.state(), server)
        })?;
        let (Some(server), InstanceState::Ready) = (server, &state) else {
            return Ok(Health {
                state,
                latency: None,
                error: None,
            });
        };
        let result = server.ping(self.health_timeout);
        drop(server);
        match result {
            Ok(latency) => Ok(Health {
                state,
                latency: Some(latency),
                error: None,
            }),
            // A backend found dead is noted by its server: the state says so now.
            Err(e) => Ok(Health {
                state: self.with_entry(name, |entry| entry.state.state())?,
                latency: None,
                error: Some(e.to_string()),
            }),
        }
    }

    /// The instance's counters and sizes (zero counters when it does not run).
    ///
    /// ```no_run
    /// # let instances = pglite_harness::Instances::new();
    /// # instances.start("app", Default::default())?;
    /// let m = instances.metrics("app")?;
    /// println!("{} queries in {:?}", m.server.queries, m.uptime);
    /// # Ok::<(), pglite_harness::InstanceError>(())
    /// ```
    pub fn metrics(&self, name: &str) -> Result<InstanceMetrics, InstanceError> {
        let (server, since, data_dir) = self.with_entry(name, |entry| match &entry.state {
            Slot::Running { server, since, .. } => {
                (Some(server.clone()), Some(*since), entry.config.data_dir.clone())
            }
            _ => (None, None, entry.config.data_dir.clone()),
        })?;
        Ok(InstanceMetrics {
            server: server.map(|s| s.metrics()).unwrap_or_default(),
            data_dir_size: match &data_dir {
                DataDir::Memory => None,
                DataDir::Path(dir) => Some(dir_size(dir)),
            },
            uptime: since.map(|s| s.elapsed()).unwrap_or_default(),
        })
    }
}

impl Drop for Instances {
    fn drop(&mut self) {
        for (name, result) in self.stop_all() {
            if let Err(e) = result {
                tracing::warn!(instance = name, "{e}");
            }
        }
    }
}

/// Boots the backend (its server log labelled with `name`) and serves it.
fn launch(name: &str, config: &InstanceConfig) -> Result<Server, ServerError> {
    let mut backend = Backend::builder()
        .name(name)
        .data_dir(config.data_dir.clone())
        .user(config.user.clone())
        .database(config.database.clone());
    for extension in &config.extensions {
        backend = backend.extension(extension.clone());
    }
    for (name, value) in &config.settings {
        backend = backend.setting(name.clone(), value.clone());
    }
    if let Some(level) = config.debug {
        backend = backend.debug(level);
    }
    let backend = backend.open()?;
    let mut server = Server::builder().host(config.host.clone()).port(config.port);
    if let Some(password) = &config.password {
        server = server.password(password.clone());
    }
    server.start(backend)
}

/// The server out of its `Arc`, once health checks in flight (bounded by their timeout) let go.
fn last_reference(mut server: Arc<Server>) -> Server {
    loop {
        match Arc::try_unwrap(server) {
            Ok(server) => return server,
            Err(shared) => {
                server = shared;
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

/// `path` made absolute with symlinks and `..` resolved, also when it does not exist yet (each
/// existing prefix is resolved, the rest taken as written), so two spellings of one directory
/// compare equal.
pub(crate) fn canonical(path: &Path) -> PathBuf {
    let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_owned());
    let mut resolved = PathBuf::new();
    for component in absolute.components() {
        match component {
            std::path::Component::CurDir => {}
            std::path::Component::ParentDir => {
                resolved.pop();
            }
            other => {
                resolved.push(other);
                if let Ok(real) = resolved.canonicalize() {
                    resolved = real;
                }
            }
        }
    }
    resolved
}

/// Bytes of the files under `dir` (what could be read).
fn dir_size(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .filter_map(|e| e.ok())
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => dir_size(&e.path()),
            Ok(t) if t.is_file() => e.metadata().map_or(0, |m| m.len()),
            _ => 0,
        })
        .sum()
}

/// How a data directory is shown: `memory://` or its path.
///
/// ```
/// use pglite_harness::{DataDir, data_dir_display};
/// assert_eq!(data_dir_display(&DataDir::Memory), "memory://");
/// ```
pub fn data_dir_display(data_dir: &DataDir) -> String {
    match data_dir {
        DataDir::Memory => "memory://".into(),
        DataDir::Path(path) => path.display().to_string(),
    }
}
