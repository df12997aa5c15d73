//! Snapshot tests: a written and read-back file system behaves like a fork of the original;
//! damaged input is an error, never a panic.

use std::io::{BufReader, BufWriter, Write};
use std::time::Instant;

use super::flags::*;
use super::*;

fn snapshot(vfs: &Vfs) -> Vec<u8> {
    let mut out = Vec::new();
    vfs.write_snapshot(&mut out).unwrap();
    out
}

fn restore(bytes: &[u8]) -> Result<Vfs, SnapshotError> {
    Vfs::read_snapshot(&mut &bytes[..])
}

/// Descriptors of the sample file system worth looking at.
struct Fds {
    /// Open on `/data/doomed` (unlinked) at offset 4.
    doomed: i32,
    /// A dup of `doomed` (same description).
    doomed_dup: i32,
    /// `/data` with a partly read listing.
    dir: i32,
    /// The read end of a pipe holding `b"queued"`.
    pipe_read: i32,
    pipe_write: i32,
}

/// A file system with every kind of state a snapshot records.
fn sample() -> (Vfs, Fds) {
    let mut vfs = Vfs::new();
    vfs.write_file("/data/small", b"hello world", 0o640).unwrap();
    let patterned: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8 + 1).collect();
    vfs.write_file("/data/sub/deeper/patterned", &patterned, 0o600)
        .unwrap();
    // A sparse file: 16 MiB with one page written at 5 MiB.
    let fd = vfs
        .openat(AT_FDCWD, b"/data/sparse", O_CREAT | O_RDWR, 0o600)
        .unwrap();
    vfs.ftruncate(fd, 16 << 20).unwrap();
    vfs.pwrite(fd, &[7u8; 8192], 5 << 20).unwrap();
    vfs.close(fd).unwrap();
    vfs.linkat(AT_FDCWD, b"/data/small", AT_FDCWD, b"/data/hard", 0)
        .unwrap();
    vfs.symlinkat(b"small", AT_FDCWD, b"/data/link").unwrap();
    vfs.symlinkat(b"/nowhere", AT_FDCWD, b"/data/dangling").unwrap();
    vfs.mkdirat(AT_FDCWD, b"/data/empty", 0o700).unwrap();
    vfs.utimensat(
        AT_FDCWD,
        b"/data/small",
        Some([(1_000_000, 123), (2_000_000, 456_789)]),
        0,
    )
    .unwrap();
    // A freed node slot and a descriptor gap.
    vfs.write_file("/tmp/gone", b"x", 0o600).unwrap();
    vfs.unlinkat(AT_FDCWD, b"/tmp/gone", 0).unwrap();
    let gap = vfs.openat(AT_FDCWD, b"/data/small", O_RDONLY, 0).unwrap();
    // Open at an offset, then unlinked.
    vfs.write_file("/data/doomed", b"0123456789abcdef", 0o600)
        .unwrap();
    let doomed = vfs
        .openat(AT_FDCWD, b"/data/doomed", O_RDWR | O_CLOEXEC, 0)
        .unwrap();
    let mut buf = [0u8; 4];
    assert_eq!(vfs.read(doomed, &mut buf), Ok(4));
    vfs.unlinkat(AT_FDCWD, b"/data/doomed", 0).unwrap();
    let doomed_dup = vfs.dup(doomed).unwrap();
    vfs.openat(AT_FDCWD, b"/tmp/log", O_CREAT | O_WRONLY | O_APPEND, 0o644)
        .unwrap();
    let dir = vfs.openat(AT_FDCWD, b"/data", O_RDONLY | O_DIRECTORY, 0).unwrap();
    assert_eq!(vfs.getdents(dir, 3).unwrap().len(), 3);
    let (pipe_read, pipe_write) = vfs.pipe2(O_NONBLOCK).unwrap();
    vfs.write(pipe_write, b"queued").unwrap();
    vfs.close(gap).unwrap();
    vfs.set_blob_input(b"1,a\n".to_vec());
    vfs.chdir(b"/data/sub").unwrap();
    vfs.umask(0o027);
    let fds = Fds {
        doomed,
        doomed_dup,
        dir,
        pipe_read,
        pipe_write,
    };
    (vfs, fds)
}

