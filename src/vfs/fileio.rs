//! Syscalls on open descriptors: reading, writing, seeking, sizing, syncing, directory
//! listings, `fstat` and readiness.

use super::Vfs;
use super::device::SeekBehaviour;
use super::errno::{Errno, VfsResult};
use super::fdtable::{Description, Target};
use super::flags::*;
use super::host::{self, Durability, HostMount, io_err, stat_from_metadata};
use super::memory::{MemTree, NodeKind};
use super::pipe::PipeEnd;
use super::stat::{DirEntry, FileKind, S_IFIFO, Stat, blocks_for, now};

/// `st_dev` reported for pipes.
const PIPE_DEV: u32 = 0;
/// Pipes get inode numbers above every node id.
const PIPE_INO_BASE: u64 = 1 << 32;

const RECORD: u64 = DirEntry::RECORD_SIZE as u64;

impl Vfs {
    /// `read`: reads at the descriptor's position and advances it. Pipes give `EAGAIN` when
    /// empty with a writer left; directories give `EISDIR`.
    pub fn read(&mut self, fd: i32, buf: &mut [u8]) -> VfsResult<usize> {
        self.read_impl(fd, buf, None)
    }

    /// `pread`: reads at `offset` without moving the position (`ESPIPE` on pipes and
    /// terminals).
    pub fn pread(&mut self, fd: i32, buf: &mut [u8], offset: u64) -> VfsResult<usize> {
        self.read_impl(fd, buf, Some(offset))
    }

    /// `write`: writes at the descriptor's position (at the end with `O_APPEND`) and advances
    /// it.
    pub fn write(&mut self, fd: i32, buf: &[u8]) -> VfsResult<usize> {
        self.write_impl(fd, buf, None)
    }

    /// `pwrite`: writes at `offset` without moving the position (`ESPIPE` on pipes and
    /// terminals).
    pub fn pwrite(&mut self, fd: i32, buf: &[u8], offset: u64) -> VfsResult<usize> {
        self.write_impl(fd, buf, Some(offset))
    }

    fn read_impl(&mut self, fd: i32, buf: &mut [u8], at: Option<u64>) -> VfsResult<usize> {
        let desc = self.fds.get_mut(fd)?;
        if !desc.readable() {
            return Err(Errno::EBADF);
        }
        let pos = at.unwrap_or(desc.pos);
        let n = match &desc.target {
            Target::Mem(id) => match &self.tree.node(*id).kind {
                NodeKind::File(contents) => contents.read_at(buf, pos),
                NodeKind::Dir(_) => return Err(Errno::EISDIR),
                NodeKind::Symlink(_) => return Err(Errno::EINVAL),
                NodeKind::Device(device) => {
                    let behaviour = device.seek_behaviour();
                    if at.is_some() && behaviour == SeekBehaviour::Unseekable {
                        return Err(Errno::ESPIPE);
                    }
                    let n = self.devices.read(*device, buf, pos)?;
                    if behaviour != SeekBehaviour::Positional {
                        return Ok(n);
                    }
                    n
                }
            },
            Target::Host(file) => {
                if file.kind == FileKind::Directory {
                    return Err(Errno::EISDIR);
                }
                host::read_at(&file.file, buf, pos)?
            }
            Target::Pipe(id, end) => {
                if at.is_some() {
                    return Err(Errno::ESPIPE);
                }
                if *end != PipeEnd::Read {
                    return Err(Errno::EBADF);
                }
                return self.pipes.read(*id, buf);
            }
        };
        if at.is_none() {
            desc.pos = pos + n as u64;
        }
        Ok(n)
    }

