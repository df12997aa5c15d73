//! What a server counts (connections, queries, errors, bytes, time in the connection queue and
//! in the backend), whether its backend died, and the `SELECT 1` health check run through the
//! connection queue.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use std::rc::Rc;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::connection::Shared;

use super::ServerError;
use crate::backend::{BackendError, Engine};

/// A snapshot of a server's counters, from its start.
///
/// ```no_run
/// # use pglite_harness::{Backend, Server};
/// let server = Server::builder().start(Backend::builder().open()?)?;
/// let metrics = server.metrics();
/// println!("{} queries, {} bytes sent", metrics.queries, metrics.bytes_sent);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct ServerMetrics {
    /// Client connections open now.
    pub connections_open: u64,
    /// Client connections accepted since the start.
    pub connections_total: u64,
    /// Statements clients ran (Query and Execute messages).
    pub queries: u64,
    /// ErrorResponses the backend sent to clients.
    pub errors: u64,
    /// Bytes read from clients.
    pub bytes_received: u64,
    /// Bytes written to clients.
    pub bytes_sent: u64,
    /// Time connections spent waiting for their turn on the shared backend, summed.
    pub queue_wait: Duration,
    /// Time the backend spent running clients' messages, summed.
    pub backend_busy: Duration,
    /// The backend's linear memory in bytes, as sampled after its last run.
    pub memory_size: u64,
}

/// The live counters of one server, shared by its connections.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    connections_open: AtomicU64,
    connections_total: AtomicU64,
    queries: AtomicU64,
    errors: AtomicU64,
    bytes_received: AtomicU64,
    bytes_sent: AtomicU64,
    queue_wait_ns: AtomicU64,
    busy_ns: AtomicU64,
    memory_size: AtomicU64,
    /// Why the backend died, once a call reported it.
    dead: Mutex<Option<String>>,
}

impl Counters {
    /// Counts a connection as open until the returned guard is dropped.
    pub fn connection(self: &Arc<Self>) -> OpenConnection {
        self.connections_open.fetch_add(1, Ordering::Relaxed);
        self.connections_total.fetch_add(1, Ordering::Relaxed);
        OpenConnection(self.clone())
    }

    /// Counts a statement sent by a client (message `Q` or `E`).
    pub fn message(&self, tag: u8) {
        if matches!(tag, b'Q' | b'E') {
            self.queries.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Counts the ErrorResponses in a backend reply.
    pub fn reply(&self, reply: &[u8]) {
        let errors = super::messages::frames(reply)
            .filter(|(kind, _, _)| *kind == b'E')
            .count() as u64;
        if errors > 0 {
            self.errors.fetch_add(errors, Ordering::Relaxed);
        }
    }

    /// Counts bytes read from a client outside its counted socket half.
    pub fn received(&self, bytes: usize) {
        self.bytes_received.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    /// Counts bytes written to a client outside its counted socket half.
    pub fn sent(&self, bytes: usize) {
        self.bytes_sent.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    pub fn waited(&self, time: Duration) {
        self.queue_wait_ns.fetch_add(nanos(time), Ordering::Relaxed);
    }

    pub fn busy(&self, time: Duration) {
        self.busy_ns.fetch_add(nanos(time), Ordering::Relaxed);
    }

    /// Notes the backend's death if `error` reports it.
    pub fn observe(&self, error: &BackendError) {
        if let BackendError::Fatal { reason, .. } | BackendError::Dead { reason } = error {
            let mut dead = self.dead.lock().unwrap_or_else(|e| e.into_inner());
            dead.get_or_insert_with(|| reason.clone());
        }
    }

    pub fn dead_reason(&self) -> Option<String> {
        self.dead.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Samples the backend's memory size (after a run).
    pub fn sample_memory(&self, engine: &Engine) {
        if engine.dead_reason().is_none() {
            self.set_memory_size(engine.memory_size());
        }
    }

    /// Records the backend's memory size.
    pub fn set_memory_size(&self, bytes: usize) {
        self.memory_size.store(bytes as u64, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> ServerMetrics {
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        ServerMetrics {
            connections_open: load(&self.connections_open),
            connections_total: load(&self.connections_total),
            queries: load(&self.queries),
            errors: load(&self.errors),
            bytes_received: load(&self.bytes_received),
            bytes_sent: load(&self.bytes_sent),
            queue_wait: Duration::from_nanos(load(&self.queue_wait_ns)),
            backend_busy: Duration::from_nanos(load(&self.busy_ns)),
            memory_size: load(&self.memory_size),
        }
    }
}

fn nanos(time: Duration) -> u64 {
    u64::try_from(time.as_nanos()).unwrap_or(u64::MAX)
}

/// An open connection, counted until dropped.
pub(crate) struct OpenConnection(Arc<Counters>);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.connections_open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A client socket half that counts the bytes through it.
pub(crate) struct Counted<T> {
    inner: T,
    counters: Arc<Counters>,
}

impl<T> Counted<T> {
    pub fn new(inner: T, counters: Arc<Counters>) -> Self {
        Self { inner, counters }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Counted<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.inner).poll_read(cx, buf);
        let read = (buf.filled().len() - before) as u64;
        self.counters.bytes_received.fetch_add(read, Ordering::Relaxed);
        result
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Counted<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(written)) = &result {
            self.counters
                .bytes_sent
                .fetch_add(*written as u64, Ordering::Relaxed);
        }
        result
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Runs `SELECT 1` on the backend once it is free (waiting in the connection queue like a
/// client), within `timeout` in all. Returns how long it took. Runs on the server's thread; a
/// statement once started runs to its end (the caller of [`Server::ping`] stops waiting at the
/// timeout regardless).
///
/// [`Server::ping`]: super::Server::ping
pub(crate) async fn ping(shared: Rc<Shared>, timeout: Duration) -> Result<Duration, ServerError> {
    let started = Instant::now();
    if let Some(reason) = shared.metrics.dead_reason() {
        return Err(BackendError::Dead { reason }.into());
    }
    let _turn = tokio::time::timeout(timeout, shared.turn.clone().lock_owned())
        .await
        .map_err(|_| ServerError::Timeout(timeout))?;
    let mut query = bytes::BytesMut::new();
    let _ = postgres_protocol::message::frontend::query("SELECT 1", &mut query);
    let reply = shared
        .exec(None, &query, None)
        .inspect_err(|e| shared.metrics.observe(e))?;
    if started.elapsed() > timeout {
        return Err(ServerError::Timeout(timeout));
    }
    match crate::backend::SimpleQueryOutput::parse(&reply).scalar() {
        Some("1") => Ok(started.elapsed()),
        _ => Err(ServerError::Runtime(std::io::Error::other(
            "SELECT 1 did not answer 1",
        ))),
    }
}
