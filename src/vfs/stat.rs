//! File metadata as the guest sees it: file kinds, `struct stat`, directory entries and
//! `struct statfs`, with their Emscripten wasm32 byte layouts (host ABI notes, §6.2).

use std::time::{SystemTime, UNIX_EPOCH};

/// A point in time as `(seconds since the Unix epoch, nanoseconds)`, like `struct timespec`.
pub type Timespec = (i64, u32);

/// Mask of the file type bits of `st_mode`.
pub const S_IFMT: u32 = 0o170000;
/// File type bits of a FIFO (pipe).
pub const S_IFIFO: u32 = 0o010000;
/// File type bits of a character device.
pub const S_IFCHR: u32 = 0o020000;
/// File type bits of a directory.
pub const S_IFDIR: u32 = 0o040000;
/// File type bits of a regular file.
pub const S_IFREG: u32 = 0o100000;
/// File type bits of a symbolic link.
pub const S_IFLNK: u32 = 0o120000;
/// Mask of the permission bits (including set-id and sticky bits).
pub const PERMISSION_BITS: u32 = 0o7777;

/// Block size reported in `st_blksize`.
pub const BLOCK_SIZE: i32 = 4096;

/// The kind of a file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FileKind {
    /// A regular file.
    Regular,
    /// A directory.
    Directory,
    /// A symbolic link.
    Symlink,
    /// A character device (`/dev/null`, the terminals, the standard streams, ...).
    CharDevice,
    /// A pipe.
    Fifo,
}

impl FileKind {
    /// The `__wasi_filetype_t` of this kind, for `fd_fdstat_get`: 2 character device,
    /// 3 directory, 4 regular file, 7 symbolic link. WASI has no FIFO type: pipes report
    /// 0 (`UNKNOWN`).
    pub fn wasi_filetype(self) -> u8 {
        match self {
            FileKind::Fifo => 0,
            FileKind::CharDevice => 2,
            FileKind::Directory => 3,
            FileKind::Regular => 4,
            FileKind::Symlink => 7,
        }
    }

    /// The `d_type` of a directory entry of this kind (`DT_FIFO` 1, `DT_CHR` 2, `DT_DIR` 4,
    /// `DT_REG` 8, `DT_LNK` 10).
    pub fn dirent_type(self) -> u8 {
        match self {
            FileKind::Fifo => 1,
            FileKind::CharDevice => 2,
            FileKind::Directory => 4,
            FileKind::Regular => 8,
            FileKind::Symlink => 10,
        }
    }

    /// The file type bits of `st_mode` for this kind.
    pub fn mode_bits(self) -> u32 {
        match self {
            FileKind::Fifo => S_IFIFO,
            FileKind::CharDevice => S_IFCHR,
            FileKind::Directory => S_IFDIR,
            FileKind::Regular => S_IFREG,
            FileKind::Symlink => S_IFLNK,
        }
    }

    /// The kind encoded in the file type bits of a `st_mode` (block devices and sockets, which
    /// this VFS never creates, are reported as regular files).
    pub fn from_mode(mode: u32) -> FileKind {
        match mode & S_IFMT {
            S_IFDIR => FileKind::Directory,
            S_IFLNK => FileKind::Symlink,
            S_IFCHR => FileKind::CharDevice,
            S_IFIFO => FileKind::Fifo,
            _ => FileKind::Regular,
        }
    }
}

/// The fields of `struct stat`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stat {
    /// Device id: 1 for the in-memory tree, 2 and up for host mounts.
    pub dev: u32,
    /// File type bits and permission bits.
    pub mode: u32,
    /// Number of hard links (for a directory: 2 plus its subdirectories).
    pub nlink: u32,
    /// Owner (always 0).
    pub uid: u32,
    /// Group (always 0).
    pub gid: u32,
    /// Device number of a character device.
    pub rdev: u32,
    /// Size in bytes.
    pub size: i64,
    /// Preferred I/O block size.
    pub blksize: i32,
    /// Number of 512-byte blocks.
    pub blocks: i32,
    /// Last access time.
    pub atime: Timespec,
    /// Last modification time.
    pub mtime: Timespec,
    /// Last status change time.
    pub ctime: Timespec,
    /// Inode number.
    pub ino: u64,
}

impl Stat {
    /// The Emscripten wasm32 `struct stat` (96 bytes, little-endian): dev@0, mode@4, nlink@8,
    /// uid@12, gid@16, rdev@20, size@24 (i64), blksize@32, blocks@36, atime@40/48,
    /// mtime@56/64, ctime@72/80 (i64 seconds, u32 nanoseconds), ino@88 (u64).
    pub fn to_bytes(&self) -> [u8; 96] {
        let mut out = [0u8; 96];
        put(&mut out, 0, &self.dev.to_le_bytes());
        put(&mut out, 4, &self.mode.to_le_bytes());
        put(&mut out, 8, &self.nlink.to_le_bytes());
        put(&mut out, 12, &self.uid.to_le_bytes());
        put(&mut out, 16, &self.gid.to_le_bytes());
        put(&mut out, 20, &self.rdev.to_le_bytes());
        put(&mut out, 24, &self.size.to_le_bytes());
        put(&mut out, 32, &self.blksize.to_le_bytes());
        put(&mut out, 36, &self.blocks.to_le_bytes());
        for (offset, (sec, nsec)) in [(40, self.atime), (56, self.mtime), (72, self.ctime)] {
            put(&mut out, offset, &sec.to_le_bytes());
            put(&mut out, offset + 8, &nsec.to_le_bytes());
        }
        put(&mut out, 88, &self.ino.to_le_bytes());
        out
    }
}

