//! Host-directory mounts: a VFS directory whose contents are a real directory of the host.
//!
//! Paths are resolved component by component inside the VFS (so `..` and symbolic links never
//! leave the mount except through the VFS tree); only then is the relative path joined to the
//! host root. The helpers here wrap the `std::fs` calls and convert their results.

use std::ffi::OsStr;
use std::fs::{self, File, Metadata, OpenOptions};
use std::io;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{DirEntryExt, FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::errno::{Errno, VfsResult};
use super::flags::{O_ACCMODE, O_RDONLY, O_TRUNC, O_WRONLY};
use super::memory::NodeId;
use super::stat::{BLOCK_SIZE, DirEntry, FileKind, Stat};

/// How hard the VFS works to make host-mount writes survive a crash.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Durability {
    /// `fsync`/`fdatasync` are no-ops (PGlite's own behaviour: data survives a process crash,
    /// not necessarily an OS crash or power loss).
    Relaxed,
    /// `fsync`/`fdatasync` really sync the host file, and a rename also syncs the directories
    /// involved.
    Durable,
}

/// Device id of the first host mount (the next ones count up).
pub(crate) const FIRST_HOST_DEV: u32 = 2;

/// One mounted host directory.
#[derive(Clone, Debug)]
pub(crate) struct HostMount {
    /// Canonical host path of the mounted directory.
    pub root: PathBuf,
    /// The in-memory directory the mount covers.
    pub node: NodeId,
    pub durability: Durability,
    /// `st_dev` reported for files of this mount.
    pub dev: u32,
}

impl HostMount {
    /// The host path of `rel` (a relative path of normal components) inside this mount.
    pub fn real_path(&self, rel: &Path) -> PathBuf {
        if rel.as_os_str().is_empty() {
            self.root.clone()
        } else {
            self.root.join(rel)
        }
    }

    /// Syncs a host directory if this mount is durable.
    pub fn sync_dir(&self, dir: &Path) -> VfsResult<()> {
        if self.durability == Durability::Durable {
            File::open(dir).and_then(|d| d.sync_all()).map_err(io_err)?;
        }
        Ok(())
    }
}

/// An open host file or directory.
#[derive(Debug)]
pub(crate) struct HostFile {
    /// Index of the mount the file belongs to.
    pub mount: usize,
    /// Path relative to the mount root (for directory listings and directory `fd`s).
    pub rel: PathBuf,
    pub file: File,
    pub kind: FileKind,
}

/// Converts a host I/O error.
pub(crate) fn io_err(err: io::Error) -> Errno {
    Errno::from_io(&err)
}

/// A path component or link target as an `OsStr`.
pub(crate) fn os(bytes: &[u8]) -> &OsStr {
    OsStr::from_bytes(bytes)
}

/// The VFS kind of a host file type.
pub(crate) fn kind_of(file_type: fs::FileType) -> FileKind {
    use std::os::unix::fs::FileTypeExt;
    if file_type.is_dir() {
        FileKind::Directory
    } else if file_type.is_symlink() {
        FileKind::Symlink
    } else if file_type.is_char_device() {
        FileKind::CharDevice
    } else if file_type.is_fifo() {
        FileKind::Fifo
    } else {
        FileKind::Regular
    }
}

/// The kind of the host file at `path` without following a final symlink; `None` if missing.
pub(crate) fn lstat_kind(path: &Path) -> VfsResult<Option<FileKind>> {
    match fs::symlink_metadata(path) {
        Ok(meta) => Ok(Some(FileKind::from_mode(meta.mode()))),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(err) => Err(io_err(err)),
    }
}

/// The target of the host symbolic link at `path`.
pub(crate) fn read_link(path: &Path) -> VfsResult<Vec<u8>> {
    fs::read_link(path)
        .map(|target| target.into_os_string().into_vec())
        .map_err(|err| match err.kind() {
            io::ErrorKind::InvalidInput => Errno::EINVAL,
            _ => io_err(err),
        })
}

