//! Syscalls on names: `stat`, `access`, `mkdir`, `unlink`/`rmdir`, `rename`, links, the
//! working directory, permissions, times, `truncate` and `statfs`.

use std::fs;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};

use super::errno::{Errno, VfsResult};
use super::fdtable::Target;
use super::flags::*;
use super::host::{io_err, os, stat_from_metadata};
use super::memory::{NodeId, NodeKind};
use super::resolve::{Loc, ParentRef, Resolved};
use super::stat::{self, FileKind, PERMISSION_BITS, Stat, StatFs, Timespec, now};
use super::{AT_FDCWD, Vfs};

/// `f_type` reported by `statfs` for the in-memory tree (`TMPFS_MAGIC`).
const TMPFS_MAGIC: u32 = 0x0102_1994;
/// `f_type` reported by `statfs` for host mounts (`EXT4_SUPER_MAGIC`; not measured).
const HOST_FS_MAGIC: u32 = 0xef53;
/// `statfs` mount flag `ST_NOSUID`.
const ST_NOSUID: u32 = 2;

impl Vfs {
    /// `stat`/`lstat`/`newfstatat`: `AT_SYMLINK_NOFOLLOW` describes a final symbolic link
    /// itself, `AT_EMPTY_PATH` with an empty path describes `dirfd` (or the working directory).
    pub fn statat(&self, dirfd: i32, path: &[u8], flags: u32) -> VfsResult<Stat> {
        if flags & !(AT_SYMLINK_NOFOLLOW | AT_EMPTY_PATH | AT_NO_AUTOMOUNT) != 0 {
            return Err(Errno::EINVAL);
        }
        if path.is_empty() && flags & AT_EMPTY_PATH != 0 {
            if dirfd == AT_FDCWD {
                return self.stat_loc(&self.cwd);
            }
            return self.fstat(dirfd);
        }
        let found = self.resolve(dirfd, path, flags & AT_SYMLINK_NOFOLLOW == 0)?;
        self.stat_loc(&found.loc)
    }

    /// `faccessat`: `ENOENT` if missing; for `amode` bits `R_OK`, `W_OK`, `X_OK` the file must
    /// have that permission for someone (owner, group or other, as Emscripten checks it; the
    /// guest runs as the owner, uid 0), else `EACCES`.
    pub fn faccessat(&self, dirfd: i32, path: &[u8], amode: u32, flags: u32) -> VfsResult<()> {
        if flags & !(AT_EACCESS | AT_SYMLINK_NOFOLLOW | AT_EMPTY_PATH) != 0
            || amode & !(R_OK | W_OK | X_OK) != 0
        {
            return Err(Errno::EINVAL);
        }
        let stat = self.statat(dirfd, path, flags & !AT_EACCESS)?;
        let denied = [(R_OK, 0o444), (W_OK, 0o222), (X_OK, 0o111)]
            .into_iter()
            .any(|(wanted, bits)| amode & wanted != 0 && stat.mode & bits == 0);
        if denied { Err(Errno::EACCES) } else { Ok(()) }
    }

    /// `mkdirat`: a new directory with `mode & !umask`.
    pub fn mkdirat(&mut self, dirfd: i32, path: &[u8], mode: u32) -> VfsResult<()> {
        let parent = self.resolve_parent(dirfd, path)?;
        if parent.is_dot() || self.lookup_child(&parent.dir, &parent.name)?.is_some() {
            return Err(Errno::EEXIST);
        }
        let perm = mode & 0o1777 & !self.umask;
        match &parent.dir {
            Loc::Mem(_) => self.make_dir(&parent.dir, &parent.name, perm).map(drop),
            Loc::Host { mount, rel } => fs::DirBuilder::new()
                .mode(perm)
                .create(self.real_path(*mount, &rel.join(os(&parent.name))))
                .map_err(io_err),
        }
    }

