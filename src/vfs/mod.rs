//! The virtual file system behind the Emscripten syscall imports of PGlite.
//!
//! [`Vfs`] holds everything Emscripten's JS file system would: an in-memory tree (copy-on-write
//! file contents, cheap [`Vfs::fork`]), host-directory mounts (a file-backed PGDATA), devices,
//! pipes, the descriptor table, the working directory and the umask. Its syscall-level methods
//! take raw path bytes and return [`Errno`] values in the guest's numbering, so a host import is
//! a thin wrapper: read the arguments from linear memory, call the method, write the result.
//!
//! The module is split by concern:
//! * [`errno`], [`flags`], [`stat`]: guest ABI numbers and struct layouts;
//! * `filedata`, `memory`: chunked copy-on-write contents and the node arena;
//! * `host`: host-directory mounts; `device`: `/dev`; `pipe`: pipes;
//! * `fdtable`: descriptors and open file descriptions; `resolve`: path resolution;
//! * `open` (descriptors), `fileio` (I/O on descriptors), `namespace` (names): the syscall
//!   layer.

mod device;
pub mod errno;
mod fdtable;
mod filedata;
mod fileio;
pub mod flags;
mod host;
mod memory;
mod namespace;
mod open;
mod pipe;
mod resolve;
mod snapshot;
pub mod stat;

use std::fmt;
use std::path::Path;

pub use device::OutputSink;
pub use errno::{Errno, VfsResult};
pub use host::Durability;
#[allow(
    unused_imports,
    reason = "the module's public types, named by callers as needed"
)]
pub use memory::MemoryStats;
#[allow(
    unused_imports,
    reason = "the module's public types, named by callers as needed"
)]
pub use snapshot::{SNAPSHOT_MAGIC, SNAPSHOT_VERSION, SnapshotError};
#[allow(
    unused_imports,
    reason = "the module's public types, named by callers as needed"
)]
pub use stat::{DirEntry, FileKind, Stat, StatFs, Timespec};

use device::{Device, DeviceState};
use fdtable::{Description, FdTable, Target};
use filedata::FileData;
use flags::{O_RDONLY, O_WRONLY};
use host::{FIRST_HOST_DEV, HostMount};
use memory::{DirNode, MemTree, NodeKind};
use pipe::PipeTable;
use resolve::{Loc, components, is_dot_name};

/// The `dirfd` value meaning "the current working directory".
pub const AT_FDCWD: i32 = -100;

/// Initial file creation mask.
pub const DEFAULT_UMASK: u32 = 0o022;

/// A complete file system for one guest instance. It is `Send`, so it can live in a wasmtime
/// `Store` that moves between threads.
pub struct Vfs {
    tree: MemTree,
    mounts: Vec<HostMount>,
    fds: FdTable,
    pipes: PipeTable,
    devices: DeviceState,
    /// The working directory (an in-memory one holds an open reference on its node).
    cwd: Loc,
    umask: u32,
}

impl Default for Vfs {
    fn default() -> Self {
        Vfs::new()
    }
}