    fn write_impl(&mut self, fd: i32, buf: &[u8], at: Option<u64>) -> VfsResult<usize> {
        let desc = self.fds.get_mut(fd)?;
        if !desc.writable() {
            return Err(Errno::EBADF);
        }
        let append = at.is_none() && desc.flags & O_APPEND != 0;
        let (n, end) = match &desc.target {
            Target::Mem(id) => {
                let node = self.tree.node_mut(*id);
                match &mut node.kind {
                    NodeKind::File(contents) => {
                        let pos = match at {
                            Some(offset) => offset,
                            None if append => contents.len(),
                            None => desc.pos,
                        };
                        let n = contents.write_at(buf, pos)?;
                        node.touch();
                        (n, pos + n as u64)
                    }
                    NodeKind::Dir(_) => return Err(Errno::EISDIR),
                    NodeKind::Symlink(_) => return Err(Errno::EINVAL),
                    NodeKind::Device(device) => {
                        let behaviour = device.seek_behaviour();
                        if at.is_some() && behaviour == SeekBehaviour::Unseekable {
                            return Err(Errno::ESPIPE);
                        }
                        let n = self.devices.write(*device, buf)?;
                        if behaviour != SeekBehaviour::Positional || at.is_some() {
                            return Ok(n);
                        }
                        (n, desc.pos + n as u64)
                    }
                }
            }
            Target::Host(file) => {
                if file.kind == FileKind::Directory {
                    return Err(Errno::EISDIR);
                }
                let pos = match at {
                    Some(offset) => offset,
                    None if append => file.file.metadata().map_err(io_err)?.len(),
                    None => desc.pos,
                };
                let n = host::write_at(&file.file, buf, pos)?;
                (n, pos + n as u64)
            }
            Target::Pipe(id, end) => {
                if at.is_some() {
                    return Err(Errno::ESPIPE);
                }
                if *end != PipeEnd::Write {
                    return Err(Errno::EBADF);
                }
                return self.pipes.write(*id, buf);
            }
        };
        if at.is_none() {
            desc.pos = end;
        }
        Ok(n)
    }

    /// `lseek`/`fd_seek`. Regular files and `/dev/blob` have a real position; `/dev/null`,
    /// `/dev/zero` and `/dev/urandom` always report 0; pipes and terminals give `ESPIPE`. On a
    /// directory the position selects the listing entry (`offset / 280`), `SEEK_END` is
    /// `EINVAL`, and returning to 0 rewinds and refreshes the listing.
    pub fn seek(&mut self, fd: i32, offset: i64, whence: u8) -> VfsResult<u64> {
        let desc = self.fds.get_mut(fd)?;
        let mut is_dir = false;
        let end = match &desc.target {
            Target::Pipe(..) => return Err(Errno::ESPIPE),
            Target::Mem(id) => match &self.tree.node(*id).kind {
                NodeKind::File(contents) => contents.len(),
                NodeKind::Dir(_) => {
                    is_dir = true;
                    0
                }
                NodeKind::Symlink(_) => return Err(Errno::EINVAL),
                NodeKind::Device(device) => match device.seek_behaviour() {
                    SeekBehaviour::AlwaysZero => return Ok(0),
                    SeekBehaviour::Unseekable => return Err(Errno::ESPIPE),
                    SeekBehaviour::Positional => self.devices.blob_input.len() as u64,
                },
            },
            Target::Host(file) if file.kind == FileKind::Directory => {
                is_dir = true;
                0
            }
            Target::Host(file) => file.file.metadata().map_err(io_err)?.len(),
        };
        let base = match whence {
            SEEK_SET => 0,
            SEEK_CUR => desc.pos,
            SEEK_END if !is_dir => end,
            _ => return Err(Errno::EINVAL),
        };
        let target = i128::from(base) + i128::from(offset);
        if target < 0 {
            return Err(Errno::EINVAL);
        }
        let target = i64::try_from(target).map_err(|_| Errno::EOVERFLOW)? as u64;
        if is_dir && target == 0 {
            desc.listing = None;
        }
        desc.pos = target;
        Ok(target)
    }

    /// `ftruncate`: sets the size of a regular file open for writing (`EINVAL` otherwise,
    /// `EISDIR` for a directory).
    pub fn ftruncate(&mut self, fd: i32, len: u64) -> VfsResult<()> {
        if i64::try_from(len).is_err() {
            return Err(Errno::EINVAL);
        }
        let desc = self.fds.get(fd)?;
        if !desc.writable() {
            return Err(Errno::EINVAL);
        }
        match &desc.target {
            Target::Mem(id) => {
                let node = self.tree.node_mut(*id);
                match &mut node.kind {
                    NodeKind::File(contents) => {
                        contents.set_len(len)?;
                        node.touch();
                        Ok(())
                    }
                    NodeKind::Dir(_) => Err(Errno::EISDIR),
                    _ => Err(Errno::EINVAL),
                }
            }
            Target::Host(file) if file.kind == FileKind::Directory => Err(Errno::EISDIR),
            Target::Host(file) => file.file.set_len(len).map_err(io_err),
            Target::Pipe(..) => Err(Errno::EINVAL),
        }
    }

