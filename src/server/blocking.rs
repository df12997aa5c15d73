//! Blocking reads and writes on a client socket, for the one time the server must talk to a client
//! in the middle of a backend run: a COPY FROM STDIN, whose data the client sends only after it
//! has seen the CopyInResponse. The run holds the server's thread, so its event loop cannot do
//! that I/O; these calls wait on the socket itself (`poll`), each wait bounded by a timeout.
//!
//! The socket stays registered with the event loop; reading or writing it directly is safe for
//! that loop, which learns readiness afresh on its next attempt.

use std::io;
use std::os::fd::{BorrowedFd, OwnedFd, RawFd};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rustix::event::{EventfdFlags, PollFd, PollFlags, Timespec, eventfd, poll};
use rustix::io::Errno;
use rustix::net::{RecvFlags, SendFlags, recv, send};

/// Bytes read per `recv`.
const CHUNK: usize = 64 * 1024;

/// A client socket that its owner keeps open for as long as this value is used.
#[derive(Clone, Copy)]
pub(crate) struct SocketFd(RawFd);

impl SocketFd {
    /// Wraps the socket `fd`; the caller must keep the socket open while using the result.
    pub fn new(fd: RawFd) -> Self {
        Self(fd)
    }

    /// The descriptor.
    pub fn raw(self) -> RawFd {
        self.0
    }

    fn borrow(&self) -> BorrowedFd<'_> {
        // SAFETY: the connection owns the socket (its read and write halves) and keeps it open
        // for as long as it uses this value: `SocketFd` lives in the connection's `ClientIo`,
        // next to the halves, and is used only while that `ClientIo` is locked.
        unsafe { BorrowedFd::borrow_raw(self.0) }
    }

    /// Writes all of `bytes`, waiting at most `timeout` each time the socket cannot take more,
    /// and no longer once `stopping` is raised.
    pub fn write_all(self, mut bytes: &[u8], timeout: Duration, stopping: &StopSignal) -> io::Result<()> {
        while !bytes.is_empty() {
            // NOSIGNAL: a client gone is an error here, not a SIGPIPE for the process.
            match send(self.borrow(), bytes, SendFlags::NOSIGNAL) {
                Ok(written) => bytes = &bytes[written..],
                Err(Errno::AGAIN) => self.wait(PollFlags::OUT, timeout, stopping)?,
                Err(Errno::INTR) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// Appends what the socket has to `buffer`, waiting at most `timeout` for something to
    /// arrive, and no longer once `stopping` is raised. Returns the number of bytes read; 0 when
    /// the client closed the connection.
    pub fn read(
        self,
        buffer: &mut bytes::BytesMut,
        timeout: Duration,
        stopping: &StopSignal,
    ) -> io::Result<usize> {
        let mut chunk = vec![0u8; CHUNK];
        loop {
            match recv(self.borrow(), &mut chunk[..], RecvFlags::empty()) {
                Ok((_, read)) => {
                    buffer.extend_from_slice(&chunk[..read]);
                    return Ok(read);
                }
                Err(Errno::AGAIN) => self.wait(PollFlags::IN, timeout, stopping)?,
                Err(Errno::INTR) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Waits until the socket is ready for `flags` (or failed), at most `timeout`; fails at once
    /// when `stopping` is raised.
    fn wait(self, flags: PollFlags, timeout: Duration, stopping: &StopSignal) -> io::Result<()> {
        let timeout = Timespec {
            tv_sec: timeout.as_secs().try_into().unwrap_or(i64::MAX),
            tv_nsec: timeout.subsec_nanos().into(),
        };
        let fd = self.borrow();
        let mut fds = [PollFd::new(&fd, flags), PollFd::new(&stopping.0, PollFlags::IN)];
        let ready = poll(&mut fds, Some(&timeout));
        if fds[1].revents().contains(PollFlags::IN) {
            return Err(io::Error::new(
                io::ErrorKind::Interrupted,
                "the server is stopping",
            ));
        }
        match ready {
            Ok(0) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the client sent nothing within the idle-in-transaction timeout",
            )),
            Ok(_) | Err(Errno::INTR) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}

/// Tells the server's thread, even while it waits on a client socket itself (a COPY FROM STDIN),
/// that the server is stopping: an eventfd that becomes readable when raised.
#[derive(Clone)]
pub(crate) struct StopSignal(Arc<OwnedFd>);

impl StopSignal {
    /// A signal not yet raised.
    pub fn new() -> io::Result<StopSignal> {
        let fd = eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK)?;
        Ok(StopSignal(Arc::new(fd)))
    }

    /// Raises the signal, for good.
    pub fn raise(&self) {
        let _ = rustix::io::write(&self.0, &1u64.to_ne_bytes());
    }
}

/// The client sockets of one server. Before its thread goes to sleep waiting for clients, it
/// watches them for a moment: a client in a busy exchange usually sends its next message within
/// microseconds, and catching it awake spares the wake-up of a sleeping thread (tens of
/// microseconds on a small virtual machine), as a spinning lock spares a futex wait.
#[derive(Clone, Default)]
pub(crate) struct Watchlist(Arc<Mutex<Vec<RawFd>>>);

/// A socket on a [`Watchlist`], until dropped; drop it before the socket closes.
pub(crate) struct Watched {
    list: Watchlist,
    fd: RawFd,
}

impl Watchlist {
    /// Adds the socket `fd` for as long as the returned guard lives.
    pub fn watch(&self, fd: RawFd) -> Watched {
        self.lock().push(fd);
        Watched {
            list: self.clone(),
            fd,
        }
    }

    /// Waits actively, up to `spin`, for a watched socket to have input (yielding the core
    /// meanwhile: the client that will send may need it).
    pub fn spin_until_readable(&self, spin: Duration) {
        // Held throughout: a `Watched` leaves the list (taking this lock) before its socket
        // closes, so every fd polled here stays open.
        let fds = self.lock();
        if fds.is_empty() {
            return;
        }
        let mut polled: Vec<PollFd<'_>> = fds
            .iter()
            // SAFETY: the fd is open while the lock is held (above), and `polled` is dropped
            // before the lock.
            .map(|&fd| PollFd::from_borrowed_fd(unsafe { BorrowedFd::borrow_raw(fd) }, PollFlags::IN))
            .collect();
        let zero = Timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        let started = Instant::now();
        while started.elapsed() < spin {
            if !matches!(poll(&mut polled, Some(&zero)), Ok(0)) {
                return;
            }
            std::thread::yield_now();
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<RawFd>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for Watched {
    fn drop(&mut self) {
        let mut fds = self.list.lock();
        if let Some(at) = fds.iter().position(|&fd| fd == self.fd) {
            fds.swap_remove(at);
        }
    }
}
