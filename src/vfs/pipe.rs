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

/// One pipe: its buffered bytes and how many open file descriptions hold each end.
#[derive(Clone, Debug, Default)]
pub(crate) struct Pipe {
    pub buffer: VecDeque<u8>,
    pub readers: u32,
    pub writers: u32,
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

    /// The pipe slots (`None` for a free one), indexed by [`PipeId`], for snapshots.
    pub fn slots(&self) -> &[Option<Pipe>] {
        &self.pipes
    }

    /// The free pipe slots in the order they will be reused (last first).
    pub fn free_list(&self) -> &[PipeId] {
        &self.free
    }

    /// A table from the parts a snapshot recorded. Checks that no pipe buffers more than
    /// [`PIPE_CAPACITY`] bytes, every live pipe has an end open, and the free list names
    /// exactly the free slots. The end counts are the caller's to check against the
    /// descriptions.
    pub fn from_parts(pipes: Vec<Option<Pipe>>, free: Vec<PipeId>) -> Result<PipeTable, String> {
        for (id, pipe) in pipes.iter().enumerate() {
            let Some(pipe) = pipe else { continue };
            if pipe.buffer.len() > PIPE_CAPACITY {
                return Err(format!("pipe {id} buffers {} bytes", pipe.buffer.len()));
            }
            if pipe.readers == 0 && pipe.writers == 0 {
                return Err(format!("pipe {id} has no end open"));
            }
        }
        let mut listed = vec![false; pipes.len()];
        for &id in &free {
            match pipes.get(id as usize) {
                Some(None) if !listed[id as usize] => listed[id as usize] = true,
                _ => return Err(format!("bad entry {id} in the free pipe list")),
            }
        }
        if listed.iter().filter(|&&l| l).count() != pipes.iter().filter(|p| p.is_none()).count() {
            return Err("the free pipe list misses free slots".into());
        }
        Ok(PipeTable { pipes, free })
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
