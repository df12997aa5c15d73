//! Error numbers in the numbering the guest's libc (Emscripten, which follows WASI) expects.
//!
//! `__syscall_*` imports return `-errno`, `wasi_snapshot_preview1.fd_*` imports return `+errno`;
//! both use the values defined here, never the host's (Linux) numbers.

use std::fmt;
use std::io;

/// Result of every VFS operation.
pub type VfsResult<T> = Result<T, Errno>;

/// An error number in Emscripten/WASI numbering (see the host ABI notes, §6.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Errno(pub u16);

macro_rules! errno_table {
    ($($(#[$doc:meta])* $name:ident = $value:expr;)*) => {
        impl Errno {
            $(
                $(#[$doc])*
                #[allow(dead_code, reason = "ABI table: every value the guest knows, used or not")]
                pub const $name: Errno = Errno($value);
            )*

            /// The symbolic name of this error number (`"ENOENT"`), if it is a known one.
            pub fn name(self) -> Option<&'static str> {
                match self.0 {
                    $($value => Some(stringify!($name)),)*
                    _ => None,
                }
            }
        }
    };
}

errno_table! {
    /// Argument list too long.
    E2BIG = 1;
    /// Permission denied.
    EACCES = 2;
    /// Address in use.
    EADDRINUSE = 3;
    /// Address family not supported.
    EAFNOSUPPORT = 5;
    /// Resource unavailable, try again (also `EWOULDBLOCK`).
    EAGAIN = 6;
    /// Bad file descriptor.
    EBADF = 8;
    /// Device or resource busy.
    EBUSY = 10;
    /// Operation canceled.
    ECANCELED = 11;
    /// Resource deadlock would occur.
    EDEADLK = 16;
    /// Disk quota exceeded.
    EDQUOT = 19;
    /// File exists.
    EEXIST = 20;
    /// Bad address.
    EFAULT = 21;
    /// File too large.
    EFBIG = 22;
    /// Illegal byte sequence.
    EILSEQ = 25;
    /// Interrupted function call.
    EINTR = 27;
    /// Invalid argument.
    EINVAL = 28;
    /// I/O error.
    EIO = 29;
    /// Is a directory.
    EISDIR = 31;
    /// Too many levels of symbolic links.
    ELOOP = 32;
    /// Too many open files in this process.
    EMFILE = 33;
    /// Too many links.
    EMLINK = 34;
    /// File name too long.
    ENAMETOOLONG = 37;
    /// Too many open files in the system.
    ENFILE = 41;
    /// No such device.
    ENODEV = 43;
    /// No such file or directory.
    ENOENT = 44;
    /// Executable format error.
    ENOEXEC = 45;
    /// No locks available.
    ENOLCK = 46;
    /// Not enough memory.
    ENOMEM = 48;
    /// No space left on device.
    ENOSPC = 51;
    /// Function not implemented.
    ENOSYS = 52;
    /// Not a directory.
    ENOTDIR = 54;
    /// Directory not empty.
    ENOTEMPTY = 55;
    /// Inappropriate I/O control operation (not a terminal).
    ENOTTY = 59;
    /// No such device or address.
    ENXIO = 60;
    /// Value too large for the data type.
    EOVERFLOW = 61;
    /// Operation not permitted.
    EPERM = 63;
    /// Broken pipe.
    EPIPE = 64;
    /// Result too large (for example a `getcwd` buffer that is too small).
    ERANGE = 68;
    /// Read-only file system.
    EROFS = 69;
    /// Illegal seek.
    ESPIPE = 70;
    /// No such process.
    ESRCH = 71;
    /// Stale file handle.
    ESTALE = 72;
    /// Timed out.
    ETIMEDOUT = 73;
    /// Text file busy.
    ETXTBSY = 74;
    /// Cross-device link.
    EXDEV = 75;
    /// Operation not supported (Emscripten gives `ENOTSUP` and `EOPNOTSUPP` the value 138).
    ENOTSUP = 138;
}

impl Errno {
    /// Translates a host I/O error: first its raw OS error number (Linux numbering), then, for
    /// errors without one or with an unknown number, its [`io::ErrorKind`]. Anything else is `EIO`.
    pub fn from_io(err: &io::Error) -> Errno {
        if let Some(errno) = err.raw_os_error().and_then(from_host_errno) {
            return errno;
        }
        from_kind(err.kind())
    }
}

impl From<io::Error> for Errno {
    fn from(err: io::Error) -> Self {
        Errno::from_io(&err)
    }
}

impl fmt::Display for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(name) => write!(f, "{name} ({})", self.0),
            None => write!(f, "errno {}", self.0),
        }
    }
}

impl std::error::Error for Errno {}

