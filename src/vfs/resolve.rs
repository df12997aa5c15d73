//! Path resolution over the in-memory tree and the host mounts.
//!
//! A path is walked one component at a time from the root or a start directory. `.` and `..`
//! are applied to the position reached so far (so `..` at a mount root returns to the in-memory
//! parent and never reaches the host directory's own parent), and symbolic links, in memory or
//! on a host mount, are read and their targets walked through the VFS again (at most
//! [`MAX_SYMLINK_HOPS`] of them).

use std::path::PathBuf;

use super::errno::{Errno, VfsResult};
use super::fdtable::Target;
use super::host::{self, os};
use super::memory::{MemTree, NodeId, NodeKind};
use super::stat::FileKind;
use super::{AT_FDCWD, Vfs};

/// Longest accepted path, in bytes (`PATH_MAX` counts the terminating NUL).
pub const PATH_MAX: usize = 4096;
/// Longest accepted file name.
pub const NAME_MAX: usize = 255;
/// Symbolic links followed during one resolution before `ELOOP`.
pub const MAX_SYMLINK_HOPS: u32 = 40;

/// A position in the VFS.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Loc {
    /// A node of the in-memory tree.
    Mem(NodeId),
    /// A file under host mount `mount`, at `rel` (normal components only; empty = mount root).
    Host { mount: usize, rel: PathBuf },
}

/// An existing file found by resolution.
#[derive(Clone, Debug)]
pub(crate) struct Resolved {
    pub loc: Loc,
    pub kind: FileKind,
}

/// The directory that holds (or would hold) the last component of a path.
#[derive(Clone, Debug)]
pub(crate) struct ParentRef {
    pub dir: Loc,
    /// The last component; `.` for a path made of slashes only.
    pub name: Vec<u8>,
    /// The path ended with `/` (the file must be a directory).
    pub trailing_slash: bool,
}

impl ParentRef {
    /// Whether the last component is `.` or `..`.
    pub fn is_dot(&self) -> bool {
        is_dot_name(&self.name)
    }
}

/// Whether `name` is `.` or `..`.
pub(crate) fn is_dot_name(name: &[u8]) -> bool {
    name == b"." || name == b".."
}

/// Checks a whole path: not empty, not longer than [`PATH_MAX`].
fn check_path(path: &[u8]) -> VfsResult<()> {
    if path.is_empty() {
        return Err(Errno::ENOENT);
    }
    if path.len() >= PATH_MAX {
        return Err(Errno::ENAMETOOLONG);
    }
    Ok(())
}

/// Checks one component: at most [`NAME_MAX`] bytes, no NUL.
fn check_name(name: &[u8]) -> VfsResult<()> {
    if name.len() > NAME_MAX {
        return Err(Errno::ENAMETOOLONG);
    }
    if name.contains(&0) {
        return Err(Errno::EINVAL);
    }
    Ok(())
}

/// The non-empty components of a path.
pub(crate) fn components(path: &[u8]) -> impl Iterator<Item = &[u8]> {
    path.split(|&b| b == b'/').filter(|c| !c.is_empty())
}

impl Vfs {
    /// Where a path starts: the root for an absolute path, else the directory `dirfd` (or the
    /// working directory for [`AT_FDCWD`]).
    pub(crate) fn base_dir(&self, dirfd: i32, path: &[u8]) -> VfsResult<Loc> {
        if path.first() == Some(&b'/') {
            return Ok(Loc::Mem(MemTree::ROOT));
        }
        if dirfd == AT_FDCWD {
            return Ok(self.cwd.clone());
        }
        let resolved = self.fd_resolved(dirfd).map_err(|err| match err {
            Errno::EINVAL => Errno::ENOTDIR,
            other => other,
        })?;
        if resolved.kind != FileKind::Directory {
            return Err(Errno::ENOTDIR);
        }
        Ok(resolved.loc)
    }

    /// The file an open descriptor refers to, as a location (`EINVAL` for pipes).
    pub(crate) fn fd_resolved(&self, fd: i32) -> VfsResult<Resolved> {
        match &self.fds.get(fd)?.target {
            Target::Mem(id) => Ok(Resolved {
                loc: Loc::Mem(*id),
                kind: self.tree.node(*id).file_kind(),
            }),
            Target::Host(file) => Ok(Resolved {
                loc: Loc::Host {
                    mount: file.mount,
                    rel: file.rel.clone(),
                },
                kind: file.kind,
            }),
            Target::Pipe(..) => Err(Errno::EINVAL),
        }
    }