    /// `unlinkat`: flags 0 removes a non-directory (`EISDIR` for a directory),
    /// `AT_REMOVEDIR` removes an empty directory (`ENOTEMPTY`, `ENOTDIR`); other flags give
    /// `EINVAL`. Mount points are `EBUSY`.
    pub fn unlinkat(&mut self, dirfd: i32, path: &[u8], flags: u32) -> VfsResult<()> {
        if flags & !AT_REMOVEDIR != 0 {
            return Err(Errno::EINVAL);
        }
        let rmdir = flags & AT_REMOVEDIR != 0;
        let parent = self.resolve_parent(dirfd, path)?;
        match (&parent.name[..], rmdir) {
            (b".", true) => return Err(Errno::EINVAL),
            (b"..", true) => return Err(Errno::ENOTEMPTY),
            (b"." | b"..", false) => return Err(Errno::EISDIR),
            _ => {}
        }
        let child = self
            .lookup_child(&parent.dir, &parent.name)?
            .ok_or(Errno::ENOENT)?;
        let is_dir = child.kind == FileKind::Directory;
        if rmdir && !is_dir {
            return Err(Errno::ENOTDIR);
        }
        if !rmdir && is_dir {
            return Err(Errno::EISDIR);
        }
        if !rmdir && parent.trailing_slash {
            return Err(Errno::ENOTDIR);
        }
        match (&parent.dir, &child.loc) {
            (Loc::Mem(dir), Loc::Mem(id)) => {
                if rmdir && !self.tree.dir(*id)?.entries.is_empty() {
                    return Err(Errno::ENOTEMPTY);
                }
                self.tree.unlink(*dir, &parent.name).map(drop)
            }
            (_, Loc::Host { rel, .. }) if rel.as_os_str().is_empty() => Err(Errno::EBUSY),
            (_, Loc::Host { mount, rel }) => {
                let real = self.real_path(*mount, rel);
                if rmdir {
                    fs::remove_dir(real).map_err(io_err)
                } else {
                    fs::remove_file(real).map_err(io_err)
                }
            }
            // A host directory's entries are host files; `..` was handled above.
            (Loc::Host { .. }, Loc::Mem(_)) => Err(Errno::EIO),
        }
    }

    /// `renameat`: atomically moves `old` to `new`, replacing a non-directory or an empty
    /// directory there. `EXDEV` between the in-memory tree and a mount (or two mounts); on a
    /// mount it is `std::fs::rename`, followed by a sync of the directories involved in
    /// [`super::Durability::Durable`] mode.
    pub fn renameat(&mut self, olddirfd: i32, old: &[u8], newdirfd: i32, new: &[u8]) -> VfsResult<()> {
        let from = self.resolve_parent(olddirfd, old)?;
        let to = self.resolve_parent(newdirfd, new)?;
        if from.is_dot() || to.is_dot() {
            return Err(Errno::EBUSY);
        }
        let source = self.lookup_child(&from.dir, &from.name)?.ok_or(Errno::ENOENT)?;
        if (from.trailing_slash || to.trailing_slash) && source.kind != FileKind::Directory {
            return Err(Errno::ENOTDIR);
        }
        match (&from.dir, &source.loc, &to.dir) {
            (_, Loc::Host { rel, .. }, _) if rel.as_os_str().is_empty() => Err(Errno::EBUSY),
            (Loc::Mem(old_dir), Loc::Mem(id), Loc::Mem(new_dir)) => {
                self.rename_in_memory(*old_dir, &from.name, *id, *new_dir, &to.name)
            }
            (
                Loc::Host { mount, rel: old_rel },
                _,
                Loc::Host {
                    mount: new_mount,
                    rel: new_rel,
                },
            ) if mount == new_mount => {
                let mount = &self.mounts[*mount];
                let old_dir = mount.real_path(old_rel);
                let new_dir = mount.real_path(new_rel);
                fs::rename(old_dir.join(os(&from.name)), new_dir.join(os(&to.name))).map_err(io_err)?;
                mount.sync_dir(&new_dir)?;
                if old_dir != new_dir {
                    mount.sync_dir(&old_dir)?;
                }
                Ok(())
            }
            _ => Err(Errno::EXDEV),
        }
    }

    fn rename_in_memory(
        &mut self,
        old_dir: NodeId,
        old_name: &[u8],
        id: NodeId,
        new_dir: NodeId,
        new_name: &[u8],
    ) -> VfsResult<()> {
        let source_is_dir = self.tree.node(id).file_kind() == FileKind::Directory;
        if let Some(existing) = self.tree.lookup(new_dir, new_name)? {
            if existing == id {
                return Ok(());
            }
            match &self.tree.node(existing).kind {
                NodeKind::Dir(dir) if dir.mount.is_some() => return Err(Errno::EBUSY),
                NodeKind::Dir(dir) if source_is_dir && !dir.entries.is_empty() => {
                    return Err(Errno::ENOTEMPTY);
                }
                NodeKind::Dir(_) if !source_is_dir => return Err(Errno::EISDIR),
                NodeKind::Dir(_) => {}
                _ if source_is_dir => return Err(Errno::ENOTDIR),
                _ => {}
            }
        }
        if source_is_dir && self.tree.is_ancestor(id, new_dir) {
            return Err(Errno::EINVAL);
        }
        self.tree.rename(old_dir, old_name, new_dir, new_name)
    }

