//! File descriptors and open file descriptions.
//!
//! A descriptor is a slot in a table pointing at an open file description (the thing `dup`
//! shares: position, status flags, directory listing). Descriptions live in an arena with a
//! reference count, so cloning the table for a fork keeps the sharing between descriptors.

use super::errno::{Errno, VfsResult};
use super::flags::{O_ACCMODE, O_RDONLY, O_WRONLY};
use super::host::HostFile;
use super::memory::NodeId;
use super::pipe::{PipeEnd, PipeId};
use super::stat::DirEntry;

/// Descriptors are `0..MAX_FDS`.
pub const MAX_FDS: usize = 4096;

/// Index of an open file description.
pub(crate) type DescId = u32;

/// What an open file description refers to.
#[derive(Debug)]
pub(crate) enum Target {
    /// An in-memory node (file, directory or device).
    Mem(NodeId),
    /// A file or directory of a host mount.
    Host(HostFile),
    /// One end of a pipe.
    Pipe(PipeId, PipeEnd),
}

/// An open file description.
#[derive(Debug)]
pub(crate) struct Description {
    pub target: Target,
    /// Access mode and status flags (`O_APPEND`, `O_NONBLOCK`, ...).
    pub flags: u32,
    /// File position; for a directory `index * DirEntry::RECORD_SIZE`.
    pub pos: u64,
    /// Snapshot of a directory's entries, taken at the first `getdents` after open or rewind.
    pub listing: Option<Vec<DirEntry>>,
    /// Descriptors pointing at this description.
    refs: u32,
}

impl Description {
    /// A description with position 0 and no descriptor yet.
    pub fn new(target: Target, flags: u32) -> Description {
        Description {
            target,
            flags,
            pos: 0,
            listing: None,
            refs: 0,
        }
    }

    /// Whether the access mode allows reading.
    pub fn readable(&self) -> bool {
        self.flags & O_ACCMODE != O_WRONLY
    }

    /// Whether the access mode allows writing.
    pub fn writable(&self) -> bool {
        self.flags & O_ACCMODE != O_RDONLY
    }

    /// Descriptors pointing at this description.
    pub fn refs(&self) -> u32 {
        self.refs
    }

    /// This description with `refs` descriptors pointing at it (for snapshots, whose reader
    /// checks the count against the table).
    pub fn with_refs(self, refs: u32) -> Description {
        Description { refs, ..self }
    }

    fn fork_copy(&self) -> VfsResult<Description> {
        let target = match &self.target {
            Target::Mem(node) => Target::Mem(*node),
            Target::Pipe(pipe, end) => Target::Pipe(*pipe, *end),
            Target::Host(_) => return Err(Errno::EXDEV),
        };
        Ok(Description {
            target,
            flags: self.flags,
            pos: self.pos,
            listing: self.listing.clone(),
            refs: self.refs,
        })
    }
}

/// One open descriptor: its description and `FD_CLOEXEC`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct FdEntry {
    pub desc: DescId,
    pub cloexec: bool,
}

/// The descriptor table.
#[derive(Debug, Default)]
pub(crate) struct FdTable {
    fds: Vec<Option<FdEntry>>,
    /// Every descriptor below this one is in use.
    first_free: usize,
    /// Number of open descriptors.
    used: usize,
    descs: Vec<Option<Description>>,
    free_descs: Vec<DescId>,
}

impl FdTable {
    /// The lowest free descriptor `>= min`, if any is below [`MAX_FDS`].
    fn lowest_free(&self, min: usize) -> Option<usize> {
        let start = min.max(self.first_free);
        let fd = (start..self.fds.len())
            .find(|&fd| self.fds[fd].is_none())
            .unwrap_or(self.fds.len().max(start));
        (fd < MAX_FDS).then_some(fd)
    }

    /// Whether `count` more descriptors can be opened.
    pub fn has_room(&self, count: usize) -> bool {
        self.used + count <= MAX_FDS
    }

    fn install(&mut self, fd: usize, entry: FdEntry) {
        if self.fds.len() <= fd {
            self.fds.resize(fd + 1, None);
        }
        debug_assert!(self.fds[fd].is_none());
        self.fds[fd] = Some(entry);
        self.used += 1;
        if fd == self.first_free {
            self.first_free = fd + 1;
        }
        self.desc_slot_mut(entry.desc).refs += 1;
    }

    fn desc_slot_mut(&mut self, id: DescId) -> &mut Description {
        self.descs[id as usize]
            .as_mut()
            .expect("descriptor points at a closed description")
    }

    /// Stores a new description and gives it the lowest free descriptor `>= min_fd`.
    pub fn open(&mut self, desc: Description, min_fd: usize, cloexec: bool) -> VfsResult<i32> {
        let fd = self.lowest_free(min_fd).ok_or(Errno::EMFILE)?;
        let id = match self.free_descs.pop() {
            Some(id) => {
                self.descs[id as usize] = Some(desc);
                id
            }
            None => {
                let id = DescId::try_from(self.descs.len()).expect("description arena overflow");
                self.descs.push(Some(desc));
                id
            }
        };
        self.install(fd, FdEntry { desc: id, cloexec });
        Ok(fd as i32)
    }