/// `stat` from host metadata; owner and group are reported as 0 like everything else.
pub(crate) fn stat_from_metadata(meta: &Metadata, dev: u32) -> Stat {
    Stat {
        dev,
        mode: meta.mode(),
        nlink: u32::try_from(meta.nlink()).unwrap_or(u32::MAX),
        uid: 0,
        gid: 0,
        rdev: meta.rdev() as u32,
        size: meta.size() as i64,
        blksize: BLOCK_SIZE,
        blocks: i32::try_from(meta.blocks()).unwrap_or(i32::MAX),
        atime: (meta.atime(), meta.atime_nsec() as u32),
        mtime: (meta.mtime(), meta.mtime_nsec() as u32),
        ctime: (meta.ctime(), meta.ctime_nsec() as u32),
        ino: meta.ino(),
    }
}

/// The entries of a host directory, sorted by name, without `.` and `..`.
pub(crate) fn list_dir(path: &Path) -> VfsResult<Vec<DirEntry>> {
    let mut entries = Vec::new();
    for entry in fs::read_dir(path).map_err(io_err)? {
        let entry = entry.map_err(io_err)?;
        let kind = match entry.file_type() {
            Ok(file_type) => kind_of(file_type),
            // Removed between listing and inspection.
            Err(err) if err.kind() == io::ErrorKind::NotFound => continue,
            Err(err) => return Err(io_err(err)),
        };
        entries.push(DirEntry {
            ino: entry.ino(),
            kind,
            name: entry.file_name().into_vec(),
        });
    }
    entries.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(entries)
}

/// Opens a host file with the access mode of `flags`; `create_mode` creates it exclusively
/// with those permission bits. `O_TRUNC` truncates a regular file even when opened read-only
/// (as Emscripten does).
pub(crate) fn open(path: &Path, flags: u32, create_mode: Option<u32>) -> VfsResult<File> {
    let access = flags & O_ACCMODE;
    let write = access != O_RDONLY;
    let mut options = OpenOptions::new();
    options.read(access != O_WRONLY).write(write);
    if let Some(mode) = create_mode {
        options.create_new(true).mode(mode);
    } else if flags & O_TRUNC != 0 && write {
        options.truncate(true);
    }
    let file = options.open(path).map_err(io_err)?;
    if flags & O_TRUNC != 0 && !write && create_mode.is_none() {
        OpenOptions::new()
            .write(true)
            .open(path)
            .and_then(|f| f.set_len(0))
            .map_err(io_err)?;
    }
    Ok(file)
}

/// Positioned read that only stops short at the end of the file.
pub(crate) fn read_at(file: &File, buf: &mut [u8], offset: u64) -> VfsResult<usize> {
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], offset + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) if done > 0 => {
                tracing::debug!(%err, "short host read");
                break;
            }
            Err(err) => return Err(io_err(err)),
        }
    }
    Ok(done)
}

/// Positioned write of the whole buffer.
pub(crate) fn write_at(file: &File, buf: &[u8], offset: u64) -> VfsResult<usize> {
    file.write_all_at(buf, offset).map_err(io_err)?;
    Ok(buf.len())
}

/// Writes `data` as the whole content of a host file and sets its permission bits; `create`
/// makes a new file (failing if one exists), else an existing one is truncated first.
pub(crate) fn write_whole(path: &Path, data: &[u8], perm: u32, create: bool) -> VfsResult<()> {
    let mut options = OpenOptions::new();
    options.write(true);
    if create {
        options.create_new(true).mode(perm);
    } else {
        options.truncate(true);
    }
    let file = options.open(path).map_err(io_err)?;
    file.write_all_at(data, 0).map_err(io_err)?;
    file.set_permissions(fs::Permissions::from_mode(perm))
        .map_err(io_err)
}

/// Canonical path of an existing host directory to mount.
pub(crate) fn canonical_dir(path: &Path) -> VfsResult<PathBuf> {
    let root = fs::canonicalize(path).map_err(io_err)?;
    if !fs::metadata(&root).map_err(io_err)?.is_dir() {
        return Err(Errno::ENOTDIR);
    }
    Ok(root)
}