    /// `fsync`: a real `sync_all` for host files of a [`Durability::Durable`] mount, else
    /// nothing.
    pub fn fsync(&mut self, fd: i32) -> VfsResult<()> {
        self.sync(fd, false)
    }

    /// `fdatasync`: a real `sync_data` for host files of a [`Durability::Durable`] mount, else
    /// nothing.
    pub fn fdatasync(&mut self, fd: i32) -> VfsResult<()> {
        self.sync(fd, true)
    }

    fn sync(&mut self, fd: i32, data_only: bool) -> VfsResult<()> {
        if let Target::Host(file) = &self.fds.get(fd)?.target
            && self.mounts[file.mount].durability == Durability::Durable
        {
            let result = if data_only && file.kind != FileKind::Directory {
                file.file.sync_data()
            } else {
                file.file.sync_all()
            };
            result.map_err(io_err)?;
        }
        Ok(())
    }

    /// `fallocate`: mode 0 grows a regular file to at least `offset + len` (zeros; a host file
    /// is extended sparsely), `FALLOC_FL_KEEP_SIZE` only checks the arguments. Other modes give
    /// `ENOTSUP`.
    pub fn fallocate(&mut self, fd: i32, mode: i32, offset: u64, len: u64) -> VfsResult<()> {
        if mode & !FALLOC_FL_KEEP_SIZE != 0 {
            return Err(Errno::ENOTSUP);
        }
        if len == 0 || i64::try_from(offset).is_err() || i64::try_from(len).is_err() {
            return Err(Errno::EINVAL);
        }
        let end = offset.checked_add(len).ok_or(Errno::EFBIG)?;
        let desc = self.fds.get(fd)?;
        if !desc.writable() {
            return Err(Errno::EBADF);
        }
        let keep_size = mode & FALLOC_FL_KEEP_SIZE != 0;
        match &desc.target {
            Target::Pipe(..) => Err(Errno::ESPIPE),
            Target::Mem(id) => {
                let node = self.tree.node_mut(*id);
                match &mut node.kind {
                    NodeKind::File(contents) => {
                        if !keep_size && end > contents.len() {
                            contents.set_len(end)?;
                            node.touch();
                        }
                        Ok(())
                    }
                    NodeKind::Dir(_) => Err(Errno::EISDIR),
                    _ => Err(Errno::ENODEV),
                }
            }
            Target::Host(file) if file.kind == FileKind::Directory => Err(Errno::EISDIR),
            Target::Host(file) => {
                let size = file.file.metadata().map_err(io_err)?.len();
                if !keep_size && end > size {
                    file.file.set_len(end).map_err(io_err)?;
                }
                Ok(())
            }
        }
    }

    /// `getdents`: up to `max_entries` entries from the directory's position, `.` and `..`
    /// first, then the entries sorted by name; advances the position. Empty at the end. The
    /// listing is a snapshot taken at the first call after opening or rewinding (seek to 0).
    /// The first returned entry has index `position / 280` (position from
    /// `seek(fd, 0, SEEK_CUR)` before the call), the index [`DirEntry::write_record`] needs.
    pub fn getdents(&mut self, fd: i32, max_entries: usize) -> VfsResult<Vec<DirEntry>> {
        let desc = self.fds.get_mut(fd)?;
        if desc.listing.is_none() {
            desc.listing = Some(listing(&self.tree, &self.mounts, desc)?);
        }
        let listing = desc.listing.as_deref().unwrap_or_default();
        let start = usize::try_from(desc.pos / RECORD)
            .unwrap_or(usize::MAX)
            .min(listing.len());
        let end = start.saturating_add(max_entries).min(listing.len());
        let entries = listing[start..end].to_vec();
        desc.pos = (end as u64) * RECORD;
        Ok(entries)
    }