    fn entry(&self, fd: i32) -> VfsResult<FdEntry> {
        usize::try_from(fd)
            .ok()
            .and_then(|fd| self.fds.get(fd).copied().flatten())
            .ok_or(Errno::EBADF)
    }

    /// The description behind `fd`.
    pub fn get(&self, fd: i32) -> VfsResult<&Description> {
        let entry = self.entry(fd)?;
        Ok(self.descs[entry.desc as usize]
            .as_ref()
            .expect("descriptor points at a closed description"))
    }

    /// The description behind `fd`, mutably.
    pub fn get_mut(&mut self, fd: i32) -> VfsResult<&mut Description> {
        let entry = self.entry(fd)?;
        Ok(self.desc_slot_mut(entry.desc))
    }

    /// Whether `FD_CLOEXEC` is set on `fd`.
    pub fn cloexec(&self, fd: i32) -> VfsResult<bool> {
        Ok(self.entry(fd)?.cloexec)
    }

    /// Sets or clears `FD_CLOEXEC` on `fd`.
    pub fn set_cloexec(&mut self, fd: i32, cloexec: bool) -> VfsResult<()> {
        self.entry(fd)?;
        if let Some(Some(entry)) = self.fds.get_mut(fd as usize) {
            entry.cloexec = cloexec;
        }
        Ok(())
    }

    /// A new descriptor `>= min_fd` sharing the description of `fd`.
    pub fn dup(&mut self, fd: i32, min_fd: usize, cloexec: bool) -> VfsResult<i32> {
        let entry = self.entry(fd)?;
        let new_fd = self.lowest_free(min_fd).ok_or(Errno::EMFILE)?;
        self.install(
            new_fd,
            FdEntry {
                desc: entry.desc,
                cloexec,
            },
        );
        Ok(new_fd as i32)
    }

    /// Makes `new_fd` share the description of `fd`, closing what `new_fd` had. Returns the
    /// description that lost its last descriptor, if any, for the caller to release.
    pub fn dup_to(&mut self, fd: i32, new_fd: i32, cloexec: bool) -> VfsResult<Option<Description>> {
        let entry = self.entry(fd)?;
        let slot = usize::try_from(new_fd)
            .ok()
            .filter(|&slot| slot < MAX_FDS)
            .ok_or(Errno::EBADF)?;
        let closed = match self.fds.get(slot).copied().flatten() {
            Some(_) => self.close(new_fd)?,
            None => None,
        };
        self.install(
            slot,
            FdEntry {
                desc: entry.desc,
                cloexec,
            },
        );
        Ok(closed)
    }

    /// Closes `fd`. Returns its description if this was the last descriptor using it.
    pub fn close(&mut self, fd: i32) -> VfsResult<Option<Description>> {
        let entry = self.entry(fd)?;
        let slot = fd as usize;
        self.fds[slot] = None;
        self.used -= 1;
        self.first_free = self.first_free.min(slot);
        while self.fds.last().is_some_and(Option::is_none) {
            self.fds.pop();
        }
        let desc = self.desc_slot_mut(entry.desc);
        desc.refs -= 1;
        if desc.refs > 0 {
            return Ok(None);
        }
        self.free_descs.push(entry.desc);
        Ok(self.descs[entry.desc as usize].take())
    }

    /// Every open descriptor, ascending.
    pub fn open_fds(&self) -> Vec<i32> {
        (0..self.fds.len())
            .filter(|&fd| self.fds[fd].is_some())
            .map(|fd| fd as i32)
            .collect()
    }

    /// The descriptor slots (`None` for a closed descriptor), indexed by descriptor, for
    /// snapshots.
    pub fn fd_slots(&self) -> &[Option<FdEntry>] {
        &self.fds
    }

    /// The descriptor below which every descriptor is in use, for snapshots.
    pub fn first_free(&self) -> usize {
        self.first_free
    }

    /// The description slots (`None` for a free one), indexed by [`DescId`], for snapshots.
    pub fn desc_slots(&self) -> &[Option<Description>] {
        &self.descs
    }

    /// The free description slots in the order they will be reused (last first).
    pub fn free_desc_list(&self) -> &[DescId] {
        &self.free_descs
    }

