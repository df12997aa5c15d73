//! Accepting clients, on a thread apart from the backend's.
//!
//! The backend runs each client's messages on its own thread, which therefore does nothing else
//! while a statement runs. A CancelRequest for that very statement arrives on a new connection,
//! so connections are accepted, and their first packets read, here: one small runtime thread for
//! every server of the process. SSLRequest and GSSENCRequest are answered `N` (TLS is not
//! offered), a CancelRequest is carried out at once, and a StartupMessage hands the socket to the
//! server's thread, which does the rest (authentication, then queries).

use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc::UnboundedSender;

use super::messages::error_response;
use crate::backend::CancelHandle;

/// Protocol codes of packets without a type byte.
const SSL_REQUEST: u32 = 80_877_103;
const GSSENC_REQUEST: u32 = 80_877_104;
const CANCEL_REQUEST: u32 = 80_877_102;
const PROTOCOL_3_0: u32 = 196_608;
/// Largest startup packet Postgres accepts.
const MAX_STARTUP_PACKET: usize = 10_000;
/// How long a client may take to send its StartupMessage (Postgres' `authentication_timeout`).
const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);

/// A client that sent its StartupMessage, for the server's thread.
pub(crate) struct Arrival {
    pub stream: ClientStream,
    /// The StartupMessage's parameters (after the protocol version).
    pub parameters: Vec<u8>,
}

/// A client socket, in blocking-agnostic std form so it can move between runtimes.
pub(crate) enum ClientStream {
    Tcp(std::net::TcpStream),
    Unix(std::os::unix::net::UnixStream),
}

/// Who may cancel what: each connection's BackendKeyData secret, and which connection the
/// backend runs for. Shared by the server's thread (which updates it) and the accept thread
/// (which acts on CancelRequests).
pub(crate) struct CancelRegistry {
    cancel: CancelHandle,
    keys: Mutex<std::collections::HashMap<u32, u32>>,
    executing: Mutex<Option<u32>>,
}

impl CancelRegistry {
    pub fn new(cancel: CancelHandle) -> Self {
        Self {
            cancel,
            keys: Mutex::default(),
            executing: Mutex::default(),
        }
    }

    /// Records connection `id`'s secret, sent to it in BackendKeyData.
    pub fn register(&self, id: u32, secret: u32) {
        self.keys
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, secret);
    }

    /// Forgets a connection that ended.
    pub fn forget(&self, id: u32) {
        self.keys.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
    }

    /// Records which connection the backend runs for; a cancel request only reaches that one.
    /// A request not delivered by the end of the run is withdrawn, so it cannot hit the next one.
    pub fn set_executing(&self, id: Option<u32>) {
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

/// The process' accept thread, started on first use.
fn runtime() -> std::io::Result<&'static tokio::runtime::Runtime> {
    // Built inside `get_or_init`: a runtime built by a racing thread and then dropped could be
    // dropped in an async context, which tokio forbids.
    static RUNTIME: OnceLock<Result<tokio::runtime::Runtime, String>> = OnceLock::new();
    RUNTIME
        .get_or_init(|| {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .thread_name("pglite-accept")
                .enable_all()
                .build()
                .map_err(|e| e.to_string())
        })
        .as_ref()
        .map_err(|e| std::io::Error::other(format!("cannot start the accept thread: {e}")))
}