    /// `fstat`.
    pub fn fstat(&self, fd: i32) -> VfsResult<Stat> {
        match &self.fds.get(fd)?.target {
            Target::Mem(id) => Ok(self.tree.stat(*id)),
            Target::Host(file) => {
                let meta = file.file.metadata().map_err(io_err)?;
                Ok(stat_from_metadata(&meta, self.mounts[file.mount].dev))
            }
            Target::Pipe(id, _) => {
                let time = now();
                let size = self.pipes.buffered(*id) as u64;
                Ok(Stat {
                    dev: PIPE_DEV,
                    mode: S_IFIFO | 0o600,
                    nlink: 1,
                    size: size as i64,
                    blksize: super::stat::BLOCK_SIZE,
                    blocks: blocks_for(size),
                    atime: time,
                    mtime: time,
                    ctime: time,
                    ino: PIPE_INO_BASE + u64::from(*id),
                    ..Stat::default()
                })
            }
        }
    }

    /// The kind of file `fd` refers to (for `fd_fdstat_get`).
    pub fn file_kind(&self, fd: i32) -> VfsResult<FileKind> {
        Ok(match &self.fds.get(fd)?.target {
            Target::Mem(id) => self.tree.node(*id).file_kind(),
            Target::Host(file) => file.kind,
            Target::Pipe(..) => FileKind::Fifo,
        })
    }

    /// Whether `fd` is a terminal (`/dev/tty`, `/dev/tty1`); terminal `ioctl`s on anything
    /// else should fail with `ENOTTY`.
    pub fn is_tty(&self, fd: i32) -> VfsResult<bool> {
        Ok(match &self.fds.get(fd)?.target {
            Target::Mem(id) => matches!(
                self.tree.node(*id).kind,
                NodeKind::Device(device) if device.is_tty()
            ),
            _ => false,
        })
    }

    /// `poll` readiness of `fd` for `events`: `POLLNVAL` for a closed descriptor; pipes report
    /// `POLLIN` only with data (or no writer left, with `POLLHUP`) and `POLLOUT` while there is
    /// room; everything else is always ready for what was asked.
    pub fn poll_revents(&self, fd: i32, events: i16) -> i16 {
        match self.fds.get(fd) {
            Err(_) => POLLNVAL,
            Ok(desc) => match desc.target {
                Target::Pipe(id, end) => self.pipes.poll(id, end, events),
                _ => events & (POLLIN | POLLOUT),
            },
        }
    }
}