    /// `readlinkat`: the target of a symbolic link (`EINVAL` for anything else).
    pub fn readlinkat(&self, dirfd: i32, path: &[u8]) -> VfsResult<Vec<u8>> {
        let found = self.resolve(dirfd, path, false)?;
        if found.kind != FileKind::Symlink {
            return Err(Errno::EINVAL);
        }
        self.link_target(&found.loc)
    }

    /// `symlinkat`: a symbolic link at `path` pointing to `target` (stored verbatim; on a host
    /// mount it is a real host link, still resolved through the VFS).
    pub fn symlinkat(&mut self, target: &[u8], dirfd: i32, path: &[u8]) -> VfsResult<()> {
        if target.is_empty() {
            return Err(Errno::ENOENT);
        }
        if target.len() >= super::resolve::PATH_MAX {
            return Err(Errno::ENAMETOOLONG);
        }
        let parent = self.new_name(dirfd, path)?;
        match parent.dir {
            Loc::Mem(dir) => self
                .tree
                .create(dir, &parent.name, NodeKind::Symlink(target.into()), 0o777)
                .map(drop),
            Loc::Host { mount, rel } => {
                let real = self.real_path(mount, &rel.join(os(&parent.name)));
                std::os::unix::fs::symlink(os(target), real).map_err(io_err)
            }
        }
    }

    /// `linkat`: a new name for an existing non-directory. `AT_SYMLINK_FOLLOW` follows a final
    /// symbolic link of `old`, `AT_EMPTY_PATH` with an empty `old` links `olddirfd`'s file.
    pub fn linkat(
        &mut self,
        olddirfd: i32,
        old: &[u8],
        newdirfd: i32,
        new: &[u8],
        flags: u32,
    ) -> VfsResult<()> {
        if flags & !(AT_SYMLINK_FOLLOW | AT_EMPTY_PATH) != 0 {
            return Err(Errno::EINVAL);
        }
        let source = if old.is_empty() && flags & AT_EMPTY_PATH != 0 {
            self.fd_resolved(olddirfd)?
        } else {
            self.resolve(olddirfd, old, flags & AT_SYMLINK_FOLLOW != 0)?
        };
        if source.kind == FileKind::Directory {
            return Err(Errno::EPERM);
        }
        let parent = self.new_name(newdirfd, new)?;
        match (source.loc, parent.dir) {
            (Loc::Mem(id), Loc::Mem(dir)) => {
                if self.tree.node(id).links == 0 {
                    return Err(Errno::ENOENT);
                }
                self.tree.link(dir, &parent.name, id)
            }
            (
                Loc::Host { mount, rel },
                Loc::Host {
                    mount: new_mount,
                    rel: new_rel,
                },
            ) if mount == new_mount => fs::hard_link(
                self.real_path(mount, &rel),
                self.real_path(mount, &new_rel.join(os(&parent.name))),
            )
            .map_err(io_err),
            _ => Err(Errno::EXDEV),
        }
    }

    /// The parent of a name that must not exist yet (`EEXIST` otherwise).
    fn new_name(&self, dirfd: i32, path: &[u8]) -> VfsResult<ParentRef> {
        let parent = self.resolve_parent(dirfd, path)?;
        if parent.is_dot() || self.lookup_child(&parent.dir, &parent.name)?.is_some() {
            return Err(Errno::EEXIST);
        }
        if parent.trailing_slash {
            return Err(Errno::ENOENT);
        }
        Ok(parent)
    }

    /// `chdir`.
    pub fn chdir(&mut self, path: &[u8]) -> VfsResult<()> {
        let found = self.resolve(AT_FDCWD, path, true)?;
        if found.kind != FileKind::Directory {
            return Err(Errno::ENOTDIR);
        }
        if let Loc::Mem(id) = found.loc {
            self.tree.acquire(id);
        }
        if let Loc::Mem(old) = std::mem::replace(&mut self.cwd, found.loc) {
            self.tree.release(old);
        }
        Ok(())
    }

