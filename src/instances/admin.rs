//! The admin endpoint: `/health` (200 or 503, JSON per instance) and `/metrics` (Prometheus text
//! format) over plain HTTP/1.1, one request per connection.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{InstanceError, InstanceState, Instances};

/// Largest request head read.
const MAX_REQUEST: usize = 8192;

/// A small HTTP server for the health and metrics of an [`Instances`] registry, on a thread of
/// its own. Dropping it stops it.
///
/// ```no_run
/// use std::sync::Arc;
/// use pglite_harness::{AdminServer, Instances};
///
/// let instances = Arc::new(Instances::new());
/// instances.start("default", Default::default())?;
/// let admin = AdminServer::start("127.0.0.1:9187", instances.clone())?;
/// println!("curl http://{}/metrics", admin.local_addr());
/// # Ok::<(), pglite_harness::InstanceError>(())
/// ```
#[derive(Debug)]
pub struct AdminServer {
    local_addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl AdminServer {
    /// Listens on `address` (`host:port`, port 0 for a free one) and serves `/health` and
    /// `/metrics` for `instances`.
    ///
    /// ```no_run
    /// # use std::sync::Arc;
    /// let instances = Arc::new(pglite_harness::Instances::new());
    /// let admin = pglite_harness::AdminServer::start("127.0.0.1:0", instances.clone())?;
    /// # Ok::<(), pglite_harness::InstanceError>(())
    /// ```
    pub fn start(address: &str, instances: Arc<Instances>) -> Result<AdminServer, InstanceError> {
        let error = |source| InstanceError::Admin {
            address: address.to_owned(),
            source,
        };
        let listener = std::net::TcpListener::bind(address).map_err(error)?;
        listener.set_nonblocking(true).map_err(error)?;
        let local_addr = listener.local_addr().map_err(error)?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(error)?;
        let (stop, mut stopped) = tokio::sync::oneshot::channel();
        let thread = std::thread::Builder::new()
            .name("pglite-admin".into())
            .spawn(move || {
                runtime.block_on(async move {
                    let listener = match tokio::net::TcpListener::from_std(listener) {
                        Ok(listener) => listener,
                        Err(e) => return tracing::error!("admin endpoint: {e}"),
                    };
                    loop {
                        tokio::select! {
                            accepted = listener.accept() => match accepted {
                                Ok((stream, _)) => {
                                    tokio::spawn(respond(stream, instances.clone()));
                                }
                                Err(e) => tracing::warn!("admin endpoint: accept failed: {e}"),
                            },
                            _ = &mut stopped => break,
                        }
                    }
                });
                runtime.shutdown_timeout(Duration::from_secs(1));
            })
            .map_err(error)?;
        Ok(AdminServer {
            local_addr,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// The address it listens on.
    ///
    /// ```no_run
    /// # let instances = std::sync::Arc::new(pglite_harness::Instances::new());
    /// let admin = pglite_harness::AdminServer::start("127.0.0.1:0", instances)?;
    /// println!("curl http://{}/health", admin.local_addr());
    /// # Ok::<(), pglite_harness::InstanceError>(())
    /// ```
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops serving.
    ///
    /// ```no_run
    /// # let instances = std::sync::Arc::new(pglite_harness::Instances::new());
    /// let admin = pglite_harness::AdminServer::start("127.0.0.1:9187", instances)?;
    /// admin.shutdown(); // the port is free again
    /// # Ok::<(), pglite_harness::InstanceError>(())
    /// ```
    pub fn shutdown(mut self) {
        self.stop_now();
    }

    fn stop_now(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for AdminServer {
    fn drop(&mut self) {
        self.stop_now();
    }
}

async fn respond(mut stream: tokio::net::TcpStream, instances: Arc<Instances>) {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 && head.len() + n <= MAX_REQUEST => head.extend_from_slice(&buf[..n]),
            _ => return,
        }
    }
    let head = String::from_utf8_lossy(&head);
    let mut words = head.split_whitespace();
    let (method, path) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    let path = path.split('?').next().unwrap_or("");
    let (status, content_type, body) = match (method, path) {
        ("GET", "/health") => {
            let (healthy, body) = tokio::task::spawn_blocking(move || health_json(&instances))
                .await
                .unwrap_or_else(|_| (false, "{}".into()));
            let status = if healthy {
                "200 OK"
            } else {
                "503 Service Unavailable"
            };
            (status, "application/json", body)
        }
        ("GET", "/metrics") => {
            let body = tokio::task::spawn_blocking(move || prometheus_text(&instances))
                .await
                .unwrap_or_default();
            ("200 OK", "text/plain; version=0.0.4; charset=utf-8", body)
        }
        ("GET", _) => ("404 Not Found", "text/plain", "try /health or /metrics\n".into()),
        _ => ("405 Method Not Allowed", "text/plain", "GET only\n".into()),
    };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(response.as_bytes()).await;
    let _ = stream.shutdown().await;
}

/// Whether every instance is healthy, and the JSON of each one's health (checked in parallel).
fn health_json(instances: &Instances) -> (bool, String) {
    let names: Vec<String> = instances.list().into_iter().map(|i| i.name).collect();
    let checks: Vec<_> = std::thread::scope(|scope| {
        let handles: Vec<_> = names
            .iter()
            .map(|name| scope.spawn(move || (name, instances.health(name))))
            .collect();
        handles.into_iter().filter_map(|h| h.join().ok()).collect()
    });
    let mut all_healthy = !checks.is_empty();
    let mut report = serde_json::Map::new();
    for (name, health) in checks {
        let Ok(health) = health else { continue };
        all_healthy &= health.is_healthy();
        let mut entry = serde_json::to_value(&health.state).unwrap_or_default();
        if let serde_json::Value::Object(fields) = &mut entry {
            fields.insert("healthy".into(), health.is_healthy().into());
            if let Some(latency) = health.latency {
                fields.insert("latency_ms".into(), (latency.as_secs_f64() * 1000.0).into());
            }
            if let Some(error) = health.error {
                fields.insert("error".into(), error.into());
            }
        }
        report.insert(name.clone(), entry);
    }
    let body = serde_json::json!({
        "status": if all_healthy { "ok" } else { "unavailable" },
        "instances": report,
    });
    (all_healthy, format!("{body}\n"))
}

/// The metrics of every instance in the Prometheus text exposition format, labelled
/// `instance="<name>"`.
///
/// ```no_run
/// # let instances = pglite_harness::Instances::new();
/// # instances.start("app", Default::default())?;
/// let text = pglite_harness::prometheus_text(&instances);
/// assert!(text.contains("pglite_up{instance=\"app\"} 1"));
/// # Ok::<(), pglite_harness::InstanceError>(())
/// ```
pub fn prometheus_text(instances: &Instances) -> String {
    let rows: Vec<_> = instances
        .list()
        .into_iter()
        .filter_map(|info| {
            let metrics = instances.metrics(&info.name).ok()?;
            Some((info, metrics))
        })
        .collect();
    type Value = fn(&super::InstanceInfo, &super::InstanceMetrics) -> Option<f64>;
    let families: [(&str, &str, &str, Value); 13] = [
        (
            "pglite_up",
            "gauge",
            "1 if the instance is ready, 0 otherwise.",
            |i, _| Some(f64::from(u8::from(i.state == InstanceState::Ready))),
        ),
        (
            "pglite_connections_open",
            "gauge",
            "Client connections open.",
            |_, m| Some(m.server.connections_open as f64),
        ),
        (
            "pglite_connections_total",
            "counter",
            "Client connections accepted.",
            |_, m| Some(m.server.connections_total as f64),
        ),
        (
            "pglite_queries_total",
            "counter",
            "Statements run for clients (Query and Execute messages).",
            |_, m| Some(m.server.queries as f64),
        ),
        (
            "pglite_errors_total",
            "counter",
            "Error responses sent to clients.",
            |_, m| Some(m.server.errors as f64),
        ),
        (
            "pglite_received_bytes_total",
            "counter",
            "Bytes received from clients.",
            |_, m| Some(m.server.bytes_received as f64),
        ),
        (
            "pglite_sent_bytes_total",
            "counter",
            "Bytes sent to clients.",
            |_, m| Some(m.server.bytes_sent as f64),
        ),
        (
            "pglite_queue_wait_seconds_total",
            "counter",
            "Time connections waited for their turn on the backend.",
            |_, m| Some(m.server.queue_wait.as_secs_f64()),
        ),
        (
            "pglite_backend_busy_seconds_total",
            "counter",
            "Time the backend spent running clients' messages.",
            |_, m| Some(m.server.backend_busy.as_secs_f64()),
        ),
        (
            "pglite_memory_bytes",
            "gauge",
            "Linear memory of the backend, as last sampled.",
            |_, m| Some(m.server.memory_size as f64),
        ),
        (
            "pglite_data_dir_bytes",
            "gauge",
            "Bytes in the data directory on disk (absent in memory).",
            |_, m| m.data_dir_size.map(|s| s as f64),
        ),
        (
            "pglite_uptime_seconds",
            "gauge",
            "Time since the instance became ready.",
            |_, m| Some(m.uptime.as_secs_f64()),
        ),
        (
            "pglite_failed",
            "gauge",
            "1 if the instance failed to start or its backend died.",
            |i, _| {
                Some(f64::from(u8::from(matches!(
                    i.state,
                    InstanceState::Failed { .. }
                ))))
            },
        ),
    ];
    let mut text = String::new();
    for (name, kind, help, value) in families {
        let _ = writeln!(text, "# HELP {name} {help}");
        let _ = writeln!(text, "# TYPE {name} {kind}");
        for (info, metrics) in &rows {
            if let Some(value) = value(info, metrics) {
                let _ = writeln!(
                    text,
                    "{name}{{instance=\"{}\"}} {value}",
                    escape_label(&info.name)
                );
            }
        }
    }
    text
}

/// A Prometheus label value: backslash, double quote and newline escaped.
fn escape_label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}