impl Vfs {
    /// A file system with the standard Emscripten layout: `/tmp`, `/home/web_user`, `/dev` with
    /// `null`, `zero`, `tty`, `tty1`, `random`, `urandom`, `stdin`, `stdout`, `stderr`, `blob`,
    /// `shm/` and `shm/tmp/`, and `/proc/self/fd`. Descriptors 0, 1 and 2 are open on
    /// `/dev/stdin` (always at end of file), `/dev/stdout` and `/dev/stderr` (whose bytes go to
    /// the sinks set with [`Vfs::set_output_sink`]; discarded by default). The working directory
    /// is `/`, the umask `0o022`.
    pub fn new() -> Vfs {
        let mut tree = MemTree::new();
        tree.acquire(MemTree::ROOT);
        let mut vfs = Vfs {
            tree,
            mounts: Vec::new(),
            fds: FdTable::default(),
            pipes: PipeTable::default(),
            devices: DeviceState::default(),
            cwd: Loc::Mem(MemTree::ROOT),
            umask: DEFAULT_UMASK,
        };
        for (dir, mode) in [
            ("/tmp", 0o777),
            ("/home/web_user", 0o755),
            ("/dev", 0o755),
            ("/dev/shm/tmp", 0o777),
            ("/proc/self/fd", 0o555),
        ] {
            vfs.create_dir_all(dir, mode)
                .expect("standard directories can be created");
        }
        let dev = vfs
            .tree
            .lookup(MemTree::ROOT, b"dev")
            .ok()
            .flatten()
            .expect("/dev exists");
        for (name, device, mode) in [
            (&b"null"[..], Device::Null, 0o666),
            (b"zero", Device::Zero, 0o666),
            (b"tty", Device::Tty, 0o666),
            (b"tty1", Device::Tty, 0o666),
            (b"random", Device::Random, 0o444),
            (b"urandom", Device::Random, 0o444),
            (b"stdin", Device::Stdin, 0o444),
            (b"stdout", Device::Stdout, 0o222),
            (b"stderr", Device::Stderr, 0o222),
            (b"blob", Device::Blob, 0o666),
        ] {
            vfs.tree
                .create(dev, name, NodeKind::Device(device), mode)
                .expect("device names are unique");
        }
        for (path, access) in [
            (&b"/dev/stdin"[..], O_RDONLY),
            (b"/dev/stdout", O_WRONLY),
            (b"/dev/stderr", O_WRONLY),
        ] {
            vfs.openat(AT_FDCWD, path, access, 0)
                .expect("standard streams open as 0, 1, 2");
        }
        vfs
    }

    /// Sends what the guest writes to `/dev/stdout` (`fd` 1) or `/dev/stderr` (`fd` 2) to
    /// `sink`. Other values of `fd` are ignored.
    pub fn set_output_sink(&mut self, fd: i32, sink: OutputSink) {
        match fd {
            1 => self.devices.stdout = Some(sink),
            2 => self.devices.stderr = Some(sink),
            _ => tracing::warn!(fd, "output sinks exist for fds 1 and 2 only"),
        }
    }

    /// Creates directory `path` and its missing parents with permission bits `mode` (the umask
    /// is not applied). Existing directories are left as they are; `ENOTDIR` if a component is
    /// not a directory.
    pub fn create_dir_all(&mut self, path: &str, mode: u32) -> VfsResult<()> {
        self.make_dirs(path.as_bytes(), mode, true).map(drop)
    }

    /// Creates or replaces the regular file `path` with `data` and permission bits `mode`;
    /// missing parent directories are created (mode `0o777`). In memory, all-zero chunks of
    /// `data` take no space.
    pub fn write_file(&mut self, path: &str, data: &[u8], mode: u32) -> VfsResult<()> {
        let bytes = path.as_bytes();
        let trimmed = bytes.iter().rposition(|&b| b != b'/').map_or(0, |i| i + 1);
        if let Some(slash) = bytes[..trimmed].iter().rposition(|&b| b == b'/')
            && slash > 0
        {
            self.create_dir_all(&path[..slash], 0o777)?;
        }
        let parent = self.resolve_parent(AT_FDCWD, bytes)?;
        if parent.is_dot() || parent.trailing_slash {
            return Err(Errno::EISDIR);
        }
        let existing = match self.lookup_child(&parent.dir, &parent.name)? {
            Some(child) if child.kind == FileKind::Symlink => {
                Some(self.walk(parent.dir.clone(), &parent.name, true, &mut 0)?)
            }
            other => other,
        };
        let perm = mode & stat::PERMISSION_BITS;
        match (existing, parent.dir) {
            (Some(found), _) => match found.loc {
                Loc::Mem(id) => {
                    let node = self.tree.node_mut(id);
                    let NodeKind::File(contents) = &mut node.kind else {
                        return Err(match node.kind {
                            NodeKind::Dir(_) => Errno::EISDIR,
                            _ => Errno::EINVAL,
                        });
                    };
                    *contents = FileData::from_bytes(data);
                    node.perm = perm;
                    node.touch();
                    Ok(())
                }
                Loc::Host { mount, rel } => {
                    host::write_whole(&self.real_path(mount, &rel), data, perm, false)
                }
            },
            (None, Loc::Mem(dir)) => self
                .tree
                .create(
                    dir,
                    &parent.name,
                    NodeKind::File(FileData::from_bytes(data)),
                    perm,
                )
                .map(drop),
            (None, Loc::Host { mount, rel }) => {
                let real = self.real_path(mount, &rel.join(host::os(&parent.name)));
                host::write_whole(&real, data, perm, true)
            }
        }
    }

