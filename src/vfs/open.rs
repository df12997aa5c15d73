//! Syscalls that create, duplicate and close descriptors: `openat`, `close`, `dup`, `dup3`,
//! `fcntl` and `pipe2`.

use super::Vfs;
use super::errno::{Errno, VfsResult};
use super::fdtable::{Description, MAX_FDS, Target};
use super::filedata::FileData;
use super::flags::*;
use super::host::{self, HostFile, os};
use super::memory::NodeKind;
use super::pipe::PipeEnd;
use super::resolve::{Loc, MAX_SYMLINK_HOPS, Resolved};
use super::stat::{FileKind, PERMISSION_BITS};

/// Open flags that only matter while opening; the rest stay on the description (`F_GETFL`).
const OPEN_ONLY_FLAGS: u32 = O_CREAT | O_EXCL | O_NOCTTY | O_TRUNC | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC;

/// What `openat` found or made.
enum Opened {
    /// An existing file (the open checks still apply).
    Existing(Resolved),
    /// A file `O_CREAT` just created, ready to be used.
    Created(Target),
}

impl Vfs {
    /// `openat`: opens `path` relative to `dirfd` and returns the lowest free descriptor.
    ///
    /// `O_CREAT` creates a regular file with `mode & !umask` (following a dangling symbolic link
    /// to create its target, unless `O_EXCL`, which fails with `EEXIST` on any existing name);
    /// `O_TRUNC` empties a regular file; `O_DIRECTORY` requires a directory; `O_NOFOLLOW` fails
    /// with `ELOOP` on a final symbolic link. Directories open read-only (`EISDIR` otherwise).
    /// `EMFILE` when [`MAX_FDS`] descriptors are open.
    pub fn openat(&mut self, dirfd: i32, path: &[u8], flags: u32, mode: u32) -> VfsResult<i32> {
        if !self.fds.has_room(1) {
            return Err(Errno::EMFILE);
        }
        let opened = if flags & O_CREAT != 0 {
            self.open_creating(dirfd, path, flags, mode)?
        } else {
            Opened::Existing(self.resolve(dirfd, path, flags & O_NOFOLLOW == 0)?)
        };
        let target = match opened {
            Opened::Created(target) => target,
            Opened::Existing(found) => self.open_existing(found, flags)?,
        };
        if let Target::Mem(id) = target {
            self.tree.acquire(id);
        }
        let desc = Description::new(target, flags & !OPEN_ONLY_FLAGS);
        self.fds.open(desc, 0, flags & O_CLOEXEC != 0)
    }

    /// The `O_CREAT` part of `openat`: find the name, following symbolic links to their
    /// targets, and create the file if it is missing.
    fn open_creating(&mut self, dirfd: i32, path: &[u8], flags: u32, mode: u32) -> VfsResult<Opened> {
        let mut hops = 0;
        let mut parent = self.resolve_parent(dirfd, path)?;
        loop {
            let child = self.lookup_child(&parent.dir, &parent.name)?;
            match child {
                Some(_) if flags & O_EXCL != 0 => return Err(Errno::EEXIST),
                Some(link) if link.kind == FileKind::Symlink && flags & O_NOFOLLOW == 0 => {
                    hops += 1;
                    if hops > MAX_SYMLINK_HOPS {
                        return Err(Errno::ELOOP);
                    }
                    let target = self.link_target(&link.loc)?;
                    if target.is_empty() {
                        return Err(Errno::ENOENT);
                    }
                    let trailing_slash = parent.trailing_slash;
                    parent = self.parent_ref(parent.dir, &target, &mut hops)?;
                    parent.trailing_slash |= trailing_slash;
                }
                Some(found) => {
                    if parent.trailing_slash && found.kind != FileKind::Directory {
                        return Err(Errno::ENOTDIR);
                    }
                    return Ok(Opened::Existing(found));
                }
                None => {
                    if parent.trailing_slash {
                        return Err(Errno::EISDIR);
                    }
                    let perm = mode & PERMISSION_BITS & !self.umask;
                    let target = match parent.dir {
                        Loc::Mem(dir) => {
                            let kind = NodeKind::File(FileData::default());
                            Target::Mem(self.tree.create(dir, &parent.name, kind, perm)?)
                        }
                        Loc::Host { mount, rel } => {
                            let rel = rel.join(os(&parent.name));
                            let real = self.real_path(mount, &rel);
                            let file = host::open(&real, flags, Some(perm))?;
                            Target::Host(HostFile {
                                mount,
                                rel,
                                file,
                                kind: FileKind::Regular,
                            })
                        }
                    };
                    return Ok(Opened::Created(target));
                }
            }
        }
    }