/// Walks both trees from `path`, comparing metadata, contents, link targets and listings.
fn assert_same_tree(a: &mut Vfs, b: &mut Vfs, path: &[u8]) {
    let shown = String::from_utf8_lossy(path).into_owned();
    let stat = a.statat(AT_FDCWD, path, AT_SYMLINK_NOFOLLOW);
    assert_eq!(stat, b.statat(AT_FDCWD, path, AT_SYMLINK_NOFOLLOW), "{shown}");
    let stat = stat.unwrap();
    match FileKind::from_mode(stat.mode) {
        FileKind::Regular => {
            let path = std::str::from_utf8(path).unwrap();
            assert_eq!(a.read_file(path), b.read_file(path), "{shown}");
        }
        FileKind::Symlink => {
            assert_eq!(
                a.readlinkat(AT_FDCWD, path),
                b.readlinkat(AT_FDCWD, path),
                "{shown}"
            );
        }
        FileKind::Directory => {
            let list = |vfs: &mut Vfs| {
                let fd = vfs.openat(AT_FDCWD, path, O_RDONLY | O_DIRECTORY, 0).unwrap();
                let entries = vfs.getdents(fd, 10_000).unwrap();
                vfs.close(fd).unwrap();
                entries
            };
            let entries = list(a);
            assert_eq!(entries, list(b), "{shown}");
            for entry in entries {
                if entry.name == b"." || entry.name == b".." {
                    continue;
                }
                let mut child = path.to_vec();
                if child != b"/" {
                    child.push(b'/');
                }
                child.extend_from_slice(&entry.name);
                assert_same_tree(a, b, &child);
            }
        }
        FileKind::CharDevice | FileKind::Fifo => {}
    }
}

/// Compares two file systems by behaviour: the tree, every descriptor, the working directory,
/// the umask, and what the next file, descriptor and inode will be.
fn assert_same(a: &mut Vfs, b: &mut Vfs) {
    assert_eq!(a.getcwd(), b.getcwd());
    let mask = a.umask(0);
    assert_eq!(mask, b.umask(0));
    a.umask(mask);
    b.umask(mask);
    assert_eq!(a.open_fds(), b.open_fds());
    for fd in a.open_fds() {
        let stat = |vfs: &Vfs| {
            vfs.fstat(fd).map(|mut stat| {
                if FileKind::from_mode(stat.mode) == FileKind::Fifo {
                    // A pipe's times are always "now".
                    (stat.atime, stat.mtime, stat.ctime) = Default::default();
                }
                stat
            })
        };
        assert_eq!(stat(a), stat(b), "fd {fd}");
        assert_eq!(a.file_kind(fd), b.file_kind(fd), "fd {fd}");
        assert_eq!(a.seek(fd, 0, SEEK_CUR), b.seek(fd, 0, SEEK_CUR), "fd {fd}");
        assert_eq!(a.fcntl(fd, F_GETFL, 0), b.fcntl(fd, F_GETFL, 0), "fd {fd}");
        assert_eq!(a.fcntl(fd, F_GETFD, 0), b.fcntl(fd, F_GETFD, 0), "fd {fd}");
        assert_eq!(
            a.poll_revents(fd, POLLIN | POLLOUT),
            b.poll_revents(fd, POLLIN | POLLOUT)
        );
    }
    let (sa, sb) = (a.memory_stats(), b.memory_stats());
    assert_eq!(
        (sa.nodes, sa.files, sa.file_bytes, sa.stored_chunks),
        (sb.nodes, sb.files, sb.file_bytes, sb.stored_chunks)
    );
    assert_same_tree(a, b, b"/");
    // The same inode and descriptor come next.
    let new = |vfs: &mut Vfs| {
        let fd = vfs
            .openat(AT_FDCWD, b"/tmp/next", O_CREAT | O_EXCL | O_RDWR, 0o666)
            .unwrap();
        let stat = vfs.fstat(fd).unwrap();
        vfs.unlinkat(AT_FDCWD, b"/tmp/next", 0).unwrap();
        vfs.close(fd).unwrap();
        (fd, stat.ino, stat.mode, vfs.pipe2(0).unwrap())
    };
    assert_eq!(new(a), new(b));
}

