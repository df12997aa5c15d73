//! A request/reply channel between a backend handle and its thread, tuned for latency.
//!
//! A query such as `SELECT 1` takes ~15 µs inside the backend; waking a parked thread costs about
//! as much again, in each direction. So both sides wait actively for a while before parking (a
//! caller expecting a quick reply, the backend thread expecting the next message of a busy
//! client), yielding their core meanwhile rather than spinning on it: on a small machine the
//! thread that will answer may need that very core. Only one request is ever in flight (the
//! handle's methods take `&mut self`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, Thread};
use std::time::{Duration, Instant};

/// How long a side waits actively before parking.
const SPIN: Duration = Duration::from_micros(60);

struct Shared<Req, Resp> {
    request: Mutex<Option<Req>>,
    has_request: AtomicBool,
    reply: Mutex<Option<Resp>>,
    has_reply: AtomicBool,
    /// Set when either side is gone.
    closed: AtomicBool,
    worker: Mutex<Option<Thread>>,
    caller: Mutex<Option<Thread>>,
}

/// The handle's end.
pub(crate) struct Caller<Req, Resp> {
    shared: Arc<Shared<Req, Resp>>,
}

/// The backend thread's end.
pub(crate) struct Worker<Req, Resp> {
    shared: Arc<Shared<Req, Resp>>,
}

/// A connected pair.
pub(crate) fn pair<Req, Resp>() -> (Caller<Req, Resp>, Worker<Req, Resp>) {
    let shared = Arc::new(Shared {
        request: Mutex::new(None),
        has_request: AtomicBool::new(false),
        reply: Mutex::new(None),
        has_reply: AtomicBool::new(false),
        closed: AtomicBool::new(false),
        worker: Mutex::new(None),
        caller: Mutex::new(None),
    });
    (
        Caller {
            shared: shared.clone(),
        },
        Worker { shared },
    )
}

/// Waits actively for up to `spin` (yielding the core to any other runnable thread, which on a
/// small machine may be the very one that will answer), then parks, until `ready` is set or
/// `closed` is.
fn wait(ready: &AtomicBool, closed: &AtomicBool, spin: Duration) -> bool {
    let started = Instant::now();
    loop {
        if ready.load(Ordering::Acquire) {
            return true;
        }
        if closed.load(Ordering::Acquire) {
            return ready.load(Ordering::Acquire);
        }
        if started.elapsed() < spin {
            // Yielding, not spinning: the thread that will answer may need this core.
            thread::yield_now();
        } else {
            thread::park_timeout(Duration::from_millis(100));
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl<Req, Resp> Caller<Req, Resp> {
    /// Sends `request` and waits for its reply; `None` if the worker is gone.
    pub fn call(&self, request: Req) -> Option<Resp> {
        let s = &*self.shared;
        *lock(&s.caller) = Some(thread::current());
        if !self.send(request) {
            return None;
        }
        if !wait(&s.has_reply, &s.closed, SPIN) {
            return None;
        }
        s.has_reply.store(false, Ordering::Release);
        lock(&s.reply).take()
    }

    /// Sends `request` without waiting: for requests that carry their own way to answer (an
    /// async caller's oneshot). `false` if the worker is gone.
    pub fn send(&self, request: Req) -> bool {
        let s = &*self.shared;
        if s.closed.load(Ordering::Acquire) {
            return false;
        }
        *lock(&s.request) = Some(request);
        s.has_request.store(true, Ordering::Release);
        if let Some(worker) = lock(&s.worker).as_ref() {
            worker.unpark();
        }
        true
    }
}

impl<Req, Resp> Drop for Caller<Req, Resp> {
    fn drop(&mut self) {
        self.shared.closed.store(true, Ordering::Release);
        if let Some(worker) = lock(&self.shared.worker).as_ref() {
            worker.unpark();
        }
    }
}

impl<Req, Resp> Worker<Req, Resp> {
    /// Registers the calling thread as the worker; call once, from the worker thread.
    pub fn register(&self) {
        *lock(&self.shared.worker) = Some(thread::current());
    }

    /// Waits for the next request; `None` once the caller is gone.
    pub fn recv(&self) -> Option<Req> {
        let s = &*self.shared;
        if !wait(&s.has_request, &s.closed, SPIN) {
            return None;
        }
        s.has_request.store(false, Ordering::Release);
        lock(&s.request).take()
    }

    /// Answers the request last received.
    pub fn reply(&self, reply: Resp) {
        let s = &*self.shared;
        *lock(&s.reply) = Some(reply);
        s.has_reply.store(true, Ordering::Release);
        if let Some(caller) = lock(&s.caller).as_ref() {
            caller.unpark();
        }
    }
}

impl<Req, Resp> Drop for Worker<Req, Resp> {
    fn drop(&mut self) {
        self.shared.closed.store(true, Ordering::Release);
        if let Some(caller) = lock(&self.shared.caller).as_ref() {
            caller.unpark();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_answered_in_order() {
        let (caller, worker) = pair::<u32, u32>();
        let thread = thread::spawn(move || {
            worker.register();
            while let Some(n) = worker.recv() {
                if n == 5 {
                    thread::sleep(Duration::from_millis(5)); // past the spin: the caller parks
                }
                worker.reply(n * 2);
            }
        });
        for n in 0..1000 {
            assert_eq!(caller.call(n), Some(n * 2));
        }
        drop(caller);
        thread.join().unwrap();
    }

    #[test]
    fn a_gone_worker_answers_none() {
        let (caller, worker) = pair::<u32, u32>();
        drop(worker);
        assert_eq!(caller.call(1), None);
    }
}