    /// Resolves an existing file; a symbolic link in the last component is followed when
    /// `follow` is set.
    pub(crate) fn resolve(&self, dirfd: i32, path: &[u8], follow: bool) -> VfsResult<Resolved> {
        check_path(path)?;
        let base = self.base_dir(dirfd, path)?;
        let mut hops = 0;
        self.walk(base, path, follow, &mut hops)
    }

    /// Resolves everything but the last component of a path.
    pub(crate) fn resolve_parent(&self, dirfd: i32, path: &[u8]) -> VfsResult<ParentRef> {
        check_path(path)?;
        let base = self.base_dir(dirfd, path)?;
        let mut hops = 0;
        self.parent_ref(base, path, &mut hops)
    }

    /// [`Vfs::resolve_parent`] from an explicit start directory, sharing a symlink budget.
    pub(crate) fn parent_ref(&self, base: Loc, path: &[u8], hops: &mut u32) -> VfsResult<ParentRef> {
        check_path(path)?;
        let trimmed_len = path.iter().rposition(|&b| b != b'/').map_or(0, |i| i + 1);
        let trailing_slash = trimmed_len < path.len();
        let trimmed = &path[..trimmed_len];
        let Some(last_slash) = trimmed.iter().rposition(|&b| b == b'/') else {
            if trimmed.is_empty() {
                // Only slashes: the root itself.
                return Ok(ParentRef {
                    dir: Loc::Mem(MemTree::ROOT),
                    name: b".".to_vec(),
                    trailing_slash: true,
                });
            }
            check_name(trimmed)?;
            return Ok(ParentRef {
                dir: base,
                name: trimmed.to_vec(),
                trailing_slash,
            });
        };
        let name = &trimmed[last_slash + 1..];
        check_name(name)?;
        let dir = self.walk(base, &trimmed[..=last_slash], true, hops)?;
        Ok(ParentRef {
            dir: dir.loc,
            name: name.to_vec(),
            trailing_slash,
        })
    }

    /// Walks `path` from `start` (or the root if it is absolute). Every intermediate symbolic
    /// link is followed, the last one only if `follow_last`. A trailing slash requires a
    /// directory.
    pub(crate) fn walk(
        &self,
        start: Loc,
        path: &[u8],
        follow_last: bool,
        hops: &mut u32,
    ) -> VfsResult<Resolved> {
        check_path(path)?;
        let trailing_slash = path.last() == Some(&b'/');
        let follow_last = follow_last || trailing_slash;
        let mut current = Resolved {
            loc: if path[0] == b'/' {
                Loc::Mem(MemTree::ROOT)
            } else {
                start
            },
            kind: FileKind::Directory,
        };
        let mut parts = components(path).peekable();
        while let Some(name) = parts.next() {
            if current.kind != FileKind::Directory {
                return Err(Errno::ENOTDIR);
            }
            check_name(name)?;
            let is_last = parts.peek().is_none();
            let child = self.lookup_child(&current.loc, name)?.ok_or(Errno::ENOENT)?;
            current = if child.kind == FileKind::Symlink && (!is_last || follow_last) {
                *hops += 1;
                if *hops > MAX_SYMLINK_HOPS {
                    return Err(Errno::ELOOP);
                }
                let target = self.link_target(&child.loc)?;
                if target.is_empty() {
                    return Err(Errno::ENOENT);
                }
                self.walk(current.loc, &target, true, hops)?
            } else {
                child
            };
        }
        if trailing_slash && current.kind != FileKind::Directory {
            return Err(Errno::ENOTDIR);
        }
        Ok(current)
    }