#[test]
fn round_trip_behaves_like_a_fork() {
    let (mut original, fds) = sample();
    let bytes = snapshot(&original);
    let mut restored = restore(&bytes).unwrap();
    assert_eq!(
        snapshot(&restored),
        bytes,
        "writing the read-back file system gives the same bytes"
    );
    let mut forked = original.fork().unwrap();
    assert_same(&mut forked, &mut restored);

    // The unlinked file's description continues at its offset, shared with its dup.
    let mut buf = [0u8; 4];
    assert_eq!(restored.read(fds.doomed, &mut buf), Ok(4));
    assert_eq!(&buf, b"4567");
    assert_eq!(restored.read(fds.doomed_dup, &mut buf), Ok(4));
    assert_eq!(&buf, b"89ab");
    assert_eq!(restored.fstat(fds.doomed).unwrap().nlink, 0);
    // The directory listing continues where it was.
    let rest = restored.getdents(fds.dir, 100).unwrap();
    assert_eq!(rest, forked.getdents(fds.dir, 100).unwrap());
    assert!(!rest.is_empty());
    // The pipe comes with its bytes and its ends.
    let mut pipe_buf = [0u8; 16];
    assert_eq!(restored.read(fds.pipe_read, &mut pipe_buf), Ok(6));
    assert_eq!(&pipe_buf[..6], b"queued");
    assert_eq!(restored.read(fds.pipe_read, &mut pipe_buf), Err(Errno::EAGAIN));
    restored.close(fds.pipe_write).unwrap();
    assert_eq!(restored.read(fds.pipe_read, &mut pipe_buf), Ok(0));
    // Hard links share the node; symbolic links resolve.
    restored
        .write_file("/data/hard", b"changed via the hard link", 0o640)
        .unwrap();
    assert_eq!(
        restored.read_file("/data/link").unwrap(),
        b"changed via the hard link"
    );
    assert_eq!(restored.statat(AT_FDCWD, b"/data/small", 0).unwrap().nlink, 2);
    // Relative paths start from the restored working directory.
    assert_eq!(restored.read_file("deeper/patterned").unwrap().len(), 200_000);
    // /dev/blob input came along.
    let blob = restored.openat(AT_FDCWD, b"/dev/blob", O_RDONLY, 0).unwrap();
    assert_eq!(restored.read(blob, &mut buf), Ok(4));
    assert_eq!(&buf, b"1,a\n");

    // Nothing done to the restored copy shows in the original.
    restored.pwrite(fds.doomed, b"ZZZZ", 0).unwrap();
    restored.unlinkat(AT_FDCWD, b"/data/empty", AT_REMOVEDIR).unwrap();
    assert_eq!(original.read_file("/data/small").unwrap(), b"hello world");
    assert!(original.exists("/data/empty"));
    assert_eq!(original.pread(fds.doomed, &mut buf, 0), Ok(4));
    assert_eq!(&buf, b"0123");
    assert_eq!(original.read(fds.doomed, &mut buf), Ok(4));
    assert_eq!(&buf, b"4567");
}

#[test]
fn output_sinks_are_not_recorded() {
    use std::sync::{Arc, Mutex};
    let seen = Arc::new(Mutex::new(Vec::new()));
    let mut vfs = Vfs::new();
    let sink_seen = Arc::clone(&seen);
    vfs.set_output_sink(
        2,
        Arc::new(move |bytes: &[u8]| sink_seen.lock().unwrap().extend_from_slice(bytes)),
    );
    let mut restored = restore(&snapshot(&vfs)).unwrap();
    assert_eq!(restored.write(2, b"dropped"), Ok(7));
    assert!(seen.lock().unwrap().is_empty());
    let sink_seen = Arc::clone(&seen);
    restored.set_output_sink(
        2,
        Arc::new(move |bytes: &[u8]| sink_seen.lock().unwrap().extend_from_slice(bytes)),
    );
    restored.write(2, b"LOG").unwrap();
    assert_eq!(&*seen.lock().unwrap(), b"LOG");
}

