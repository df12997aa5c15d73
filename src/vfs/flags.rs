//! Flag and command values of the guest's libc (musl as built by Emscripten for wasm32; the same
//! numbers as Linux x86-64), as they arrive in syscall arguments.

#![allow(dead_code, reason = "ABI table: every value the guest may pass, used or not")]

/// Open for reading only (the access mode is `flags & O_ACCMODE`).
pub const O_RDONLY: u32 = 0;
/// Open for writing only.
pub const O_WRONLY: u32 = 1;
/// Open for reading and writing.
pub const O_RDWR: u32 = 2;
/// Mask of the access mode bits.
pub const O_ACCMODE: u32 = 3;
/// Create the file if it does not exist.
pub const O_CREAT: u32 = 0x40;
/// With `O_CREAT`: fail with `EEXIST` if the name exists (symlinks are not followed).
pub const O_EXCL: u32 = 0x80;
/// Do not make the file the controlling terminal (ignored).
pub const O_NOCTTY: u32 = 0x100;
/// Truncate a regular file to length 0 on open.
pub const O_TRUNC: u32 = 0x200;
/// Every `write` appends at the end of the file.
pub const O_APPEND: u32 = 0x400;
/// Non-blocking I/O (every descriptor here is non-blocking in effect).
pub const O_NONBLOCK: u32 = 0x800;
/// Synchronized data writes (accepted, no effect of its own).
pub const O_DSYNC: u32 = 0x1000;
/// Signal-driven I/O (accepted by `F_SETFL`, no effect).
pub const O_ASYNC: u32 = 0x2000;
/// Direct I/O (accepted, no effect).
pub const O_DIRECT: u32 = 0x4000;
/// Large-file support (implicit).
pub const O_LARGEFILE: u32 = 0x8000;
/// Fail with `ENOTDIR` unless the path names a directory.
pub const O_DIRECTORY: u32 = 0x10000;
/// Fail with `ELOOP` if the last path component is a symbolic link.
pub const O_NOFOLLOW: u32 = 0x20000;
/// Do not update the access time (accepted, no effect).
pub const O_NOATIME: u32 = 0x40000;
/// Close the descriptor on `exec` (recorded, reported by `F_GETFD`).
pub const O_CLOEXEC: u32 = 0x80000;
/// Fully synchronized writes (includes `O_DSYNC`).
pub const O_SYNC: u32 = 0x101000;
/// Path-only descriptor (treated like `O_RDONLY`).
pub const O_PATH: u32 = 0x200000;
/// The status flags `F_SETFL` may change; all other bits of the argument are ignored.
pub const SETFL_MASK: u32 = O_APPEND | O_NONBLOCK | O_ASYNC | O_DIRECT | O_NOATIME;

/// `*at` calls: do not follow a symbolic link in the last component.
pub const AT_SYMLINK_NOFOLLOW: u32 = 0x100;
/// `unlinkat`: remove a directory (`rmdir`).
pub const AT_REMOVEDIR: u32 = 0x200;
/// `faccessat`: check with the effective ids (same as the real ones here).
pub const AT_EACCESS: u32 = 0x200;
/// `linkat`: follow a symbolic link in the source path.
pub const AT_SYMLINK_FOLLOW: u32 = 0x400;
/// Do not trigger automounts (ignored).
pub const AT_NO_AUTOMOUNT: u32 = 0x800;
/// An empty path means the file `dirfd` refers to.
pub const AT_EMPTY_PATH: u32 = 0x1000;

/// `fcntl`: duplicate to the lowest free descriptor `>= arg`.
pub const F_DUPFD: i32 = 0;
/// `fcntl`: read the descriptor flags (`FD_CLOEXEC`).
pub const F_GETFD: i32 = 1;
/// `fcntl`: set the descriptor flags (`FD_CLOEXEC`).
pub const F_SETFD: i32 = 2;
/// `fcntl`: read the access mode and status flags.
pub const F_GETFL: i32 = 3;
/// `fcntl`: set the status flags in [`SETFL_MASK`].
pub const F_SETFL: i32 = 4;
/// `fcntl`: set the owner for `SIGIO` (accepted, no effect).
pub const F_SETOWN: i32 = 8;
/// `fcntl`: read the owner for `SIGIO` (always 0).
pub const F_GETOWN: i32 = 9;
/// `fcntl`: test for a record lock; the VFS reports no conflicting lock (the host writes
/// [`F_UNLCK`] to `l_type`, offset 0 of the 32-byte `struct flock` at `arg`).
pub const F_GETLK: i32 = 12;
/// `fcntl`: take or release a record lock without waiting (always succeeds).
pub const F_SETLK: i32 = 13;
/// `fcntl`: take or release a record lock, waiting (always succeeds).
pub const F_SETLKW: i32 = 14;
/// `fcntl`: like `F_DUPFD`, with `FD_CLOEXEC` set on the new descriptor.
pub const F_DUPFD_CLOEXEC: i32 = 1030;
/// `struct flock` lock type "unlocked".
pub const F_UNLCK: i16 = 2;
/// The descriptor flag of `F_GETFD`/`F_SETFD`.
pub const FD_CLOEXEC: i32 = 1;

/// `seek` from the start.
pub const SEEK_SET: u8 = 0;
/// `seek` from the current position.
pub const SEEK_CUR: u8 = 1;
/// `seek` from the end.
pub const SEEK_END: u8 = 2;

/// `faccessat` mode: existence only.
pub const F_OK: u32 = 0;
/// `faccessat` mode: execute/search permission.
pub const X_OK: u32 = 1;
/// `faccessat` mode: write permission.
pub const W_OK: u32 = 2;
/// `faccessat` mode: read permission.
pub const R_OK: u32 = 4;

/// `poll`: data to read.
pub const POLLIN: i16 = 0x1;
/// `poll`: urgent data.
pub const POLLPRI: i16 = 0x2;
/// `poll`: writing will not block.
pub const POLLOUT: i16 = 0x4;
/// `poll`: error (for example a pipe with no reader left).
pub const POLLERR: i16 = 0x8;
/// `poll`: hang-up (a pipe with no writer left).
pub const POLLHUP: i16 = 0x10;
/// `poll`: the descriptor is not open.
pub const POLLNVAL: i16 = 0x20;

/// `fallocate` mode: keep the size (not supported).
pub const FALLOC_FL_KEEP_SIZE: i32 = 0x1;

/// `utimensat` nanoseconds value: use the current time.
pub const UTIME_NOW: u32 = 0x3fff_ffff;
/// `utimensat` nanoseconds value: leave this time unchanged.
pub const UTIME_OMIT: u32 = 0x3fff_fffe;