    /// `getcwd`: the absolute path of the working directory (no NUL).
    pub fn getcwd(&self) -> Vec<u8> {
        self.path_of(&self.cwd)
    }

    /// `chmod`/`fchmodat`: sets the permission bits (symbolic links followed).
    pub fn chmodat(&mut self, dirfd: i32, path: &[u8], mode: u32) -> VfsResult<()> {
        let found = self.resolve(dirfd, path, true)?;
        self.chmod_resolved(&found, mode)
    }

    /// `fchmod`.
    pub fn fchmod(&mut self, fd: i32, mode: u32) -> VfsResult<()> {
        match &self.fds.get(fd)?.target {
            Target::Host(file) => file
                .file
                .set_permissions(fs::Permissions::from_mode(mode & PERMISSION_BITS))
                .map_err(io_err),
            Target::Pipe(..) => Ok(()),
            Target::Mem(_) => {
                let found = self.fd_resolved(fd)?;
                self.chmod_resolved(&found, mode)
            }
        }
    }

    fn chmod_resolved(&mut self, found: &Resolved, mode: u32) -> VfsResult<()> {
        match &found.loc {
            Loc::Mem(id) => {
                let node = self.tree.node_mut(*id);
                node.perm = mode & PERMISSION_BITS;
                node.ctime = now();
                Ok(())
            }
            Loc::Host { mount, rel } => fs::set_permissions(
                self.real_path(*mount, rel),
                fs::Permissions::from_mode(mode & PERMISSION_BITS),
            )
            .map_err(io_err),
        }
    }

    /// `utimensat`: sets access and modification times; `None` means both "now", a nanosecond
    /// value of [`UTIME_NOW`] or [`UTIME_OMIT`] means "now" or "unchanged" for that one.
    /// `AT_EMPTY_PATH` with an empty path changes `dirfd`'s file. `ENOTSUP` for a symbolic link
    /// on a host mount with `AT_SYMLINK_NOFOLLOW` (std has no `lutimes`).
    pub fn utimensat(
        &mut self,
        dirfd: i32,
        path: &[u8],
        times: Option<[Timespec; 2]>,
        flags: u32,
    ) -> VfsResult<()> {
        if flags & !(AT_SYMLINK_NOFOLLOW | AT_EMPTY_PATH) != 0 {
            return Err(Errno::EINVAL);
        }
        let found = if path.is_empty() && flags & AT_EMPTY_PATH != 0 {
            if dirfd == AT_FDCWD {
                Resolved {
                    loc: self.cwd.clone(),
                    kind: FileKind::Directory,
                }
            } else {
                self.fd_resolved(dirfd)?
            }
        } else {
            self.resolve(dirfd, path, flags & AT_SYMLINK_NOFOLLOW == 0)?
        };
        let current = now();
        let pick = |time: Timespec| -> VfsResult<Option<Timespec>> {
            match time.1 {
                UTIME_NOW => Ok(Some(current)),
                UTIME_OMIT => Ok(None),
                nanos if nanos >= 1_000_000_000 => Err(Errno::EINVAL),
                _ => Ok(Some(time)),
            }
        };
        let (atime, mtime) = match times {
            None => (Some(current), Some(current)),
            Some([atime, mtime]) => (pick(atime)?, pick(mtime)?),
        };
        match found.loc {
            Loc::Mem(id) => {
                let node = self.tree.node_mut(id);
                if let Some(atime) = atime {
                    node.atime = atime;
                }
                if let Some(mtime) = mtime {
                    node.mtime = mtime;
                }
                node.ctime = current;
                Ok(())
            }
            Loc::Host { .. } if found.kind == FileKind::Symlink => Err(Errno::ENOTSUP),
            Loc::Host { mount, rel } => {
                let real = self.real_path(mount, &rel);
                let file = fs::File::open(&real)
                    .or_else(|_| fs::OpenOptions::new().write(true).open(&real))
                    .map_err(io_err)?;
                let mut file_times = fs::FileTimes::new();
                if let Some(atime) = atime {
                    file_times = file_times.set_accessed(stat::to_system_time(atime));
                }
                if let Some(mtime) = mtime {
                    file_times = file_times.set_modified(stat::to_system_time(mtime));
                }
                file.set_times(file_times).map_err(io_err)
            }
        }
    }