#[test]
fn holes_are_not_written() {
    let mut vfs = Vfs::new();
    let fd = vfs.openat(AT_FDCWD, b"/wal", O_CREAT | O_RDWR, 0o600).unwrap();
    vfs.ftruncate(fd, 16 << 20).unwrap();
    vfs.pwrite(fd, &[1u8; 100], 8 << 20).unwrap();
    vfs.write_file("/zeros", &vec![0u8; 40 << 20], 0o600).unwrap();
    // A stored chunk that became all zeros is written as a hole too.
    vfs.write_file("/cleared", &[5u8; 1000], 0o600).unwrap();
    let cleared = vfs.openat(AT_FDCWD, b"/cleared", O_RDWR, 0).unwrap();
    vfs.pwrite(cleared, &[0u8; 1000], 0).unwrap();
    let bytes = snapshot(&vfs);
    assert!(bytes.len() < 8192, "snapshot of {} bytes", bytes.len());
    let restored = restore(&bytes).unwrap();
    assert_eq!(restored.memory_stats().stored_chunks, 1);
    assert_eq!(restored.memory_stats().file_bytes, (56 << 20) + 1000);
    let wal = restored.read_file("/wal").unwrap();
    assert!(wal[..8 << 20].iter().all(|&b| b == 0));
    assert_eq!(
        &wal[8 << 20..(8 << 20) + 101],
        &[[1u8; 100].as_slice(), &[0]].concat()[..]
    );
    assert_eq!(restored.read_file("/cleared").unwrap(), vec![0u8; 1000]);
}

#[test]
fn every_truncation_is_an_error() {
    let (vfs, _) = sample_small();
    let bytes = snapshot(&vfs);
    for len in 0..bytes.len() {
        match restore(&bytes[..len]) {
            Err(SnapshotError::Truncated { .. }) => {}
            other => panic!("prefix of {len} bytes: {other:?}"),
        }
    }
    // Whatever follows the snapshot is left unread.
    let mut long = bytes.clone();
    long.extend_from_slice(b"trailer");
    let mut input = &long[..];
    Vfs::read_snapshot(&mut input).unwrap();
    assert_eq!(input, b"trailer");
}

/// A small file system for byte-by-byte tests.
fn sample_small() -> (Vfs, i32) {
    let mut vfs = Vfs::new();
    vfs.write_file("/d/f", b"content", 0o600).unwrap();
    vfs.linkat(AT_FDCWD, b"/d/f", AT_FDCWD, b"/d/g", 0).unwrap();
    vfs.symlinkat(b"f", AT_FDCWD, b"/d/l").unwrap();
    let fd = vfs.openat(AT_FDCWD, b"/d/f", O_RDONLY, 0).unwrap();
    let dir = vfs.openat(AT_FDCWD, b"/d", O_RDONLY | O_DIRECTORY, 0).unwrap();
    vfs.getdents(dir, 1).unwrap();
    vfs.pipe2(0).unwrap();
    vfs.unlinkat(AT_FDCWD, b"/d/f", 0).unwrap();
    (vfs, fd)
}

#[test]
fn every_flipped_byte_is_an_error() {
    let (vfs, _) = sample_small();
    let bytes = snapshot(&vfs);
    let mut damaged = bytes.clone();
    for pos in 0..bytes.len() {
        for flip in [0x01, 0x80] {
            damaged[pos] ^= flip;
            assert!(
                restore(&damaged).is_err(),
                "flipping {flip:#x} at byte {pos} went unnoticed"
            );
            damaged[pos] ^= flip;
        }
    }
    let last = bytes.len() - 1;
    damaged[last] ^= 1;
    assert!(matches!(restore(&damaged), Err(SnapshotError::ChecksumMismatch)));
    damaged[last] ^= 1;
    damaged[200] ^= 1;
    let err = restore(&damaged).unwrap_err();
    assert!(!err.to_string().is_empty());
}

#[test]
fn foreign_input_and_other_versions() {
    assert!(matches!(
        restore(b"PK\x03\x04 this is a zip file, not a snapshot"),
        Err(SnapshotError::BadMagic { .. })
    ));
    let mut bytes = snapshot(&Vfs::new());
    bytes[8] = 2;
    let err = restore(&bytes).unwrap_err();
    assert!(matches!(err, SnapshotError::UnsupportedVersion { found: 2 }));
    assert!(err.to_string().contains("version 2"), "{err}");
}