    /// The entry `name` of directory `dir`, without following a symbolic link; `.` and `..`
    /// give the directory and its parent. `None` if there is no such entry.
    pub(crate) fn lookup_child(&self, dir: &Loc, name: &[u8]) -> VfsResult<Option<Resolved>> {
        if name == b"." {
            return Ok(Some(Resolved {
                loc: dir.clone(),
                kind: FileKind::Directory,
            }));
        }
        if name == b".." {
            // A removed directory has no parent any more (its old one may be gone too): as in
            // Linux, `..` of a deleted working directory does not exist.
            if let Loc::Mem(id) = dir
                && self.tree.node(*id).links == 0
            {
                return Err(Errno::ENOENT);
            }
            return Ok(Some(Resolved {
                loc: self.parent_of(dir),
                kind: FileKind::Directory,
            }));
        }
        match dir {
            Loc::Mem(id) => {
                let Some(child) = self.tree.lookup(*id, name)? else {
                    return Ok(None);
                };
                let node = self.tree.node(child);
                if let NodeKind::Dir(d) = &node.kind
                    && let Some(mount) = d.mount
                {
                    return Ok(Some(Resolved {
                        loc: Loc::Host {
                            mount,
                            rel: PathBuf::new(),
                        },
                        kind: FileKind::Directory,
                    }));
                }
                Ok(Some(Resolved {
                    loc: Loc::Mem(child),
                    kind: node.file_kind(),
                }))
            }
            Loc::Host { mount, rel } => {
                let rel = rel.join(os(name));
                let real = self.mounts[*mount].real_path(&rel);
                Ok(host::lstat_kind(&real)?.map(|kind| Resolved {
                    loc: Loc::Host { mount: *mount, rel },
                    kind,
                }))
            }
        }
    }

    /// The directory containing directory `dir` (the root is its own parent; a mount root's
    /// parent is the in-memory directory holding the mount point).
    pub(crate) fn parent_of(&self, dir: &Loc) -> Loc {
        match dir {
            Loc::Mem(id) => Loc::Mem(self.tree.parent(*id)),
            Loc::Host { mount, rel } => match rel.parent() {
                Some(parent) => Loc::Host {
                    mount: *mount,
                    rel: parent.to_path_buf(),
                },
                None => Loc::Mem(self.tree.parent(self.mounts[*mount].node)),
            },
        }
    }

    /// The target of the symbolic link at `loc` (`EINVAL` if it is not one).
    pub(crate) fn link_target(&self, loc: &Loc) -> VfsResult<Vec<u8>> {
        match loc {
            Loc::Mem(id) => match &self.tree.node(*id).kind {
                NodeKind::Symlink(target) => Ok(target.to_vec()),
                _ => Err(Errno::EINVAL),
            },
            Loc::Host { mount, rel } => host::read_link(&self.mounts[*mount].real_path(rel)),
        }
    }

    /// The host path of a host location.
    pub(crate) fn real_path(&self, mount: usize, rel: &std::path::Path) -> PathBuf {
        self.mounts[mount].real_path(rel)
    }