    /// `truncate`: sets the size of the regular file at `path` (symbolic links followed).
    pub fn truncate(&mut self, path: &[u8], len: u64) -> VfsResult<()> {
        if i64::try_from(len).is_err() {
            return Err(Errno::EINVAL);
        }
        let found = self.resolve(AT_FDCWD, path, true)?;
        match found.kind {
            FileKind::Directory => return Err(Errno::EISDIR),
            FileKind::Regular => {}
            _ => return Err(Errno::EINVAL),
        }
        match found.loc {
            Loc::Mem(id) => {
                let node = self.tree.node_mut(id);
                if let NodeKind::File(contents) = &mut node.kind {
                    contents.set_len(len)?;
                    node.touch();
                }
                Ok(())
            }
            Loc::Host { mount, rel } => fs::OpenOptions::new()
                .write(true)
                .open(self.real_path(mount, &rel))
                .and_then(|file| file.set_len(len))
                .map_err(io_err),
        }
    }

    /// `statfs`: fixed, plausible numbers (like Emscripten's), after checking that `path`
    /// exists.
    pub fn statfs(&self, path: &[u8]) -> VfsResult<StatFs> {
        let found = self.resolve(AT_FDCWD, path, true)?;
        let (fs_type, dev) = match found.loc {
            Loc::Mem(_) => (TMPFS_MAGIC, super::memory::MEMORY_DEV),
            Loc::Host { mount, .. } => (HOST_FS_MAGIC, self.mounts[mount].dev),
        };
        Ok(StatFs {
            fs_type,
            bsize: 4096,
            blocks: 1_000_000,
            bfree: 500_000,
            bavail: 500_000,
            files: u32::try_from(self.tree.live_nodes()).unwrap_or(u32::MAX),
            ffree: 1_000_000,
            fsid: [dev, 0],
            namelen: super::resolve::NAME_MAX as u32,
            frsize: 4096,
            flags: ST_NOSUID,
        })
    }