    /// A table from the parts a snapshot recorded. Checks the table's invariants: at most
    /// [`MAX_FDS`] descriptors, each pointing at a live description whose reference count is
    /// the number of descriptors pointing at it (at least one), every descriptor below
    /// `first_free` in use, and the free list naming exactly the free description slots.
    pub fn from_parts(
        fds: Vec<Option<FdEntry>>,
        first_free: usize,
        descs: Vec<Option<Description>>,
        free_descs: Vec<DescId>,
    ) -> Result<FdTable, String> {
        if fds.len() > MAX_FDS {
            return Err(format!("{} descriptor slots (at most {MAX_FDS})", fds.len()));
        }
        if first_free > fds.len() || fds[..first_free].iter().any(Option::is_none) {
            return Err(format!(
                "descriptors below {first_free} are supposed to be in use"
            ));
        }
        let mut refs = vec![0u32; descs.len()];
        for (fd, entry) in fds.iter().enumerate() {
            let Some(entry) = entry else { continue };
            match descs.get(entry.desc as usize) {
                Some(Some(_)) => refs[entry.desc as usize] += 1,
                _ => {
                    return Err(format!(
                        "descriptor {fd} points at missing description {}",
                        entry.desc
                    ));
                }
            }
        }
        for (id, (desc, counted)) in descs.iter().zip(&refs).enumerate() {
            if let Some(desc) = desc
                && desc.refs != *counted
            {
                return Err(format!(
                    "description {id} records {} descriptors but {counted} point at it",
                    desc.refs
                ));
            }
            if desc.is_some() && *counted == 0 {
                return Err(format!("description {id} has no descriptor"));
            }
        }
        let mut listed = vec![false; descs.len()];
        for &id in &free_descs {
            match descs.get(id as usize) {
                Some(None) if !listed[id as usize] => listed[id as usize] = true,
                _ => return Err(format!("bad entry {id} in the free description list")),
            }
        }
        if listed.iter().filter(|&&l| l).count() != descs.iter().filter(|d| d.is_none()).count() {
            return Err("the free description list misses free slots".into());
        }
        let used = fds.iter().filter(|entry| entry.is_some()).count();
        Ok(FdTable {
            fds,
            first_free,
            used,
            descs,
            free_descs,
        })
    }

    /// A copy of the table for a forked VFS (same descriptors, positions and sharing). `EXDEV`
    /// if a description refers to a host file, which cannot be duplicated into another tree.
    pub fn fork_copy(&self) -> VfsResult<FdTable> {
        let descs = self
            .descs
            .iter()
            .map(|slot| slot.as_ref().map(Description::fork_copy).transpose())
            .collect::<VfsResult<Vec<_>>>()?;
        Ok(FdTable {
            fds: self.fds.clone(),
            first_free: self.first_free,
            used: self.used,
            descs,
            free_descs: self.free_descs.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vfs::flags::O_RDWR;

    fn mem(node: NodeId) -> Description {
        Description::new(Target::Mem(node), O_RDWR)
    }

    #[test]
    fn lowest_free_descriptor_first() {
        let mut table = FdTable::default();
        assert_eq!(table.open(mem(1), 0, false), Ok(0));
        assert_eq!(table.open(mem(2), 0, false), Ok(1));
        assert_eq!(table.open(mem(3), 0, false), Ok(2));
        assert!(table.close(1).unwrap().is_some());
        assert_eq!(table.open(mem(4), 0, false), Ok(1));
        assert_eq!(table.open(mem(5), 10, false), Ok(10));
        assert_eq!(table.open(mem(6), 0, false), Ok(3));
        assert_eq!(table.open_fds(), vec![0, 1, 2, 3, 10]);
    }

    #[test]
    fn dup_shares_the_description() {
        let mut table = FdTable::default();
        let fd = table.open(mem(1), 0, false).unwrap();
        let copy = table.dup(fd, 0, true).unwrap();
        table.get_mut(fd).unwrap().pos = 42;
        assert_eq!(table.get(copy).unwrap().pos, 42);
        assert_eq!(table.cloexec(copy), Ok(true));
        assert!(table.close(fd).unwrap().is_none());
        assert!(table.close(copy).unwrap().is_some());
        assert_eq!(table.get(copy).map(|d| d.pos), Err(Errno::EBADF));
    }

    #[test]
    fn table_limit() {
        let mut table = FdTable::default();
        let fd = table.open(mem(1), 0, false).unwrap();
        for expected in 1..MAX_FDS as i32 {
            assert_eq!(table.dup(fd, 0, false), Ok(expected));
        }
        assert_eq!(table.dup(fd, 0, false), Err(Errno::EMFILE));
        assert!(!table.has_room(1));
        assert_eq!(table.dup_to(fd, MAX_FDS as i32, false).err(), Some(Errno::EBADF));
    }

    #[test]
    fn dup_to_replaces_the_target() {
        let mut table = FdTable::default();
        let a = table.open(mem(1), 0, false).unwrap();
        let b = table.open(mem(2), 0, false).unwrap();
        let closed = table
            .dup_to(a, b, false)
            .unwrap()
            .expect("b's description closed");
        assert!(matches!(closed.target, Target::Mem(2)));
        assert!(matches!(table.get(b).unwrap().target, Target::Mem(1)));
    }
}