    /// The absolute VFS path of a directory location.
    pub(crate) fn path_of(&self, loc: &Loc) -> Vec<u8> {
        match loc {
            Loc::Mem(id) => self.tree.path_of(*id),
            Loc::Host { mount, rel } => {
                let mut path = self.tree.path_of(self.mounts[*mount].node);
                for part in rel.iter() {
                    if path.last() != Some(&b'/') {
                        path.push(b'/');
                    }
                    path.extend_from_slice(std::os::unix::ffi::OsStrExt::as_bytes(part));
                }
                path
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vfs::flags::*;

    fn vfs() -> Vfs {
        let mut vfs = Vfs::new();
        vfs.create_dir_all("/a/b/c", 0o755).unwrap();
        vfs.write_file("/a/b/file", b"data", 0o644).unwrap();
        vfs
    }

    #[test]
    fn dots_and_repeated_slashes() {
        let vfs = vfs();
        let direct = vfs.resolve(AT_FDCWD, b"/a/b/c", true).unwrap();
        for path in [
            &b"/a/b/c"[..],
            b"//a///b/./c/",
            b"/a/b/c/../c",
            b"/../../a/b/c",
            b"a/b/c",
            b"./a/./b/c/.",
        ] {
            let found = vfs.resolve(AT_FDCWD, path, true).unwrap();
            assert_eq!(found.loc, direct.loc, "{}", String::from_utf8_lossy(path));
        }
        assert_eq!(
            vfs.resolve(AT_FDCWD, b"/", true).unwrap().loc,
            Loc::Mem(MemTree::ROOT)
        );
    }

    #[test]
    fn errors() {
        let vfs = vfs();
        let err = |path: &[u8]| vfs.resolve(AT_FDCWD, path, true).err();
        assert_eq!(err(b""), Some(Errno::ENOENT));
        assert_eq!(err(b"/a/missing"), Some(Errno::ENOENT));
        assert_eq!(err(b"/a/missing/x"), Some(Errno::ENOENT));
        assert_eq!(err(b"/a/b/file/"), Some(Errno::ENOTDIR));
        assert_eq!(err(b"/a/b/file/x"), Some(Errno::ENOTDIR));
        assert_eq!(err(b"/a/b/file/.."), Some(Errno::ENOTDIR));
        assert_eq!(err(&vec![b'a'; PATH_MAX]), Some(Errno::ENAMETOOLONG));
        let long_name = [&b"/a/"[..], &[b'n'; NAME_MAX + 1]].concat();
        assert_eq!(err(&long_name), Some(Errno::ENAMETOOLONG));
        assert_eq!(vfs.resolve(12345, b"rel", true).err(), Some(Errno::EBADF));
        // An absolute path ignores dirfd entirely.
        assert!(vfs.resolve(12345, b"/a", true).is_ok());
    }

    #[test]
    fn parent_refs() {
        let vfs = vfs();
        let p = vfs.resolve_parent(AT_FDCWD, b"/a/b/new/").unwrap();
        assert_eq!(p.name, b"new");
        assert!(p.trailing_slash);
        assert_eq!(p.dir, vfs.resolve(AT_FDCWD, b"/a/b", true).unwrap().loc);
        let root = vfs.resolve_parent(AT_FDCWD, b"///").unwrap();
        assert!(root.is_dot());
        assert_eq!(
            vfs.resolve_parent(AT_FDCWD, b"/a/b/file/x").err(),
            Some(Errno::ENOTDIR)
        );
        let rel = vfs.resolve_parent(AT_FDCWD, b"plain").unwrap();
        assert_eq!(rel.dir, Loc::Mem(MemTree::ROOT));
    }

    #[test]
    fn symlinks_are_followed_and_loops_stop() {
        let mut vfs = vfs();
        vfs.symlinkat(b"b/c", AT_FDCWD, b"/a/to_c").unwrap();
        vfs.symlinkat(b"/a/b/file", AT_FDCWD, b"/a/b/c/abs").unwrap();
        let c = vfs.resolve(AT_FDCWD, b"/a/b/c", true).unwrap().loc;
        assert_eq!(vfs.resolve(AT_FDCWD, b"/a/to_c", true).unwrap().loc, c);
        assert_eq!(vfs.resolve(AT_FDCWD, b"/a/to_c/", false).unwrap().loc, c);
        let link = vfs.resolve(AT_FDCWD, b"/a/to_c", false).unwrap();
        assert_eq!(link.kind, FileKind::Symlink);
        let file = vfs.resolve(AT_FDCWD, b"/a/to_c/abs", true).unwrap();
        assert_eq!(file.kind, FileKind::Regular);

        vfs.symlinkat(b"loop2", AT_FDCWD, b"/loop1").unwrap();
        vfs.symlinkat(b"loop1", AT_FDCWD, b"/loop2").unwrap();
        assert_eq!(vfs.resolve(AT_FDCWD, b"/loop1", true).err(), Some(Errno::ELOOP));
        assert_eq!(vfs.statat(AT_FDCWD, b"/loop1/x", 0).err(), Some(Errno::ELOOP));
        assert!(vfs.resolve(AT_FDCWD, b"/loop1", false).is_ok());
        assert_eq!(
            vfs.openat(AT_FDCWD, b"/loop1", O_RDONLY, 0).err(),
            Some(Errno::ELOOP)
        );
        vfs.symlinkat(b"missing", AT_FDCWD, b"/dangling").unwrap();
        assert_eq!(
            vfs.resolve(AT_FDCWD, b"/dangling", true).err(),
            Some(Errno::ENOENT)
        );
    }

    #[test]
    fn relative_to_a_directory_fd() {
        let mut vfs = vfs();
        let dirfd = vfs.openat(AT_FDCWD, b"/a/b", O_RDONLY | O_DIRECTORY, 0).unwrap();
        let file = vfs.resolve(dirfd, b"file", true).unwrap();
        assert_eq!(file.kind, FileKind::Regular);
        let filefd = vfs.openat(dirfd, b"file", O_RDONLY, 0).unwrap();
        assert_eq!(vfs.resolve(filefd, b"x", true).err(), Some(Errno::ENOTDIR));
        assert_eq!(
            vfs.path_of(&vfs.resolve(dirfd, b"c", true).unwrap().loc),
            b"/a/b/c"
        );
    }
}