    /// The whole contents of the regular file `path` (symbolic links followed).
    pub fn read_file(&self, path: &str) -> VfsResult<Vec<u8>> {
        let found = self.resolve(AT_FDCWD, path.as_bytes(), true)?;
        match found.loc {
            Loc::Mem(id) => match &self.tree.node(id).kind {
                NodeKind::File(contents) => Ok(contents.to_vec()),
                NodeKind::Dir(_) => Err(Errno::EISDIR),
                _ => Err(Errno::EINVAL),
            },
            Loc::Host { mount, rel } => {
                if found.kind == FileKind::Directory {
                    return Err(Errno::EISDIR);
                }
                std::fs::read(self.real_path(mount, &rel)).map_err(host::io_err)
            }
        }
    }

    /// Whether `path` exists (symbolic links followed).
    #[cfg(test)]
    pub fn exists(&self, path: &str) -> bool {
        self.resolve(AT_FDCWD, path.as_bytes(), true).is_ok()
    }

    /// Makes the existing host directory `host_dir` appear at `at` (created if missing, e.g.
    /// `/pglite/data`). Everything below `at` is then the host directory's content; what the
    /// in-memory directory held is hidden. `EBUSY` if `at` is `/`, already a mount point or
    /// inside a mount.
    pub fn mount_host_dir(&mut self, at: &str, host_dir: &Path, durability: Durability) -> VfsResult<()> {
        let root = host::canonical_dir(host_dir)?;
        let Loc::Mem(node) = self.make_dirs(at.as_bytes(), 0o700, false)? else {
            return Err(Errno::EBUSY);
        };
        if node == MemTree::ROOT {
            return Err(Errno::EBUSY);
        }
        let index = self.mounts.len();
        let dev = FIRST_HOST_DEV + u32::try_from(index).map_err(|_| Errno::ENOMEM)?;
        self.tree.dir_mut(node)?.mount = Some(index);
        tracing::debug!(at, host = %root.display(), ?durability, "mounted host directory");
        self.mounts.push(HostMount {
            root,
            node,
            durability,
            dev,
        });
        Ok(())
    }

    /// Sets what reads of `/dev/blob` return (from each descriptor's position).
    pub fn set_blob_input(&mut self, data: Vec<u8>) {
        self.devices.blob_input = data;
    }