/// The listing of the directory an open description refers to.
fn listing(tree: &MemTree, mounts: &[HostMount], desc: &Description) -> VfsResult<Vec<DirEntry>> {
    let dot = |name: &[u8], ino: u64| DirEntry {
        ino,
        kind: FileKind::Directory,
        name: name.to_vec(),
    };
    match &desc.target {
        Target::Mem(id) => {
            let dir = tree.dir(*id)?;
            let mut entries = Vec::with_capacity(dir.entries.len() + 2);
            entries.push(dot(b".", u64::from(*id) + 1));
            entries.push(dot(b"..", u64::from(dir.parent) + 1));
            entries.extend(dir.entries.iter().map(|(name, child)| DirEntry {
                ino: u64::from(*child) + 1,
                kind: tree.node(*child).file_kind(),
                name: name.to_vec(),
            }));
            Ok(entries)
        }
        Target::Host(file) if file.kind == FileKind::Directory => {
            use std::os::unix::fs::MetadataExt;
            let mount = &mounts[file.mount];
            let real = mount.real_path(&file.rel);
            let own_ino = file.file.metadata().map_err(io_err)?.ino();
            let parent_ino = match file.rel.parent() {
                Some(parent) => std::fs::metadata(mount.real_path(parent)).map_err(io_err)?.ino(),
                None => u64::from(tree.parent(mount.node)) + 1,
            };
            let mut entries = vec![dot(b".", own_ino), dot(b"..", parent_ino)];
            entries.extend(host::list_dir(&real)?);
            Ok(entries)
        }
        _ => Err(Errno::ENOTDIR),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vfs::AT_FDCWD;

    fn open_rw(vfs: &mut Vfs, path: &[u8]) -> i32 {
        vfs.openat(AT_FDCWD, path, O_CREAT | O_RDWR, 0o644).unwrap()
    }

    #[test]
    fn read_write_seek() {
        let mut vfs = Vfs::new();
        let fd = open_rw(&mut vfs, b"/tmp/f");
        assert_eq!(vfs.write(fd, b"hello world"), Ok(11));
        assert_eq!(vfs.seek(fd, 0, SEEK_CUR), Ok(11));
        assert_eq!(vfs.seek(fd, -5, SEEK_END), Ok(6));
        let mut buf = [0u8; 16];
        assert_eq!(vfs.read(fd, &mut buf), Ok(5));
        assert_eq!(&buf[..5], b"world");
        assert_eq!(vfs.read(fd, &mut buf), Ok(0));
        assert_eq!(vfs.seek(fd, -1, SEEK_SET), Err(Errno::EINVAL));
        assert_eq!(vfs.seek(fd, 0, 9), Err(Errno::EINVAL));
        // Seeking past the end and writing leaves a zero-filled gap.
        assert_eq!(vfs.seek(fd, 20, SEEK_SET), Ok(20));
        vfs.write(fd, b"!").unwrap();
        assert_eq!(vfs.fstat(fd).unwrap().size, 21);
        assert_eq!(vfs.pread(fd, &mut buf[..4], 10), Ok(4));
        assert_eq!(&buf[..4], b"d\0\0\0");
    }

    #[test]
    fn pread_pwrite_keep_the_position() {
        let mut vfs = Vfs::new();
        let fd = open_rw(&mut vfs, b"/tmp/pages");
        let page = [0xabu8; 8192];
        assert_eq!(vfs.pwrite(fd, &page, 3 * 8192), Ok(8192));
        assert_eq!(vfs.seek(fd, 0, SEEK_CUR), Ok(0));
        assert_eq!(vfs.fstat(fd).unwrap().size, 4 * 8192);
        let mut back = [0u8; 8192];
        assert_eq!(vfs.pread(fd, &mut back, 3 * 8192), Ok(8192));
        assert_eq!(back, page);
        assert_eq!(vfs.pread(fd, &mut back, 8192), Ok(8192));
        assert!(back.iter().all(|&b| b == 0));
        assert_eq!(vfs.pread(fd, &mut back, 4 * 8192), Ok(0));
        assert_eq!(vfs.seek(fd, 0, SEEK_CUR), Ok(0));
    }

    #[test]
    fn append_mode() {
        let mut vfs = Vfs::new();
        vfs.write_file("/tmp/log", b"one\n", 0o644).unwrap();
        let fd = vfs.openat(AT_FDCWD, b"/tmp/log", O_WRONLY | O_APPEND, 0).unwrap();
        vfs.write(fd, b"two\n").unwrap();
        assert_eq!(vfs.read_file("/tmp/log").unwrap(), b"one\ntwo\n");
        assert_eq!(vfs.seek(fd, 0, SEEK_CUR), Ok(8));
    }

    #[test]
    fn access_modes_are_enforced() {
        let mut vfs = Vfs::new();
        vfs.write_file("/tmp/f", b"x", 0o644).unwrap();
        let ro = vfs.openat(AT_FDCWD, b"/tmp/f", O_RDONLY, 0).unwrap();
        let wo = vfs.openat(AT_FDCWD, b"/tmp/f", O_WRONLY, 0).unwrap();
        assert_eq!(vfs.write(ro, b"y"), Err(Errno::EBADF));
        assert_eq!(vfs.read(wo, &mut [0u8; 1]), Err(Errno::EBADF));
        assert_eq!(vfs.ftruncate(ro, 0), Err(Errno::EINVAL));
        assert_eq!(vfs.read(99, &mut [0u8; 1]), Err(Errno::EBADF));
    }

    #[test]
    fn truncation() {
        let mut vfs = Vfs::new();
        let fd = open_rw(&mut vfs, b"/tmp/t");
        vfs.write(fd, &[1u8; 100]).unwrap();
        vfs.ftruncate(fd, 10).unwrap();
        assert_eq!(vfs.fstat(fd).unwrap().size, 10);
        vfs.ftruncate(fd, 50).unwrap();
        let mut buf = [9u8; 50];
        assert_eq!(vfs.pread(fd, &mut buf, 0), Ok(50));
        assert_eq!(&buf[..10], &[1u8; 10]);
        assert_eq!(&buf[10..], &[0u8; 40]);
        vfs.truncate(b"/tmp/t", 3).unwrap();
        assert_eq!(vfs.fstat(fd).unwrap().size, 3);
        assert_eq!(vfs.truncate(b"/tmp", 3), Err(Errno::EISDIR));
        assert_eq!(vfs.ftruncate(fd, u64::MAX), Err(Errno::EINVAL));
        vfs.fallocate(fd, 0, 0, 4096).unwrap();
        assert_eq!(vfs.fstat(fd).unwrap().size, 4096);
        vfs.fallocate(fd, FALLOC_FL_KEEP_SIZE, 0, 1 << 20).unwrap();
        assert_eq!(vfs.fstat(fd).unwrap().size, 4096);
        assert_eq!(vfs.fallocate(fd, 0x8, 0, 1), Err(Errno::ENOTSUP));
        assert_eq!(vfs.fallocate(fd, 0, 0, 0), Err(Errno::EINVAL));
    }

    #[test]
    fn unlinked_file_stays_readable_until_closed() {
        let mut vfs = Vfs::new();
        vfs.write_file("/dev/shm/PostgreSQL.1", b"segment", 0o600)
            .unwrap();
        let nodes = vfs.memory_stats().nodes;
        let fd = vfs.openat(AT_FDCWD, b"/dev/shm/PostgreSQL.1", O_RDWR, 0).unwrap();
        vfs.unlinkat(AT_FDCWD, b"/dev/shm/PostgreSQL.1", 0).unwrap();
        assert!(!vfs.exists("/dev/shm/PostgreSQL.1"));
        let mut buf = [0u8; 7];
        assert_eq!(vfs.pread(fd, &mut buf, 0), Ok(7));
        assert_eq!(&buf, b"segment");
        vfs.pwrite(fd, b"S", 0).unwrap();
        assert_eq!(vfs.fstat(fd).unwrap().nlink, 0);
        assert_eq!(vfs.memory_stats().nodes, nodes);
        vfs.close(fd).unwrap();
        assert_eq!(vfs.memory_stats().nodes, nodes - 1);
    }

    #[test]
    fn devices() {
        let mut vfs = Vfs::new();
        let mut buf = [0u8; 32];
        let random = vfs.openat(AT_FDCWD, b"/dev/urandom", O_RDONLY, 0).unwrap();
        assert_eq!(vfs.read(random, &mut buf), Ok(32));
        assert!(buf.iter().any(|&b| b != 0));
        assert_eq!(vfs.seek(random, 100, SEEK_SET), Ok(0));
        let null = vfs.openat(AT_FDCWD, b"/dev/null", O_RDWR, 0).unwrap();
        assert_eq!(vfs.read(null, &mut buf), Ok(0));
        assert_eq!(vfs.write(null, b"gone"), Ok(4));
        assert_eq!(vfs.seek(null, 0, SEEK_END), Ok(0));
        assert_eq!(vfs.file_kind(null), Ok(FileKind::CharDevice));
        assert_eq!(vfs.is_tty(null), Ok(false));
        let zero = vfs.openat(AT_FDCWD, b"/dev/zero", O_RDONLY, 0).unwrap();
        buf.fill(1);
        assert_eq!(vfs.read(zero, &mut buf), Ok(32));
        assert!(buf.iter().all(|&b| b == 0));
        let tty = vfs.openat(AT_FDCWD, b"/dev/tty", O_RDWR, 0).unwrap();
        assert_eq!(vfs.is_tty(tty), Ok(true));
        assert_eq!(vfs.write(tty, b"x"), Ok(1));
        assert_eq!(vfs.seek(tty, 0, SEEK_SET), Err(Errno::ESPIPE));
        assert_eq!(vfs.read(0, &mut buf), Ok(0), "stdin is always at end of file");
        assert_eq!(vfs.is_tty(1), Ok(false));
        assert_eq!(vfs.is_tty(42), Err(Errno::EBADF));
        let stat = vfs.statat(AT_FDCWD, b"/dev/null", 0).unwrap();
        assert_eq!(FileKind::from_mode(stat.mode), FileKind::CharDevice);
        assert_ne!(stat.rdev, 0);
    }

    #[test]
    fn blob_device() {
        let mut vfs = Vfs::new();
        vfs.set_blob_input(b"1\tone\n2\ttwo\n".to_vec());
        let fd = vfs.openat(AT_FDCWD, b"/dev/blob", O_RDONLY, 0).unwrap();
        let mut buf = [0u8; 6];
        assert_eq!(vfs.read(fd, &mut buf), Ok(6));
        assert_eq!(&buf, b"1\tone\n");
        assert_eq!(vfs.read(fd, &mut buf), Ok(6));
        assert_eq!(vfs.read(fd, &mut buf), Ok(0));
        vfs.close(fd).unwrap();
        let out = vfs.openat(AT_FDCWD, b"/dev/blob", O_WRONLY, 0).unwrap();
        vfs.write(out, b"a,b\n").unwrap();
        vfs.write(out, b"c,d\n").unwrap();
        assert_eq!(vfs.take_blob_output(), b"a,b\nc,d\n");
        assert!(vfs.take_blob_output().is_empty());
    }

    #[test]
    fn pipes() {
        let mut vfs = Vfs::new();
        let (r, w) = vfs.pipe2(O_NONBLOCK | O_CLOEXEC).unwrap();
        assert_eq!((r, w), (3, 4));
        assert_eq!(vfs.file_kind(r), Ok(FileKind::Fifo));
        assert_eq!(vfs.fcntl(r, F_GETFD, 0), Ok(FD_CLOEXEC));
        let mut buf = [0u8; 8];
        assert_eq!(vfs.read(r, &mut buf), Err(Errno::EAGAIN));
        assert_eq!(vfs.poll_revents(r, POLLIN), 0);
        assert_eq!(vfs.poll_revents(w, POLLOUT), POLLOUT);
        assert_eq!(vfs.write(w, b"x"), Ok(1));
        assert_eq!(vfs.poll_revents(r, POLLIN), POLLIN);
        assert_eq!(vfs.fstat(r).unwrap().size, 1);
        assert_eq!(vfs.read(r, &mut buf), Ok(1));
        assert_eq!(vfs.write(r, b"x"), Err(Errno::EBADF));
        assert_eq!(vfs.read(w, &mut buf), Err(Errno::EBADF));
        assert_eq!(vfs.seek(r, 0, SEEK_SET), Err(Errno::ESPIPE));
        assert_eq!(vfs.pread(r, &mut buf, 0), Err(Errno::ESPIPE));
        vfs.close(w).unwrap();
        assert_eq!(vfs.read(r, &mut buf), Ok(0));
        assert_eq!(vfs.poll_revents(r, POLLIN), POLLIN | POLLHUP);
        assert_eq!(vfs.poll_revents(w, POLLIN), POLLNVAL);
        assert_eq!(vfs.pipe2(O_TRUNC), Err(Errno::EINVAL));
    }

    #[test]
    fn files_are_always_ready() {
        let mut vfs = Vfs::new();
        let fd = open_rw(&mut vfs, b"/tmp/ready");
        assert_eq!(vfs.poll_revents(fd, POLLIN | POLLOUT), POLLIN | POLLOUT);
        assert_eq!(vfs.poll_revents(fd, POLLIN), POLLIN);
    }

    #[test]
    fn stdout_and_stderr_reach_their_sinks() {
        use std::sync::{Arc, Mutex};
        let mut vfs = Vfs::new();
        let out = Arc::new(Mutex::new(Vec::new()));
        let err = Arc::new(Mutex::new(Vec::new()));
        let (o, e) = (Arc::clone(&out), Arc::clone(&err));
        vfs.set_output_sink(
            1,
            Arc::new(move |b: &[u8]| o.lock().unwrap().extend_from_slice(b)),
        );
        vfs.set_output_sink(
            2,
            Arc::new(move |b: &[u8]| e.lock().unwrap().extend_from_slice(b)),
        );
        assert_eq!(vfs.write(1, b"result\n"), Ok(7));
        assert_eq!(vfs.write(2, b"LOG:  starting"), Ok(14));
        assert_eq!(vfs.write(2, b"\n"), Ok(1));
        let again = vfs.openat(AT_FDCWD, b"/dev/stderr", O_WRONLY, 0).unwrap();
        vfs.write(again, b"more").unwrap();
        assert_eq!(&*out.lock().unwrap(), b"result\n");
        assert_eq!(&*err.lock().unwrap(), b"LOG:  starting\nmore");
        assert_eq!(vfs.pwrite(1, b"x", 0), Err(Errno::ESPIPE));
        assert_eq!(vfs.seek(1, 0, SEEK_CUR), Err(Errno::ESPIPE));
    }

    fn names(entries: &[DirEntry]) -> Vec<String> {
        entries
            .iter()
            .map(|e| String::from_utf8_lossy(&e.name).into_owned())
            .collect()
    }

    #[test]
    fn directory_listing_records_and_resume() {
        let mut vfs = Vfs::new();
        vfs.create_dir_all("/d/sub", 0o755).unwrap();
        for name in ["c", "a", "b"] {
            vfs.write_file(&format!("/d/{name}"), b"", 0o644).unwrap();
        }
        vfs.symlinkat(b"a", AT_FDCWD, b"/d/link").unwrap();
        let fd = vfs.openat(AT_FDCWD, b"/d", O_RDONLY | O_DIRECTORY, 0).unwrap();
        let first = vfs.getdents(fd, 3).unwrap();
        assert_eq!(names(&first), [".", "..", "a"]);
        assert_eq!(first[0].ino, vfs.statat(AT_FDCWD, b"/d", 0).unwrap().ino);
        assert_eq!(first[1].ino, vfs.statat(AT_FDCWD, b"/", 0).unwrap().ino);
        assert_eq!(vfs.seek(fd, 0, SEEK_CUR), Ok(3 * 280));
        let rest = vfs.getdents(fd, 100).unwrap();
        assert_eq!(names(&rest), ["b", "c", "link", "sub"]);
        assert_eq!(rest[2].kind, FileKind::Symlink);
        assert_eq!(rest[3].kind, FileKind::Directory);
        assert!(vfs.getdents(fd, 100).unwrap().is_empty());

        // Resume in the middle (seekdir to the d_off of entry 1).
        assert_eq!(vfs.seek(fd, 2 * 280, SEEK_SET), Ok(560));
        assert_eq!(names(&vfs.getdents(fd, 1).unwrap()), ["a"]);

        // The snapshot is refreshed only on rewind.
        vfs.write_file("/d/aa", b"", 0o644).unwrap();
        assert_eq!(names(&vfs.getdents(fd, 1).unwrap()), ["b"]);
        vfs.seek(fd, 0, SEEK_SET).unwrap();
        let fresh = vfs.getdents(fd, 100).unwrap();
        assert_eq!(names(&fresh), [".", "..", "a", "aa", "b", "c", "link", "sub"]);
        assert_eq!(fresh[3].kind, FileKind::Regular);
        assert!(vfs.getdents(fd, 100).unwrap().is_empty());
        let mut buf = [0u8; 280];
        fresh[3].write_record(3, &mut buf);
        assert_eq!(u64::from_le_bytes(buf[..8].try_into().unwrap()), fresh[3].ino);
        assert_eq!(i64::from_le_bytes(buf[8..16].try_into().unwrap()), 4 * 280);
        assert_eq!(u16::from_le_bytes([buf[16], buf[17]]), 280);
        assert_eq!(buf[18], 8, "DT_REG");
        assert_eq!(&buf[19..22], b"aa\0");
        // The d_off of a record resumes the listing right after it.
        vfs.seek(fd, 4 * 280, SEEK_SET).unwrap();
        assert_eq!(names(&vfs.getdents(fd, 1).unwrap()), ["b"]);
        assert_eq!(vfs.seek(fd, 0, SEEK_END), Err(Errno::EINVAL));
        assert_eq!(vfs.read(fd, &mut buf), Err(Errno::EISDIR));
        let file = vfs.openat(AT_FDCWD, b"/d/a", O_RDONLY, 0).unwrap();
        assert_eq!(vfs.getdents(file, 10), Err(Errno::ENOTDIR));
    }

    #[test]
    fn fsync_is_accepted_everywhere_in_memory() {
        let mut vfs = Vfs::new();
        let fd = open_rw(&mut vfs, b"/tmp/s");
        let dir = vfs.openat(AT_FDCWD, b"/tmp", O_RDONLY, 0).unwrap();
        assert_eq!(vfs.fsync(fd), Ok(()));
        assert_eq!(vfs.fdatasync(fd), Ok(()));
        assert_eq!(vfs.fsync(dir), Ok(()));
        assert_eq!(vfs.fsync(77), Err(Errno::EBADF));
    }
}