#[test]
fn inconsistent_state_is_refused() {
    // A well-formed, checksummed snapshot of an impossible file system.
    let mut vfs = Vfs::new();
    vfs.write_file("/f", b"x", 0o600).unwrap();
    let id = vfs.tree.lookup(memory::MemTree::ROOT, b"f").unwrap().unwrap();
    vfs.tree.node_mut(id).links = 2;
    let err = restore(&snapshot(&vfs)).unwrap_err();
    assert!(err.to_string().contains("links"), "{err}");

    let mut vfs = Vfs::new();
    vfs.write_file("/f", b"x", 0o600).unwrap();
    let id = vfs.tree.lookup(memory::MemTree::ROOT, b"f").unwrap().unwrap();
    vfs.tree.node_mut(id).open_refs = 1;
    let err = restore(&snapshot(&vfs)).unwrap_err();
    assert!(err.to_string().contains("open references"), "{err}");

    // Two directories containing each other, cut off from the root: counts and parents agree,
    // but walking up from either would never end.
    let mut vfs = Vfs::new();
    vfs.create_dir_all("/x/y", 0o755).unwrap();
    let root = memory::MemTree::ROOT;
    let x = vfs.tree.lookup(root, b"x").unwrap().unwrap();
    let y = vfs.tree.lookup(x, b"y").unwrap().unwrap();
    let root_dir = vfs.tree.dir_mut(root).unwrap();
    root_dir.entries.remove(&b"x"[..]);
    root_dir.subdirs -= 1;
    let y_dir = vfs.tree.dir_mut(y).unwrap();
    y_dir.entries.insert(b"x"[..].into(), x);
    y_dir.subdirs += 1;
    vfs.tree.dir_mut(x).unwrap().parent = y;
    let err = restore(&snapshot(&vfs)).unwrap_err();
    assert!(err.to_string().contains("not reachable from the root"), "{err}");
}

#[test]
fn host_mounts_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut vfs = Vfs::new();
    vfs.mount_host_dir("/pglite/data", dir.path(), Durability::Relaxed)
        .unwrap();
    let mut out = Vec::new();
    assert!(matches!(
        vfs.write_snapshot(&mut out),
        Err(SnapshotError::HostMounts)
    ));
    assert!(out.is_empty());
}

/// About 40 MiB of data through a file on disk. Measured (debug profile, opt-level 1, 2 shared
/// cores): see the printed line.
#[test]
fn large_tree_round_trip_is_fast() {
    let mut vfs = Vfs::new();
    for i in 0..40u32 {
        let data: Vec<u8> = (0..1u32 << 20)
            .map(|j| (j.wrapping_mul(31) ^ i) as u8 | 1)
            .collect();
        vfs.write_file(&format!("/pgdata/base/5/{}", 16384 + i), &data, 0o600)
            .unwrap();
    }
    vfs.create_dir_all("/pgdata/pg_wal", 0o700).unwrap();
    let fd = vfs
        .openat(
            AT_FDCWD,
            b"/pgdata/pg_wal/000000010000000000000001",
            O_CREAT | O_RDWR,
            0o600,
        )
        .unwrap();
    vfs.ftruncate(fd, 16 << 20).unwrap();
    vfs.pwrite(fd, &[0xd1; 8192], 0).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vfs.snapshot");

    let start = Instant::now();
    let mut file = std::fs::File::create(&path).unwrap();
    vfs.write_snapshot(&mut file).unwrap();
    let written = start.elapsed();
    let start = Instant::now();
    file.sync_data().unwrap();
    let synced = start.elapsed();
    let size = std::fs::metadata(&path).unwrap().len();

    let start = Instant::now();
    let mut input = BufReader::with_capacity(1 << 20, std::fs::File::open(&path).unwrap());
    let restored = Vfs::read_snapshot(&mut input).unwrap();
    let read = start.elapsed();

    let mib = size as f64 / f64::from(1 << 20);
    eprintln!(
        "snapshot of {mib:.1} MiB: written in {written:?} ({:.0} MiB/s; fsync then took \
         {synced:?}), read in {read:?} ({:.0} MiB/s)",
        mib / written.as_secs_f64(),
        mib / read.as_secs_f64()
    );
    assert!(size > 40 << 20 && size < (40 << 20) + (1 << 20));
    for i in [0u32, 39] {
        let path = format!("/pgdata/base/5/{}", 16384 + i);
        assert_eq!(restored.read_file(&path), vfs.read_file(&path));
    }
    assert_eq!(
        restored.memory_stats().stored_chunks,
        vfs.memory_stats().stored_chunks
    );

    // An unbuffered writer that fails midway is an I/O error.
    struct Failing(usize);
    impl Write for Failing {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            if self.0 < buf.len() {
                return Err(std::io::Error::other("disk full"));
            }
            self.0 -= buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let err = vfs
        .write_snapshot(&mut BufWriter::new(Failing(3 << 20)))
        .unwrap_err();
    assert!(matches!(err, SnapshotError::Io(_)), "{err}");
}