    /// Takes everything written to `/dev/blob` since the last call.
    pub fn take_blob_output(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.devices.blob_output)
    }

    /// An exact copy of this file system: tree, descriptors (sharing and positions included),
    /// pipes with their buffered bytes, working directory, umask, sinks and blob buffers. File
    /// contents are shared copy-on-write, so the cost is proportional to the number of nodes and
    /// stored chunks, not to the bytes. `EXDEV` if there is a host mount (its files cannot be
    /// duplicated).
    pub fn fork(&self) -> VfsResult<Vfs> {
        if !self.mounts.is_empty() {
            return Err(Errno::EXDEV);
        }
        Ok(Vfs {
            tree: self.tree.clone(),
            mounts: Vec::new(),
            fds: self.fds.fork_copy()?,
            pipes: self.pipes.clone(),
            devices: self.devices.clone(),
            cwd: self.cwd.clone(),
            umask: self.umask,
        })
    }

    /// Closes every descriptor (at shutdown); host files are closed.
    pub fn close_all(&mut self) {
        for fd in self.open_fds() {
            if let Err(err) = self.close(fd) {
                tracing::debug!(fd, %err, "close at shutdown failed");
            }
        }
    }

    /// Makes the filesystem ready for a new process, as after [`Vfs::new`]: every fd closed, the
    /// standard streams open as 0, 1 and 2, the working directory `/`, the umask 0o022. Files,
    /// mounts and output sinks stay.
    pub fn start_new_process(&mut self) {
        self.close_all();
        for (path, access) in [
            (&b"/dev/stdin"[..], O_RDONLY),
            (b"/dev/stdout", O_WRONLY),
            (b"/dev/stderr", O_WRONLY),
        ] {
            self.openat(AT_FDCWD, path, access, 0)
                .expect("standard streams open as 0, 1, 2");
        }
        self.chdir(b"/").expect("the root exists");
        self.umask(0o022);
    }

    /// Sets the file creation mask and returns the previous one.
    pub fn umask(&mut self, mask: u32) -> u32 {
        std::mem::replace(&mut self.umask, mask & 0o777)
    }

    /// The open descriptors, ascending.
    pub fn open_fds(&self) -> Vec<i32> {
        self.fds.open_fds()
    }

    /// Memory accounting of the in-memory tree.
    pub fn memory_stats(&self) -> MemoryStats {
        self.tree.memory_stats()
    }

    /// Walks `path`, creating missing directories with exactly `perm`, and returns the final
    /// directory. With `allow_host` false, reaching a host mount fails with `EBUSY` before
    /// anything is created there.
    fn make_dirs(&mut self, path: &[u8], perm: u32, allow_host: bool) -> VfsResult<Loc> {
        let mut dir = self.base_dir(AT_FDCWD, path)?;
        let mut hops = 0;
        for name in components(path) {
            if !allow_host && matches!(dir, Loc::Host { .. }) {
                return Err(Errno::EBUSY);
            }
            dir = match self.lookup_child(&dir, name)? {
                Some(child) => {
                    let child = if child.kind == FileKind::Symlink {
                        self.walk(dir, name, true, &mut hops)?
                    } else {
                        child
                    };
                    if child.kind != FileKind::Directory {
                        return Err(Errno::ENOTDIR);
                    }
                    child.loc
                }
                None => self.make_dir(&dir, name, perm)?,
            };
        }
        Ok(dir)
    }

    /// Creates directory `name` in `dir` with exactly `perm` and returns its location.
    fn make_dir(&mut self, dir: &Loc, name: &[u8], perm: u32) -> VfsResult<Loc> {
        if is_dot_name(name) {
            return Err(Errno::EEXIST);
        }
        match dir {
            Loc::Mem(id) => {
                let kind = NodeKind::Dir(DirNode::default());
                let child = self.tree.create(*id, name, kind, perm)?;
                Ok(Loc::Mem(child))
            }
            Loc::Host { mount, rel } => {
                use std::os::unix::fs::DirBuilderExt;
                let rel = rel.join(host::os(name));
                std::fs::DirBuilder::new()
                    .mode(perm & stat::PERMISSION_BITS)
                    .create(self.real_path(*mount, &rel))
                    .map_err(host::io_err)?;
                Ok(Loc::Host { mount: *mount, rel })
            }
        }
    }

    /// Frees what an open file description held once its last descriptor is gone.
    fn release(&mut self, desc: Description) {
        match desc.target {
            Target::Mem(id) => self.tree.release(id),
            Target::Host(file) => drop(file),
            Target::Pipe(id, end) => self.pipes.close_end(id, end),
        }
    }
}

impl fmt::Debug for Vfs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Vfs")
            .field("memory", &self.memory_stats())
            .field("mounts", &self.mounts)
            .field("open_fds", &self.open_fds().len())
            .field("cwd", &String::from_utf8_lossy(&self.path_of(&self.cwd)))
            .field("umask", &format_args!("{:#o}", self.umask))
            .field("devices", &self.devices)
            .finish()
    }
}

#[cfg(test)]
mod snapshot_tests;
#[cfg(test)]
mod tests;
