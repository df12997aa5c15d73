//! Pipes: in-memory byte queues with reader and writer counts. Nothing here ever blocks: an
//! empty pipe with a writer left gives `EAGAIN`, a full one accepts what fits.

use std::collections::VecDeque;

use super::errno::{Errno, VfsResult};
use super::flags::{POLLERR, POLLHUP, POLLIN, POLLOUT};

/// Index of a pipe in the [`PipeTable`].
pub(crate) type PipeId = u32;

/// Bytes a pipe buffers before writes stop being accepted (Linux's default).
pub(crate) const PIPE_CAPACITY: usize = 64 * 1024;

/// Which end of a pipe a descriptor holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum PipeEnd {
    Read,
    Write,
}

#[derive(Clone, Debug, Default)]
struct Pipe {
    buffer: VecDeque<u8>,
    readers: u32,
    writers: u32,
}

/// All pipes of one VFS.
#[derive(Clone, Debug, Default)]
pub(crate) struct PipeTable {
    pipes: Vec<Option<Pipe>>,
    free: Vec<PipeId>,
}

impl PipeTable {
    /// A new pipe with one reader and one writer.
    pub fn create(&mut self) -> PipeId {
        let pipe = Pipe {
            buffer: VecDeque::new(),
            readers: 1,
            writers: 1,
        };
        match self.free.pop() {
            Some(id) => {
                self.pipes[id as usize] = Some(pipe);
                id
            }
            None => {
                let id = PipeId::try_from(self.pipes.len()).expect("pipe table overflow");
                self.pipes.push(Some(pipe));
                id
            }
        }
    }

    fn pipe(&self, id: PipeId) -> &Pipe {
        self.pipes[id as usize].as_ref().expect("closed pipe")
    }

    fn pipe_mut(&mut self, id: PipeId) -> &mut Pipe {
        self.pipes[id as usize].as_mut().expect("closed pipe")
    }

    /// Drops one reference to an end; the pipe goes away with its last end.
    pub fn close_end(&mut self, id: PipeId, end: PipeEnd) {
        let pipe = self.pipe_mut(id);
        match end {
            PipeEnd::Read => pipe.readers -= 1,
            PipeEnd::Write => pipe.writers -= 1,
        }
        if pipe.readers == 0 && pipe.writers == 0 {
            self.pipes[id as usize] = None;
            self.free.push(id);
        }
    }

    /// Reads buffered bytes: `EAGAIN` if none are buffered and a writer is left, 0 at end.
    pub fn read(&mut self, id: PipeId, buf: &mut [u8]) -> VfsResult<usize> {
        let pipe = self.pipe_mut(id);
        if buf.is_empty() {
            return Ok(0);
        }
        if pipe.buffer.is_empty() {
            return if pipe.writers > 0 {
                Err(Errno::EAGAIN)
            } else {
                Ok(0)
            };
        }
        let n = buf.len().min(pipe.buffer.len());
        for (slot, byte) in buf.iter_mut().zip(pipe.buffer.drain(..n)) {
            *slot = byte;
        }
        Ok(n)
    }

    /// Buffers bytes: `EPIPE` without readers, `EAGAIN` when full, else as many as fit.
    pub fn write(&mut self, id: PipeId, buf: &[u8]) -> VfsResult<usize> {
        let pipe = self.pipe_mut(id);
        if pipe.readers == 0 {
            return Err(Errno::EPIPE);
        }
        if buf.is_empty() {
            return Ok(0);
        }
        let room = PIPE_CAPACITY - pipe.buffer.len();
        if room == 0 {
            return Err(Errno::EAGAIN);
        }
        let n = room.min(buf.len());
        pipe.buffer.extend(&buf[..n]);
        Ok(n)
    }

    /// `poll` readiness of one end, restricted to `events` (errors and hang-ups always count).
    pub fn poll(&self, id: PipeId, end: PipeEnd, events: i16) -> i16 {
        let pipe = self.pipe(id);
        let ready = match end {
            PipeEnd::Read => {
                let mut ready = 0;
                if !pipe.buffer.is_empty() || pipe.writers == 0 {
                    ready |= POLLIN;
                }
                if pipe.writers == 0 {
                    ready |= POLLHUP;
                }
                ready
            }
            PipeEnd::Write if pipe.readers == 0 => POLLOUT | POLLERR,
            PipeEnd::Write if pipe.buffer.len() < PIPE_CAPACITY => POLLOUT,
            PipeEnd::Write => 0,
        };
        ready & (events | POLLERR | POLLHUP)
    }

    /// Bytes waiting in the pipe.
    pub fn buffered(&self, id: PipeId) -> usize {
        self.pipe(id).buffer.len()
    }

    /// Number of pipes with an end still open.
    #[cfg(test)]
    fn open_pipes(&self) -> usize {
        self.pipes.iter().flatten().count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_flow_and_end_of_file() {
        let mut pipes = PipeTable::default();
        let p = pipes.create();
        let mut buf = [0u8; 4];
        assert_eq!(pipes.read(p, &mut buf), Err(Errno::EAGAIN));
        assert_eq!(pipes.write(p, b"abcdef"), Ok(6));
        assert_eq!(pipes.buffered(p), 6);
        assert_eq!(pipes.read(p, &mut buf), Ok(4));
        assert_eq!(&buf, b"abcd");
        pipes.close_end(p, PipeEnd::Write);
        assert_eq!(pipes.read(p, &mut buf), Ok(2));
        assert_eq!(&buf[..2], b"ef");
        assert_eq!(pipes.read(p, &mut buf), Ok(0));
        pipes.close_end(p, PipeEnd::Read);
        assert_eq!(pipes.open_pipes(), 0);
    }

    #[test]
    fn full_pipe_and_missing_reader() {
        let mut pipes = PipeTable::default();
        let p = pipes.create();
        let big = vec![1u8; PIPE_CAPACITY + 10];
        assert_eq!(pipes.write(p, &big), Ok(PIPE_CAPACITY));
        assert_eq!(pipes.write(p, b"x"), Err(Errno::EAGAIN));
        assert_eq!(pipes.poll(p, PipeEnd::Write, POLLOUT), 0);
        assert_eq!(pipes.poll(p, PipeEnd::Read, POLLIN), POLLIN);
        pipes.close_end(p, PipeEnd::Read);
        assert_eq!(pipes.write(p, b"x"), Err(Errno::EPIPE));
        assert_eq!(pipes.poll(p, PipeEnd::Write, POLLOUT), POLLOUT | POLLERR);
    }

    #[test]
    fn poll_reports_data_and_hangup() {
        let mut pipes = PipeTable::default();
        let p = pipes.create();
        assert_eq!(pipes.poll(p, PipeEnd::Read, POLLIN), 0);
        pipes.write(p, b"1").unwrap();
        assert_eq!(pipes.poll(p, PipeEnd::Read, POLLIN), POLLIN);
        assert_eq!(pipes.poll(p, PipeEnd::Read, POLLOUT), 0);
        pipes.close_end(p, PipeEnd::Write);
        assert_eq!(pipes.poll(p, PipeEnd::Read, POLLIN), POLLIN | POLLHUP);
    }
}