/// Listens on `tcp` (and `unix`) until `stop` turns true, handing each client that starts a
/// session to `arrivals`. Returns a receiver that disconnects once the listeners are closed.
pub(crate) fn listen(
    tcp: std::net::TcpListener,
    unix: Option<std::os::unix::net::UnixListener>,
    cancels: Arc<CancelRegistry>,
    arrivals: UnboundedSender<Arrival>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> std::io::Result<std::sync::mpsc::Receiver<()>> {
    let (closed_tx, closed_rx) = std::sync::mpsc::channel::<()>();
    runtime()?.spawn(async move {
        // Dropped with the listeners, when this task ends.
        let _closed = closed_tx;
        let tcp = match tokio::net::TcpListener::from_std(tcp) {
            Ok(listener) => listener,
            Err(e) => return tracing::error!("cannot serve: {e}"),
        };
        let unix = match unix.map(tokio::net::UnixListener::from_std).transpose() {
            Ok(unix) => unix,
            Err(e) => return tracing::error!("cannot serve the Unix socket: {e}"),
        };
        loop {
            let arrival = tokio::select! {
                accepted = tcp.accept() => match accepted {
                    Ok((stream, _)) => {
                        let _ = stream.set_nodelay(true);
                        tokio::spawn(greet(stream, cancels.clone(), arrivals.clone(), |s| {
                            s.into_std().map(ClientStream::Tcp)
                        }));
                        continue;
                    }
                    Err(e) => e,
                },
                accepted = async { unix.as_ref().expect("guarded").accept().await }, if unix.is_some() => match accepted {
                    Ok((stream, _)) => {
                        tokio::spawn(greet(stream, cancels.clone(), arrivals.clone(), |s| {
                            s.into_std().map(ClientStream::Unix)
                        }));
                        continue;
                    }
                    Err(e) => e,
                },
                _ = stop.changed() => break,
            };
            tracing::warn!("accept failed: {arrival}");
            // Out of file descriptors, say: give the system a moment rather than spin.
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });
    Ok(closed_rx)
}

/// Reads a new client's first packets (within [`STARTUP_TIMEOUT`]) and either answers them here
/// or hands the client to the server's thread.
async fn greet<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    cancels: Arc<CancelRegistry>,
    arrivals: UnboundedSender<Arrival>,
    into_std: impl FnOnce(S) -> std::io::Result<ClientStream>,
) {
    let parameters = match tokio::time::timeout(STARTUP_TIMEOUT, first_packets(&mut stream, &cancels)).await {
        Ok(Ok(Some(parameters))) => parameters,
        // Answered here, or the client left.
        Ok(Ok(None)) | Ok(Err(_)) => return,
        Err(_) => {
            let _ = stream
                .write_all(&error_response(
                    "FATAL",
                    "08006",
                    "timeout expired before the startup packet",
                ))
                .await;
            return;
        }
    };
    match into_std(stream) {
        Ok(stream) => {
            // A server that is stopping no longer takes clients: the socket just closes.
            let _ = arrivals.send(Arrival { stream, parameters });
        }
        Err(e) => tracing::warn!("cannot hand a client to the server: {e}"),
    }
}

/// Handles packets until a StartupMessage, whose parameters it returns; `None` when the client
/// was answered here (a CancelRequest, an error).
async fn first_packets<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    cancels: &CancelRegistry,
) -> std::io::Result<Option<Vec<u8>>> {
    loop {
        let mut len = [0u8; 4];
        stream.read_exact(&mut len).await?;
        let len = u32::from_be_bytes(len) as usize;
        if !(8..=MAX_STARTUP_PACKET).contains(&len) {
            let error = error_response("FATAL", "08P01", "invalid length of startup packet");
            stream.write_all(&error).await?;
            return Ok(None);
        }
        let mut body = vec![0u8; len - 4];
        stream.read_exact(&mut body).await?;
        let code = u32::from_be_bytes(body[0..4].try_into().expect("4 bytes"));
        match code {
            // TLS and GSS encryption are not offered: the client continues in the clear.
            SSL_REQUEST | GSSENC_REQUEST => stream.write_all(b"N").await?,
            CANCEL_REQUEST => {
                if body.len() == 12 {
                    let pid = u32::from_be_bytes(body[4..8].try_into().expect("4 bytes"));
                    let secret = u32::from_be_bytes(body[8..12].try_into().expect("4 bytes"));
                    cancels.cancel_if_running(pid, secret);
                }
                return Ok(None);
            }
            PROTOCOL_3_0 => return Ok(Some(body.split_off(4))),
            other => {
                let message = format!(
                    "unsupported frontend protocol {}.{}: server supports 3.0",
                    other >> 16,
                    other & 0xffff
                );
                stream
                    .write_all(&error_response("FATAL", "0A000", &message))
                    .await?;
                return Ok(None);
            }
        }
    }
}