/// Number of 512-byte blocks for `size` bytes, saturated to the `i32` of `st_blocks`.
pub(crate) fn blocks_for(size: u64) -> i32 {
    i32::try_from(size.div_ceil(512)).unwrap_or(i32::MAX)
}

/// One entry of a directory listing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirEntry {
    /// Inode number.
    pub ino: u64,
    /// Kind of the file.
    pub kind: FileKind,
    /// File name (no NUL, at most 255 bytes).
    pub name: Vec<u8>,
}

impl DirEntry {
    /// Size of one Emscripten `struct dirent` record as written by `getdents64`.
    pub const RECORD_SIZE: usize = 280;
    /// Longest name a record can hold (the rest of `d_name` is the NUL terminator).
    pub const MAX_NAME: usize = 255;

    /// Writes the `getdents64` record of the entry at position `index` of its directory:
    /// d_ino u64@0, d_off i64@8 = `(index + 1) * 280`, d_reclen u16@16 = 280, d_type u8@18,
    /// NUL-terminated d_name@19. Unused bytes are zeroed.
    pub fn write_record(&self, index: u64, out: &mut [u8; 280]) {
        out.fill(0);
        let next = (index + 1).saturating_mul(Self::RECORD_SIZE as u64);
        put(out, 0, &self.ino.to_le_bytes());
        put(out, 8, &i64::try_from(next).unwrap_or(i64::MAX).to_le_bytes());
        put(out, 16, &(Self::RECORD_SIZE as u16).to_le_bytes());
        out[18] = self.kind.dirent_type();
        let len = self.name.len().min(Self::MAX_NAME);
        put(out, 19, &self.name[..len]);
    }
}

/// The fields of `struct statfs`. The numbers are fixed, plausible values (as Emscripten's own
/// file systems report), not measurements.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StatFs {
    /// File system type magic.
    pub fs_type: u32,
    /// Block size.
    pub bsize: u32,
    /// Total blocks.
    pub blocks: u32,
    /// Free blocks.
    pub bfree: u32,
    /// Free blocks available to unprivileged users.
    pub bavail: u32,
    /// Total inodes.
    pub files: u32,
    /// Free inodes.
    pub ffree: u32,
    /// File system id.
    pub fsid: [u32; 2],
    /// Longest file name.
    pub namelen: u32,
    /// Fragment size.
    pub frsize: u32,
    /// Mount flags (`ST_NOSUID` = 2).
    pub flags: u32,
}

impl StatFs {
    /// The Emscripten wasm32 `struct statfs` (64 bytes, little-endian, every field 32-bit, as in
    /// Emscripten's `struct_info_generated.json`): type@0, bsize@4, blocks@8, bfree@12,
    /// bavail@16, files@20, ffree@24, fsid@28 (2 words), namelen@36, frsize@40, flags@44,
    /// spare@48..64 (zero).
    pub fn to_bytes(&self) -> [u8; 64] {
        let mut out = [0u8; 64];
        let fields = [
            (0, self.fs_type),
            (4, self.bsize),
            (8, self.blocks),
            (12, self.bfree),
            (16, self.bavail),
            (20, self.files),
            (24, self.ffree),
            (28, self.fsid[0]),
            (32, self.fsid[1]),
            (36, self.namelen),
            (40, self.frsize),
            (44, self.flags),
        ];
        for (offset, value) in fields {
            put(&mut out, offset, &value.to_le_bytes());
        }
        out
    }
}

/// The current wall-clock time.
pub(crate) fn now() -> Timespec {
    from_system_time(SystemTime::now())
}

/// Converts a [`SystemTime`] to seconds and nanoseconds since the epoch (negative seconds for
/// times before it).
pub(crate) fn from_system_time(time: SystemTime) -> Timespec {
    match time.duration_since(UNIX_EPOCH) {
        Ok(after) => (
            i64::try_from(after.as_secs()).unwrap_or(i64::MAX),
            after.subsec_nanos(),
        ),
        Err(before) => {
            let before = before.duration();
            let secs = i64::try_from(before.as_secs()).unwrap_or(i64::MAX);
            match before.subsec_nanos() {
                0 => (-secs, 0),
                nanos => (-secs - 1, 1_000_000_000 - nanos),
            }
        }
    }
}

