//! Cancel requests, delivered the way Postgres receives them: an asynchronous write of its
//! interrupt flags.
//!
//! Postgres' SIGINT handler sets `QueryCancelPending` and `InterruptPending`, and the running
//! statement notices at its next `CHECK_FOR_INTERRUPTS()`. PGlite has no signals, so the host
//! writes the two flags into the instance's linear memory from the cancelling thread while the
//! statement runs — the contract of a `volatile sig_atomic_t` set by a signal handler. This costs
//! running code nothing, unlike wasmtime's epoch interruption, which checks a counter at every
//! loop and call (about 20% of a compute-bound statement).
//!
//! Waits do not check those flags: PGlite's `pg_sleep` and latch waits spin on the monotonic
//! clock and `poll`. Those imports also see the request ([`InterruptFlags::take_request`]) and
//! move the clock forward, so the wait ends and reaches its check.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};

/// The cancel state of one instance, shared with its `CancelHandle`s.
#[derive(Debug, Default)]
pub(crate) struct InterruptFlags {
    /// A request not yet seen by a waiting import.
    requested: AtomicBool,
    /// Where the flags live while the instance (and so its memory) exists.
    target: Mutex<Option<FlagAddresses>>,
}

/// The addresses of Postgres' two flags in a live linear memory.
#[derive(Debug, Clone, Copy)]
pub(crate) struct FlagAddresses {
    query_cancel_pending: *mut i32,
    interrupt_pending: *mut i32,
}

// SAFETY: the pointers are only dereferenced under `InterruptFlags::target`'s lock, while the
// memory they point into is alive (the owner clears the target before freeing it).
unsafe impl Send for FlagAddresses {}

impl FlagAddresses {
    /// The flags at `query_cancel_pending` and `interrupt_pending` in the memory starting at
    /// `base`, of `len` bytes; `None` if either is out of bounds or misaligned.
    pub fn new(base: *mut u8, len: usize, query_cancel_pending: i32, interrupt_pending: i32) -> Option<Self> {
        let at = |address: i32| -> Option<*mut i32> {
            let offset = usize::try_from(address).ok()?;
            if offset % 4 != 0 || offset + 4 > len {
                return None;
            }
            // SAFETY: `offset + 4 <= len`, inside the memory.
            Some(unsafe { base.add(offset) }.cast::<i32>())
        };
        Some(FlagAddresses {
            query_cancel_pending: at(query_cancel_pending)?,
            interrupt_pending: at(interrupt_pending)?,
        })
    }

    fn store(&self, value: i32) {
        for flag in [self.query_cancel_pending, self.interrupt_pending] {
            // SAFETY: the address is aligned and inside a live linear memory (checked in `new`,
            // and the owner clears the target before the memory goes). The store races with the
            // guest's own plain accesses exactly as a signal handler's store to a `volatile
            // sig_atomic_t` does, which is the contract Postgres' code is written for.
            unsafe { AtomicI32::from_ptr(flag) }.store(value, Ordering::SeqCst);
        }
    }
}

impl InterruptFlags {
    /// Points the flags at a live memory (after instantiation).
    pub fn attach(&self, addresses: Option<FlagAddresses>) {
        *self.lock() = addresses;
    }

    /// Forgets the memory; called before it is freed.
    pub fn detach(&self) {
        *self.lock() = None;
    }

    /// Requests a cancel: the running statement, or the next one to check, ends with 57014.
    pub fn request(&self) {
        self.requested.store(true, Ordering::Release);
        if let Some(target) = *self.lock() {
            target.store(1);
        }
    }

    /// Takes back a request not yet acted on. Only call it while no statement runs (or accept
    /// that a running statement may still see the request).
    pub fn withdraw(&self) {
        self.requested.store(false, Ordering::Release);
        if let Some(target) = *self.lock() {
            target.store(0);
        }
    }

    /// Whether a request is pending, without taking it.
    pub fn is_requested(&self) -> bool {
        self.requested.load(Ordering::Acquire)
    }

    /// Takes a pending request (for the waits that spin on the clock).
    pub fn take_request(&self) -> bool {
        self.requested.swap(false, Ordering::AcqRel)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<FlagAddresses>> {
        self.target.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_sets_both_flags_and_a_withdrawal_clears_them() {
        let mut memory = vec![0i32; 16];
        let base = memory.as_mut_ptr().cast::<u8>();
        let flags = InterruptFlags::default();
        flags.attach(FlagAddresses::new(base, 64, 8, 12));
        flags.request();
        assert_eq!(&memory[2..4], &[1, 1]);
        assert!(flags.take_request());
        assert!(!flags.take_request(), "taken once");
        flags.withdraw();
        assert_eq!(&memory[2..4], &[0, 0]);
        flags.detach();
        flags.request();
        assert_eq!(&memory[2..4], &[0, 0], "a detached memory is never written");
    }

    #[test]
    fn flags_outside_the_memory_or_misaligned_are_refused() {
        let mut memory = [0u8; 64];
        let base = memory.as_mut_ptr();
        assert!(FlagAddresses::new(base, 64, 62, 8).is_none());
        assert!(FlagAddresses::new(base, 64, 6, 8).is_none());
        assert!(FlagAddresses::new(base, 64, -4, 8).is_none());
        assert!(FlagAddresses::new(base, 64, 0, 60).is_some());
    }
}