    /// The checks and effects of opening an existing file.
    fn open_existing(&mut self, found: Resolved, flags: u32) -> VfsResult<Target> {
        match found.kind {
            FileKind::Symlink => return Err(Errno::ELOOP),
            FileKind::Directory if flags & O_ACCMODE != O_RDONLY || flags & O_CREAT != 0 => {
                return Err(Errno::EISDIR);
            }
            FileKind::Directory => {}
            _ if flags & O_DIRECTORY != 0 => return Err(Errno::ENOTDIR),
            _ => {}
        }
        let truncate = flags & O_TRUNC != 0 && found.kind == FileKind::Regular;
        match found.loc {
            Loc::Mem(id) => {
                let node = self.tree.node_mut(id);
                if truncate
                    && let NodeKind::File(contents) = &mut node.kind
                    && !contents.is_empty()
                {
                    contents.set_len(0)?;
                    node.touch();
                }
                Ok(Target::Mem(id))
            }
            Loc::Host { mount, rel } => {
                let real = self.real_path(mount, &rel);
                let open_flags = if truncate { flags } else { flags & !O_TRUNC };
                let file = host::open(&real, open_flags, None)?;
                Ok(Target::Host(HostFile {
                    mount,
                    rel,
                    file,
                    kind: found.kind,
                }))
            }
        }
    }

    /// `close`. The file behind the descriptor is released with its last descriptor (an
    /// unlinked in-memory file is freed, a host file closed).
    pub fn close(&mut self, fd: i32) -> VfsResult<()> {
        if let Some(desc) = self.fds.close(fd)? {
            self.release(desc);
        }
        Ok(())
    }

    /// `dup`: the lowest free descriptor, sharing the open file description of `fd`.
    pub fn dup(&mut self, fd: i32) -> VfsResult<i32> {
        self.fds.dup(fd, 0, false)
    }

    /// `dup3`: makes `newfd` share the description of `oldfd`, closing `newfd` first if open.
    /// `flags` may only hold `O_CLOEXEC`; `EINVAL` if the descriptors are equal (use
    /// [`Vfs::fcntl`] with `F_GETFD` to emulate `dup2(fd, fd)`).
    pub fn dup3(&mut self, oldfd: i32, newfd: i32, flags: u32) -> VfsResult<i32> {
        if flags & !O_CLOEXEC != 0 {
            return Err(Errno::EINVAL);
        }
        self.fds.get(oldfd)?;
        if oldfd == newfd {
            return Err(Errno::EINVAL);
        }
        if let Some(closed) = self.fds.dup_to(oldfd, newfd, flags & O_CLOEXEC != 0)? {
            self.release(closed);
        }
        Ok(newfd)
    }

    /// `fcntl`: `F_DUPFD`/`F_DUPFD_CLOEXEC` (lowest free descriptor `>= arg`), `F_GETFD`/
    /// `F_SETFD` (`FD_CLOEXEC`), `F_GETFL`/`F_SETFL` (only the bits of [`SETFL_MASK`] change),
    /// `F_GETLK` (returns 0; the host writes `F_UNLCK` into the `struct flock`, nobody else
    /// holds locks), `F_SETLK`/`F_SETLKW` (always granted), `F_GETOWN`/`F_SETOWN` (0). Other
    /// commands give `EINVAL`.
    pub fn fcntl(&mut self, fd: i32, cmd: i32, arg: i32) -> VfsResult<i32> {
        self.fds.get(fd)?;
        match cmd {
            F_DUPFD | F_DUPFD_CLOEXEC => {
                let min = usize::try_from(arg)
                    .ok()
                    .filter(|&min| min < MAX_FDS)
                    .ok_or(Errno::EINVAL)?;
                self.fds.dup(fd, min, cmd == F_DUPFD_CLOEXEC)
            }
            F_GETFD => Ok(if self.fds.cloexec(fd)? { FD_CLOEXEC } else { 0 }),
            F_SETFD => {
                self.fds.set_cloexec(fd, arg & FD_CLOEXEC != 0)?;
                Ok(0)
            }
            F_GETFL => Ok(self.fds.get(fd)?.flags as i32),
            F_SETFL => {
                let desc = self.fds.get_mut(fd)?;
                desc.flags = (desc.flags & !SETFL_MASK) | (arg as u32 & SETFL_MASK);
                Ok(0)
            }
            F_GETLK | F_SETLK | F_SETLKW | F_GETOWN | F_SETOWN => Ok(0),
            _ => Err(Errno::EINVAL),
        }
    }