/// Converts seconds and nanoseconds since the epoch to a [`SystemTime`].
pub(crate) fn to_system_time((secs, nanos): Timespec) -> SystemTime {
    let nanos = std::time::Duration::from_nanos(u64::from(nanos));
    if secs >= 0 {
        UNIX_EPOCH + std::time::Duration::from_secs(secs.unsigned_abs()) + nanos
    } else {
        UNIX_EPOCH - std::time::Duration::from_secs(secs.unsigned_abs()) + nanos
    }
}

fn put(out: &mut [u8], offset: usize, bytes: &[u8]) {
    out[offset..offset + bytes.len()].copy_from_slice(bytes);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u32_at(bytes: &[u8], offset: usize) -> u32 {
        u32::from_le_bytes(bytes[offset..offset + 4].try_into().unwrap())
    }

    fn u64_at(bytes: &[u8], offset: usize) -> u64 {
        u64::from_le_bytes(bytes[offset..offset + 8].try_into().unwrap())
    }

    #[test]
    fn stat_layout_matches_emscripten() {
        let stat = Stat {
            dev: 1,
            mode: S_IFREG | 0o644,
            nlink: 3,
            uid: 4,
            gid: 5,
            rdev: 6,
            size: 0x1_2345_6789,
            blksize: 4096,
            blocks: 9,
            atime: (10, 11),
            mtime: (12, 13),
            ctime: (-14, 15),
            ino: 0xdead_beef_cafe,
        };
        let bytes = stat.to_bytes();
        assert_eq!(u32_at(&bytes, 0), 1);
        assert_eq!(u32_at(&bytes, 4), S_IFREG | 0o644);
        assert_eq!(u32_at(&bytes, 8), 3);
        assert_eq!(u32_at(&bytes, 12), 4);
        assert_eq!(u32_at(&bytes, 16), 5);
        assert_eq!(u32_at(&bytes, 20), 6);
        assert_eq!(u64_at(&bytes, 24), 0x1_2345_6789);
        assert_eq!(u32_at(&bytes, 32), 4096);
        assert_eq!(u32_at(&bytes, 36), 9);
        assert_eq!(u64_at(&bytes, 40), 10);
        assert_eq!(u32_at(&bytes, 48), 11);
        assert_eq!(u64_at(&bytes, 56), 12);
        assert_eq!(u32_at(&bytes, 64), 13);
        assert_eq!(u64_at(&bytes, 72) as i64, -14);
        assert_eq!(u32_at(&bytes, 80), 15);
        assert_eq!(u64_at(&bytes, 88), 0xdead_beef_cafe);
        assert_eq!(FileKind::from_mode(stat.mode), FileKind::Regular);
    }

    #[test]
    fn dirent_record_layout() {
        let entry = DirEntry {
            ino: 77,
            kind: FileKind::Directory,
            name: b"base".to_vec(),
        };
        let mut record = [0xffu8; 280];
        entry.write_record(2, &mut record);
        assert_eq!(u64_at(&record, 0), 77);
        assert_eq!(u64_at(&record, 8), 3 * 280);
        assert_eq!(u16::from_le_bytes([record[16], record[17]]), 280);
        assert_eq!(record[18], 4);
        assert_eq!(&record[19..24], b"base\0");
        assert!(record[24..].iter().all(|&b| b == 0));
    }

    #[test]
    fn long_names_keep_their_terminator() {
        let entry = DirEntry {
            ino: 1,
            kind: FileKind::Regular,
            name: vec![b'x'; 300],
        };
        let mut record = [0u8; 280];
        entry.write_record(0, &mut record);
        assert_eq!(record[19 + 254], b'x');
        assert_eq!(record[19 + 255], 0);
    }

    #[test]
    fn statfs_layout() {
        let fs = StatFs {
            fs_type: 1,
            bsize: 4096,
            blocks: 3,
            bfree: 4,
            bavail: 5,
            files: 6,
            ffree: 7,
            fsid: [42, 0],
            namelen: 255,
            frsize: 4096,
            flags: 2,
        };
        let bytes = fs.to_bytes();
        assert_eq!(u32_at(&bytes, 4), 4096);
        assert_eq!(u32_at(&bytes, 8), 3);
        assert_eq!(u32_at(&bytes, 28), 42);
        assert_eq!(u32_at(&bytes, 36), 255);
        assert_eq!(u32_at(&bytes, 44), 2);
    }

    #[test]
    fn kinds_map_to_abi_numbers() {
        assert_eq!(FileKind::CharDevice.wasi_filetype(), 2);
        assert_eq!(FileKind::Directory.wasi_filetype(), 3);
        assert_eq!(FileKind::Regular.wasi_filetype(), 4);
        assert_eq!(FileKind::Symlink.wasi_filetype(), 7);
        assert_eq!(FileKind::Symlink.dirent_type(), 10);
        assert_eq!(FileKind::from_mode(S_IFDIR | 0o755), FileKind::Directory);
    }

    #[test]
    fn system_time_round_trip() {
        for ts in [(0, 0), (1_700_000_000, 123), (-5, 999_999_999)] {
            assert_eq!(from_system_time(to_system_time(ts)), ts);
        }
    }
}