/// Maps a Linux `errno` value to the guest numbering.
#[cfg(target_os = "linux")]
fn from_host_errno(raw: i32) -> Option<Errno> {
    Some(match raw {
        1 => Errno::EPERM,
        2 => Errno::ENOENT,
        3 => Errno::ESRCH,
        4 => Errno::EINTR,
        5 => Errno::EIO,
        6 => Errno::ENXIO,
        7 => Errno::E2BIG,
        8 => Errno::ENOEXEC,
        9 => Errno::EBADF,
        11 => Errno::EAGAIN,
        12 => Errno::ENOMEM,
        13 => Errno::EACCES,
        14 => Errno::EFAULT,
        16 => Errno::EBUSY,
        17 => Errno::EEXIST,
        18 => Errno::EXDEV,
        19 => Errno::ENODEV,
        20 => Errno::ENOTDIR,
        21 => Errno::EISDIR,
        22 => Errno::EINVAL,
        23 => Errno::ENFILE,
        24 => Errno::EMFILE,
        25 => Errno::ENOTTY,
        26 => Errno::ETXTBSY,
        27 => Errno::EFBIG,
        28 => Errno::ENOSPC,
        29 => Errno::ESPIPE,
        30 => Errno::EROFS,
        31 => Errno::EMLINK,
        32 => Errno::EPIPE,
        34 => Errno::ERANGE,
        35 => Errno::EDEADLK,
        36 => Errno::ENAMETOOLONG,
        37 => Errno::ENOLCK,
        38 => Errno::ENOSYS,
        39 => Errno::ENOTEMPTY,
        40 => Errno::ELOOP,
        75 => Errno::EOVERFLOW,
        84 => Errno::EILSEQ,
        95 => Errno::ENOTSUP,
        110 => Errno::ETIMEDOUT,
        116 => Errno::ESTALE,
        122 => Errno::EDQUOT,
        125 => Errno::ECANCELED,
        _ => return None,
    })
}

/// On other hosts the raw numbers differ; rely on the error kind alone.
#[cfg(not(target_os = "linux"))]
fn from_host_errno(_raw: i32) -> Option<Errno> {
    None
}

fn from_kind(kind: io::ErrorKind) -> Errno {
    use io::ErrorKind as K;
    match kind {
        K::NotFound => Errno::ENOENT,
        K::PermissionDenied => Errno::EACCES,
        K::AlreadyExists => Errno::EEXIST,
        K::WouldBlock => Errno::EAGAIN,
        K::InvalidInput | K::InvalidData => Errno::EINVAL,
        K::Interrupted => Errno::EINTR,
        K::Unsupported => Errno::ENOTSUP,
        K::OutOfMemory => Errno::ENOMEM,
        K::NotADirectory => Errno::ENOTDIR,
        K::IsADirectory => Errno::EISDIR,
        K::DirectoryNotEmpty => Errno::ENOTEMPTY,
        K::ReadOnlyFilesystem => Errno::EROFS,
        K::StorageFull => Errno::ENOSPC,
        K::NotSeekable => Errno::ESPIPE,
        K::FileTooLarge => Errno::EFBIG,
        K::ResourceBusy => Errno::EBUSY,
        K::ExecutableFileBusy => Errno::ETXTBSY,
        K::Deadlock => Errno::EDEADLK,
        K::CrossesDevices => Errno::EXDEV,
        K::TooManyLinks => Errno::EMLINK,
        K::InvalidFilename => Errno::ENAMETOOLONG,
        K::ArgumentListTooLong => Errno::E2BIG,
        K::BrokenPipe => Errno::EPIPE,
        K::TimedOut => Errno::ETIMEDOUT,
        K::StaleNetworkFileHandle => Errno::ESTALE,
        K::QuotaExceeded => Errno::EDQUOT,
        _ => Errno::EIO,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_follow_the_emscripten_table() {
        assert_eq!(Errno::EACCES.0, 2);
        assert_eq!(Errno::EAGAIN.0, 6);
        assert_eq!(Errno::EBADF.0, 8);
        assert_eq!(Errno::EEXIST.0, 20);
        assert_eq!(Errno::EINVAL.0, 28);
        assert_eq!(Errno::ENOENT.0, 44);
        assert_eq!(Errno::ENOTDIR.0, 54);
        assert_eq!(Errno::ENOTEMPTY.0, 55);
        assert_eq!(Errno::ESPIPE.0, 70);
        assert_eq!(Errno::EXDEV.0, 75);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn translates_linux_numbers() {
        assert_eq!(Errno::from_io(&io::Error::from_raw_os_error(2)), Errno::ENOENT);
        assert_eq!(Errno::from_io(&io::Error::from_raw_os_error(13)), Errno::EACCES);
        assert_eq!(
            Errno::from_io(&io::Error::from_raw_os_error(39)),
            Errno::ENOTEMPTY
        );
        assert_eq!(Errno::from_io(&io::Error::from_raw_os_error(18)), Errno::EXDEV);
        assert_eq!(Errno::from_io(&io::Error::from_raw_os_error(40)), Errno::ELOOP);
    }

    #[test]
    fn translates_error_kinds() {
        let err = io::Error::new(io::ErrorKind::NotFound, "gone");
        assert_eq!(Errno::from_io(&err), Errno::ENOENT);
        let err = io::Error::other("odd");
        assert_eq!(Errno::from_io(&err), Errno::EIO);
    }

    #[test]
    fn displays_name_and_number() {
        assert_eq!(Errno::ENOENT.to_string(), "ENOENT (44)");
        assert_eq!(Errno(999).to_string(), "errno 999");
    }
}