    /// `pipe2`: a new pipe; returns `(read end, write end)`. `flags` may hold `O_CLOEXEC`,
    /// `O_NONBLOCK` and `O_DIRECT`. Reads of an empty pipe whose write end is open give
    /// `EAGAIN` (nothing here can block).
    pub fn pipe2(&mut self, flags: u32) -> VfsResult<(i32, i32)> {
        if flags & !(O_CLOEXEC | O_NONBLOCK | O_DIRECT) != 0 {
            return Err(Errno::EINVAL);
        }
        if !self.fds.has_room(2) {
            return Err(Errno::EMFILE);
        }
        let id = self.pipes.create();
        let cloexec = flags & O_CLOEXEC != 0;
        let status = flags & O_NONBLOCK;
        let read = Description::new(Target::Pipe(id, PipeEnd::Read), O_RDONLY | status);
        let write = Description::new(Target::Pipe(id, PipeEnd::Write), O_WRONLY | status);
        let read_fd = self.fds.open(read, 0, cloexec)?;
        let write_fd = self.fds.open(write, 0, cloexec)?;
        Ok((read_fd, write_fd))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vfs::AT_FDCWD;

    #[test]
    fn create_exclusive_and_truncate() {
        let mut vfs = Vfs::new();
        let fd = vfs
            .openat(AT_FDCWD, b"/tmp/f", O_CREAT | O_EXCL | O_RDWR, 0o666)
            .unwrap();
        assert_eq!(fd, 3);
        assert_eq!(vfs.fstat(fd).unwrap().mode & 0o777, 0o644, "umask applied");
        vfs.write(fd, b"hello").unwrap();
        assert_eq!(
            vfs.openat(AT_FDCWD, b"/tmp/f", O_CREAT | O_EXCL | O_RDWR, 0o666),
            Err(Errno::EEXIST)
        );
        let again = vfs.openat(AT_FDCWD, b"/tmp/f", O_CREAT | O_RDWR, 0o666).unwrap();
        assert_eq!(vfs.fstat(again).unwrap().size, 5);
        let trunc = vfs.openat(AT_FDCWD, b"/tmp/f", O_WRONLY | O_TRUNC, 0).unwrap();
        assert_eq!(vfs.fstat(trunc).unwrap().size, 0);
        assert_eq!(vfs.fstat(fd).unwrap().size, 0);
    }

    #[test]
    fn open_errors() {
        let mut vfs = Vfs::new();
        assert_eq!(
            vfs.openat(AT_FDCWD, b"/tmp/none", O_RDONLY, 0),
            Err(Errno::ENOENT)
        );
        assert_eq!(vfs.openat(AT_FDCWD, b"/tmp", O_RDWR, 0), Err(Errno::EISDIR));
        assert_eq!(
            vfs.openat(AT_FDCWD, b"/tmp", O_CREAT | O_RDONLY, 0o666),
            Err(Errno::EISDIR)
        );
        assert_eq!(
            vfs.openat(AT_FDCWD, b"/tmp/new/", O_CREAT | O_RDWR, 0o666),
            Err(Errno::EISDIR)
        );
        vfs.write_file("/tmp/file", b"x", 0o644).unwrap();
        assert_eq!(
            vfs.openat(AT_FDCWD, b"/tmp/file", O_RDONLY | O_DIRECTORY, 0),
            Err(Errno::ENOTDIR)
        );
        assert_eq!(
            vfs.openat(AT_FDCWD, b"/tmp/file/", O_RDONLY, 0),
            Err(Errno::ENOTDIR)
        );
        assert!(vfs.openat(AT_FDCWD, b"/tmp", O_RDONLY | O_DIRECTORY, 0).is_ok());
    }

    #[test]
    fn create_through_a_dangling_symlink() {
        let mut vfs = Vfs::new();
        vfs.symlinkat(b"target", AT_FDCWD, b"/tmp/link").unwrap();
        assert_eq!(
            vfs.openat(AT_FDCWD, b"/tmp/link", O_CREAT | O_EXCL | O_WRONLY, 0o600),
            Err(Errno::EEXIST)
        );
        assert_eq!(
            vfs.openat(AT_FDCWD, b"/tmp/link", O_CREAT | O_NOFOLLOW | O_WRONLY, 0o600),
            Err(Errno::ELOOP)
        );
        let fd = vfs
            .openat(AT_FDCWD, b"/tmp/link", O_CREAT | O_WRONLY, 0o600)
            .unwrap();
        vfs.write(fd, b"via link").unwrap();
        assert_eq!(vfs.read_file("/tmp/target").unwrap(), b"via link");
    }

    #[test]
    fn dup_shares_offset_and_flags() {
        let mut vfs = Vfs::new();
        vfs.write_file("/tmp/f", b"0123456789", 0o644).unwrap();
        let fd = vfs.openat(AT_FDCWD, b"/tmp/f", O_RDONLY, 0).unwrap();
        let copy = vfs.dup(fd).unwrap();
        let mut buf = [0u8; 3];
        vfs.read(fd, &mut buf).unwrap();
        vfs.read(copy, &mut buf).unwrap();
        assert_eq!(&buf, b"345");
        vfs.fcntl(fd, F_SETFL, (O_NONBLOCK | O_RDWR) as i32).unwrap();
        assert_eq!(vfs.fcntl(copy, F_GETFL, 0), Ok((O_NONBLOCK | O_RDONLY) as i32));
        assert_eq!(vfs.fcntl(copy, F_GETFD, 0), Ok(0));
        vfs.fcntl(copy, F_SETFD, FD_CLOEXEC).unwrap();
        assert_eq!(vfs.fcntl(copy, F_GETFD, 0), Ok(FD_CLOEXEC));
        assert_eq!(vfs.fcntl(fd, F_GETFD, 0), Ok(0));
        assert_eq!(vfs.fcntl(fd, F_DUPFD, 100), Ok(100));
        assert_eq!(vfs.fcntl(fd, F_DUPFD_CLOEXEC, 100), Ok(101));
        assert_eq!(vfs.fcntl(101, F_GETFD, 0), Ok(FD_CLOEXEC));
        assert_eq!(vfs.fcntl(fd, F_SETLK, 0), Ok(0));
        assert_eq!(vfs.fcntl(fd, 999, 0), Err(Errno::EINVAL));
        assert_eq!(vfs.fcntl(77, F_GETFD, 0), Err(Errno::EBADF));
    }

    #[test]
    fn a_thousand_dups_then_close() {
        let mut vfs = Vfs::new();
        let nodes = vfs.memory_stats().nodes;
        let mut fds = Vec::new();
        for expected in 3..1003 {
            let fd = vfs.dup(2).unwrap();
            assert_eq!(fd, expected);
            fds.push(fd);
        }
        assert_eq!(vfs.open_fds().len(), 1003);
        for fd in fds {
            vfs.close(fd).unwrap();
        }
        assert_eq!(vfs.open_fds(), vec![0, 1, 2]);
        assert_eq!(vfs.dup(2), Ok(3));
        assert_eq!(vfs.memory_stats().nodes, nodes);
    }

    #[test]
    fn descriptor_limit() {
        let mut vfs = Vfs::new();
        while vfs.dup(0).is_ok() {}
        assert_eq!(vfs.open_fds().len(), MAX_FDS);
        assert_eq!(vfs.dup(0), Err(Errno::EMFILE));
        assert_eq!(
            vfs.openat(AT_FDCWD, b"/dev/null", O_RDONLY, 0),
            Err(Errno::EMFILE)
        );
        assert_eq!(vfs.pipe2(0), Err(Errno::EMFILE));
        vfs.close(4000).unwrap();
        assert_eq!(vfs.openat(AT_FDCWD, b"/dev/null", O_RDONLY, 0), Ok(4000));
    }

    #[test]
    fn dup3_replaces_and_releases() {
        let mut vfs = Vfs::new();
        vfs.write_file("/tmp/a", b"a", 0o644).unwrap();
        let fd = vfs.openat(AT_FDCWD, b"/tmp/a", O_RDONLY, 0).unwrap();
        vfs.unlinkat(AT_FDCWD, b"/tmp/a", 0).unwrap();
        let nodes = vfs.memory_stats().nodes;
        // fd 1 now reads the unlinked file; dup3 over fd frees it.
        assert_eq!(vfs.dup3(fd, 1, O_CLOEXEC), Ok(1));
        assert_eq!(vfs.fcntl(1, F_GETFD, 0), Ok(FD_CLOEXEC));
        assert_eq!(vfs.dup3(2, fd, 0), Ok(fd));
        assert_eq!(vfs.memory_stats().nodes, nodes);
        vfs.close(1).unwrap();
        assert_eq!(vfs.memory_stats().nodes, nodes - 1);
        assert_eq!(vfs.dup3(2, 2, 0), Err(Errno::EINVAL));
        assert_eq!(vfs.dup3(2, 5, 1), Err(Errno::EINVAL));
        assert_eq!(vfs.dup3(99, 5, 0), Err(Errno::EBADF));
        assert_eq!(vfs.dup3(2, MAX_FDS as i32, 0), Err(Errno::EBADF));
    }
}