    /// `stat` of a resolved location (a symbolic link describes itself).
    pub(crate) fn stat_loc(&self, loc: &Loc) -> VfsResult<Stat> {
        match loc {
            Loc::Mem(id) => Ok(self.tree.stat(*id)),
            Loc::Host { mount, rel } => {
                let meta = fs::symlink_metadata(self.real_path(*mount, rel)).map_err(io_err)?;
                Ok(stat_from_metadata(&meta, self.mounts[*mount].dev))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_kinds_and_modes() {
        let mut vfs = Vfs::new();
        vfs.write_file("/tmp/f", b"12345", 0o640).unwrap();
        vfs.symlinkat(b"f", AT_FDCWD, b"/tmp/l").unwrap();
        let file = vfs.statat(AT_FDCWD, b"/tmp/f", 0).unwrap();
        assert_eq!(file.mode, stat::S_IFREG | 0o640);
        assert_eq!(
            (file.size, file.nlink, file.blocks, file.blksize),
            (5, 1, 1, 4096)
        );
        assert_eq!((file.dev, file.uid, file.gid), (1, 0, 0));
        let link = vfs.statat(AT_FDCWD, b"/tmp/l", AT_SYMLINK_NOFOLLOW).unwrap();
        assert_eq!(link.mode & stat::S_IFMT, stat::S_IFLNK);
        assert_eq!(link.size, 1);
        assert_eq!(vfs.statat(AT_FDCWD, b"/tmp/l", 0).unwrap().ino, file.ino);
        let dir = vfs.statat(AT_FDCWD, b"/tmp", 0).unwrap();
        assert_eq!(dir.mode, stat::S_IFDIR | 0o777);
        let fd = vfs.openat(AT_FDCWD, b"/tmp", O_RDONLY, 0).unwrap();
        assert_eq!(vfs.statat(fd, b"", AT_EMPTY_PATH).unwrap().ino, dir.ino);
        assert_eq!(vfs.statat(fd, b"", 0), Err(Errno::ENOENT));
        assert_eq!(vfs.statat(fd, b"f", 0x4), Err(Errno::EINVAL));
        assert_eq!(vfs.statat(fd, b"f", 0).unwrap().ino, file.ino);
        let root = vfs.statat(AT_FDCWD, b"", AT_EMPTY_PATH).unwrap();
        assert_eq!(root.ino, vfs.statat(AT_FDCWD, b"/", 0).unwrap().ino);
    }

    #[test]
    fn access_checks_mode_bits() {
        let mut vfs = Vfs::new();
        vfs.write_file("/pglite/bin/postgres", b"PGlite is the best!", 0o555)
            .unwrap();
        vfs.write_file("/ro", b"", 0o444).unwrap();
        vfs.write_file("/all", b"", 0o777).unwrap();
        assert_eq!(vfs.faccessat(AT_FDCWD, b"/pglite/bin/postgres", X_OK, 0), Ok(()));
        assert_eq!(vfs.faccessat(AT_FDCWD, b"/all", R_OK | W_OK | X_OK, 0), Ok(()));
        assert_eq!(vfs.faccessat(AT_FDCWD, b"/ro", R_OK, 0), Ok(()));
        assert_eq!(vfs.faccessat(AT_FDCWD, b"/ro", W_OK, 0), Err(Errno::EACCES));
        assert_eq!(vfs.faccessat(AT_FDCWD, b"/ro", X_OK, 0), Err(Errno::EACCES));
        assert_eq!(vfs.faccessat(AT_FDCWD, b"/ro", F_OK, 0), Ok(()));
        assert_eq!(vfs.faccessat(AT_FDCWD, b"/missing", F_OK, 0), Err(Errno::ENOENT));
        assert_eq!(vfs.faccessat(AT_FDCWD, b"/ro", 8, 0), Err(Errno::EINVAL));
        vfs.chmodat(AT_FDCWD, b"/ro", 0o644).unwrap();
        assert_eq!(vfs.faccessat(AT_FDCWD, b"/ro", W_OK, 0), Ok(()));
        let fd = vfs.openat(AT_FDCWD, b"/ro", O_RDONLY, 0).unwrap();
        vfs.fchmod(fd, 0o400).unwrap();
        assert_eq!(vfs.statat(AT_FDCWD, b"/ro", 0).unwrap().mode & 0o7777, 0o400);
    }

    #[test]
    fn mkdir_rmdir_unlink() {
        let mut vfs = Vfs::new();
        vfs.mkdirat(AT_FDCWD, b"/tmp/d", 0o777).unwrap();
        assert_eq!(vfs.statat(AT_FDCWD, b"/tmp/d", 0).unwrap().mode & 0o777, 0o755);
        assert_eq!(vfs.mkdirat(AT_FDCWD, b"/tmp/d", 0o777), Err(Errno::EEXIST));
        assert_eq!(vfs.mkdirat(AT_FDCWD, b"/tmp/d/", 0o777), Err(Errno::EEXIST));
        assert_eq!(vfs.mkdirat(AT_FDCWD, b"/", 0o777), Err(Errno::EEXIST));
        assert_eq!(vfs.mkdirat(AT_FDCWD, b"/tmp/x/y", 0o777), Err(Errno::ENOENT));
        vfs.mkdirat(AT_FDCWD, b"/tmp/d/e/", 0o700).unwrap();
        vfs.write_file("/tmp/d/f", b"", 0o644).unwrap();
        assert_eq!(vfs.statat(AT_FDCWD, b"/tmp/d", 0).unwrap().nlink, 3);
        assert_eq!(
            vfs.unlinkat(AT_FDCWD, b"/tmp/d", AT_REMOVEDIR),
            Err(Errno::ENOTEMPTY)
        );
        assert_eq!(vfs.unlinkat(AT_FDCWD, b"/tmp/d", 0), Err(Errno::EISDIR));
        assert_eq!(
            vfs.unlinkat(AT_FDCWD, b"/tmp/d/f", AT_REMOVEDIR),
            Err(Errno::ENOTDIR)
        );
        assert_eq!(vfs.unlinkat(AT_FDCWD, b"/tmp/d/f/", 0), Err(Errno::ENOTDIR));
        assert_eq!(vfs.unlinkat(AT_FDCWD, b"/tmp/d/f", 0x1), Err(Errno::EINVAL));
        assert_eq!(vfs.unlinkat(AT_FDCWD, b"/tmp/d/none", 0), Err(Errno::ENOENT));
        assert_eq!(
            vfs.unlinkat(AT_FDCWD, b"/tmp/d/.", AT_REMOVEDIR),
            Err(Errno::EINVAL)
        );
        vfs.unlinkat(AT_FDCWD, b"/tmp/d/f", 0).unwrap();
        vfs.unlinkat(AT_FDCWD, b"/tmp/d/e/", AT_REMOVEDIR).unwrap();
        vfs.unlinkat(AT_FDCWD, b"/tmp/d", AT_REMOVEDIR).unwrap();
        assert!(!vfs.exists("/tmp/d"));
        assert_eq!(vfs.statat(AT_FDCWD, b"/tmp", 0).unwrap().nlink, 2);
    }

    #[test]
    fn rename_rules_in_memory() {
        let mut vfs = Vfs::new();
        vfs.write_file("/tmp/a", b"new", 0o644).unwrap();
        vfs.write_file("/tmp/b", b"old", 0o644).unwrap();
        let old_b = vfs.openat(AT_FDCWD, b"/tmp/b", O_RDONLY, 0).unwrap();
        vfs.renameat(AT_FDCWD, b"/tmp/a", AT_FDCWD, b"/tmp/b").unwrap();
        assert_eq!(vfs.read_file("/tmp/b").unwrap(), b"new");
        assert!(!vfs.exists("/tmp/a"));
        // The replaced file lives on through its descriptor.
        let mut buf = [0u8; 3];
        assert_eq!(vfs.read(old_b, &mut buf), Ok(3));
        assert_eq!(&buf, b"old");

        vfs.create_dir_all("/tmp/d1/sub", 0o755).unwrap();
        vfs.create_dir_all("/tmp/d2", 0o755).unwrap();
        vfs.create_dir_all("/tmp/full/x", 0o755).unwrap();
        assert_eq!(
            vfs.renameat(AT_FDCWD, b"/tmp/d1", AT_FDCWD, b"/tmp/d1/sub/in"),
            Err(Errno::EINVAL)
        );
        assert_eq!(
            vfs.renameat(AT_FDCWD, b"/tmp/d1", AT_FDCWD, b"/tmp/full"),
            Err(Errno::ENOTEMPTY)
        );
        assert_eq!(
            vfs.renameat(AT_FDCWD, b"/tmp/d1", AT_FDCWD, b"/tmp/b"),
            Err(Errno::ENOTDIR)
        );
        assert_eq!(
            vfs.renameat(AT_FDCWD, b"/tmp/b", AT_FDCWD, b"/tmp/d2"),
            Err(Errno::EISDIR)
        );
        assert_eq!(
            vfs.renameat(AT_FDCWD, b"/tmp/b/", AT_FDCWD, b"/tmp/c"),
            Err(Errno::ENOTDIR)
        );
        assert_eq!(
            vfs.renameat(AT_FDCWD, b"/tmp/none", AT_FDCWD, b"/tmp/c"),
            Err(Errno::ENOENT)
        );
        vfs.renameat(AT_FDCWD, b"/tmp/d1", AT_FDCWD, b"/tmp/d2").unwrap();
        assert!(vfs.exists("/tmp/d2/sub"));
        vfs.renameat(AT_FDCWD, b"/tmp/b", AT_FDCWD, b"/tmp/b").unwrap();
        assert_eq!(vfs.read_file("/tmp/b").unwrap(), b"new");
        // Relative names through directory descriptors.
        let tmp = vfs.openat(AT_FDCWD, b"/tmp", O_RDONLY, 0).unwrap();
        let d2 = vfs.openat(AT_FDCWD, b"/tmp/d2", O_RDONLY, 0).unwrap();
        vfs.renameat(tmp, b"b", d2, b"moved").unwrap();
        assert_eq!(vfs.read_file("/tmp/d2/moved").unwrap(), b"new");
    }

    #[test]
    fn links() {
        let mut vfs = Vfs::new();
        vfs.write_file("/tmp/f", b"data", 0o644).unwrap();
        vfs.linkat(AT_FDCWD, b"/tmp/f", AT_FDCWD, b"/tmp/g", 0).unwrap();
        assert_eq!(vfs.statat(AT_FDCWD, b"/tmp/f", 0).unwrap().nlink, 2);
        assert_eq!(
            vfs.linkat(AT_FDCWD, b"/tmp/f", AT_FDCWD, b"/tmp/g", 0),
            Err(Errno::EEXIST)
        );
        assert_eq!(
            vfs.linkat(AT_FDCWD, b"/tmp", AT_FDCWD, b"/tmp2", 0),
            Err(Errno::EPERM)
        );
        vfs.unlinkat(AT_FDCWD, b"/tmp/f", 0).unwrap();
        assert_eq!(vfs.read_file("/tmp/g").unwrap(), b"data");
        vfs.symlinkat(b"/tmp/g", AT_FDCWD, b"/tmp/s").unwrap();
        assert_eq!(vfs.readlinkat(AT_FDCWD, b"/tmp/s").unwrap(), b"/tmp/g");
        assert_eq!(vfs.readlinkat(AT_FDCWD, b"/tmp/g"), Err(Errno::EINVAL));
        assert_eq!(vfs.symlinkat(b"x", AT_FDCWD, b"/tmp/s"), Err(Errno::EEXIST));
        assert_eq!(vfs.symlinkat(b"", AT_FDCWD, b"/tmp/t"), Err(Errno::ENOENT));
        vfs.linkat(AT_FDCWD, b"/tmp/s", AT_FDCWD, b"/tmp/s2", 0).unwrap();
        assert_eq!(
            FileKind::from_mode(
                vfs.statat(AT_FDCWD, b"/tmp/s2", AT_SYMLINK_NOFOLLOW)
                    .unwrap()
                    .mode
            ),
            FileKind::Symlink
        );
        vfs.linkat(AT_FDCWD, b"/tmp/s", AT_FDCWD, b"/tmp/h", AT_SYMLINK_FOLLOW)
            .unwrap();
        assert_eq!(
            FileKind::from_mode(vfs.statat(AT_FDCWD, b"/tmp/h", AT_SYMLINK_NOFOLLOW).unwrap().mode),
            FileKind::Regular
        );
    }

    #[test]
    fn working_directory() {
        let mut vfs = Vfs::new();
        assert_eq!(vfs.getcwd(), b"/");
        vfs.create_dir_all("/pglite/data/base", 0o700).unwrap();
        vfs.chdir(b"/pglite/data").unwrap();
        assert_eq!(vfs.getcwd(), b"/pglite/data");
        vfs.write_file("base/1", b"rel", 0o600).unwrap();
        assert_eq!(vfs.read_file("/pglite/data/base/1").unwrap(), b"rel");
        let fd = vfs.openat(AT_FDCWD, b"base/1", O_RDONLY, 0).unwrap();
        assert!(fd > 2);
        assert_eq!(vfs.chdir(b"base/1"), Err(Errno::ENOTDIR));
        vfs.chdir(b"..").unwrap();
        assert_eq!(vfs.getcwd(), b"/pglite");
        // A removed working directory stays usable as a handle but takes no new names.
        vfs.create_dir_all("/gone", 0o755).unwrap();
        vfs.chdir(b"/gone").unwrap();
        vfs.unlinkat(AT_FDCWD, b"/gone", AT_REMOVEDIR).unwrap();
        assert_eq!(vfs.mkdirat(AT_FDCWD, b"x", 0o755), Err(Errno::ENOENT));
        vfs.chdir(b"/").unwrap();
    }

    #[test]
    fn times() {
        let mut vfs = Vfs::new();
        vfs.write_file("/tmp/f", b"", 0o644).unwrap();
        vfs.utimensat(AT_FDCWD, b"/tmp/f", Some([(100, 5), (200, 6)]), 0)
            .unwrap();
        let stat = vfs.statat(AT_FDCWD, b"/tmp/f", 0).unwrap();
        assert_eq!((stat.atime, stat.mtime), ((100, 5), (200, 6)));
        vfs.utimensat(AT_FDCWD, b"/tmp/f", Some([(0, UTIME_OMIT), (300, 0)]), 0)
            .unwrap();
        let stat = vfs.statat(AT_FDCWD, b"/tmp/f", 0).unwrap();
        assert_eq!((stat.atime, stat.mtime), ((100, 5), (300, 0)));
        vfs.utimensat(AT_FDCWD, b"/tmp/f", None, 0).unwrap();
        assert!(vfs.statat(AT_FDCWD, b"/tmp/f", 0).unwrap().mtime.0 > 1_600_000_000);
        assert_eq!(
            vfs.utimensat(AT_FDCWD, b"/tmp/f", Some([(0, 2_000_000_000), (0, 0)]), 0),
            Err(Errno::EINVAL)
        );
    }

    #[test]
    fn statfs_numbers() {
        let vfs = Vfs::new();
        let fs = vfs.statfs(b"/tmp").unwrap();
        assert_eq!((fs.bsize, fs.namelen, fs.fs_type), (4096, 255, TMPFS_MAGIC));
        assert_eq!(vfs.statfs(b"/nope"), Err(Errno::ENOENT));
    }
}
