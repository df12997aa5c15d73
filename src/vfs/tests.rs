//! Whole-VFS tests: the standard layout, forks and host mounts.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use super::flags::*;
use super::*;

/// A host directory removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> TempDir {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let path = std::env::temp_dir().join(format!(
            "vfs-test-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn mounted(durability: Durability) -> (Vfs, TempDir) {
    let dir = TempDir::new();
    let mut vfs = Vfs::new();
    vfs.mount_host_dir("/pglite/data", dir.path(), durability)
        .unwrap();
    (vfs, dir)
}

fn names(entries: &[DirEntry]) -> Vec<String> {
    entries
        .iter()
        .map(|e| String::from_utf8_lossy(&e.name).into_owned())
        .collect()
}

#[test]
fn vfs_is_send() {
    fn assert_send<T: Send>() {}
    assert_send::<Vfs>();
}

#[test]
fn standard_layout() {
    let mut vfs = Vfs::new();
    for dir in [
        "/tmp",
        "/home/web_user",
        "/dev/shm",
        "/dev/shm/tmp",
        "/proc/self/fd",
    ] {
        let stat = vfs.statat(AT_FDCWD, dir.as_bytes(), 0).unwrap();
        assert_eq!(FileKind::from_mode(stat.mode), FileKind::Directory, "{dir}");
    }
    for dev in [
        "null", "zero", "tty", "tty1", "random", "urandom", "stdin", "stdout", "stderr", "blob",
    ] {
        let stat = vfs.statat(AT_FDCWD, format!("/dev/{dev}").as_bytes(), 0).unwrap();
        assert_eq!(FileKind::from_mode(stat.mode), FileKind::CharDevice, "{dev}");
    }
    assert_eq!(vfs.open_fds(), vec![0, 1, 2]);
    assert_eq!(vfs.file_kind(1), Ok(FileKind::CharDevice));
    assert_eq!(vfs.getcwd(), b"/");
    assert_eq!(vfs.umask(0o077), 0o022);
    assert_eq!(vfs.umask(0o022), 0o077);
    // /dev/shm holds DSM segments: create, size, read back.
    let fd = vfs
        .openat(
            AT_FDCWD,
            b"/dev/shm/PostgreSQL.42",
            O_CREAT | O_EXCL | O_RDWR,
            0o600,
        )
        .unwrap();
    vfs.ftruncate(fd, 1 << 20).unwrap();
    let mut block = vec![1u8; 1 << 20];
    assert_eq!(vfs.pread(fd, &mut block, 0), Ok(1 << 20));
    assert!(block.iter().all(|&b| b == 0));
    assert_eq!(vfs.memory_stats().stored_chunks, 0);
}

#[test]
fn write_file_read_file_and_exists() {
    let mut vfs = Vfs::new();
    vfs.write_file("/pglite/share/postgresql/timezone/UTC", b"TZif", 0o777)
        .unwrap();
    assert!(vfs.exists("/pglite/share/postgresql/timezone"));
    assert_eq!(
        vfs.read_file("/pglite/share/postgresql/timezone/UTC").unwrap(),
        b"TZif"
    );
    let stat = vfs
        .statat(AT_FDCWD, b"/pglite/share/postgresql/timezone/UTC", 0)
        .unwrap();
    assert_eq!(stat.mode & 0o7777, 0o777);
    vfs.write_file("/pglite/share/postgresql/timezone/UTC", b"v2", 0o444)
        .unwrap();
    assert_eq!(
        vfs.statat(AT_FDCWD, b"/pglite/share/postgresql/timezone/UTC", 0)
            .unwrap()
            .ino,
        stat.ino,
        "replacing keeps the inode"
    );
    assert_eq!(
        vfs.read_file("/pglite/share/postgresql/timezone/UTC").unwrap(),
        b"v2"
    );
    assert_eq!(vfs.read_file("/pglite"), Err(Errno::EISDIR));
    assert_eq!(vfs.read_file("/nope"), Err(Errno::ENOENT));
    assert_eq!(vfs.write_file("/pglite", b"", 0o644), Err(Errno::EISDIR));
    assert_eq!(
        vfs.write_file("/pglite/share/postgresql/timezone/UTC/x", b"", 0o644),
        Err(Errno::ENOTDIR)
    );
    assert!(!vfs.exists("/nope"));
    vfs.create_dir_all("/pglite/share", 0o755).unwrap();
    assert_eq!(
        vfs.create_dir_all("/pglite/share/postgresql/timezone/UTC", 0o755),
        Err(Errno::ENOTDIR)
    );
}

#[test]
fn fork_is_an_independent_copy() {
    let mut original = Vfs::new();
    original.write_file("/data/file", b"shared", 0o600).unwrap();
    original.chdir(b"/data").unwrap();
    original.umask(0o077);
    let fd = original.openat(AT_FDCWD, b"file", O_RDWR, 0).unwrap();
    let mut buf = [0u8; 3];
    original.read(fd, &mut buf).unwrap();
    let (r, w) = original.pipe2(0).unwrap();
    original.write(w, b"queued").unwrap();

    let mut fork = original.fork().unwrap();
    assert_eq!(fork.getcwd(), b"/data");
    assert_eq!(fork.umask(0o077), 0o077);
    assert_eq!(fork.open_fds(), original.open_fds());
    // Same open file description state: the offset continues.
    assert_eq!(fork.read(fd, &mut buf), Ok(3));
    assert_eq!(&buf, b"red");
    assert_eq!(original.seek(fd, 0, SEEK_CUR), Ok(3));
    // Pipes come with their buffered bytes, and are separate afterwards.
    let mut pipe_buf = [0u8; 16];
    assert_eq!(fork.read(r, &mut pipe_buf), Ok(6));
    assert_eq!(&pipe_buf[..6], b"queued");
    assert_eq!(original.read(r, &mut pipe_buf), Ok(6));

    fork.pwrite(fd, b"FORK", 0).unwrap();
    fork.write_file("/data/new", b"only in fork", 0o600).unwrap();
    original.pwrite(fd, b"ORIG", 2).unwrap();
    assert_eq!(original.read_file("/data/file").unwrap(), b"shORIG");
    assert_eq!(fork.read_file("/data/file").unwrap(), b"FORKed");
    assert!(!original.exists("/data/new"));
    original.unlinkat(AT_FDCWD, b"file", 0).unwrap();
    assert!(fork.exists("/data/file"));

    // The fork of a fork works, and dropping either does not disturb the other.
    let second = fork.fork().unwrap();
    drop(fork);
    assert_eq!(second.read_file("/data/new").unwrap(), b"only in fork");
}

#[test]
fn sparse_wal_segment_is_cheap_to_store_and_fork() {
    const SEGMENT: u64 = 16 << 20;
    let mut template = Vfs::new();
    template.create_dir_all("/pglite/data/pg_wal", 0o700).unwrap();
    let mut image = vec![0u8; SEGMENT as usize];
    image[..8192].fill(0xd1);
    template
        .write_file("/pglite/data/pg_wal/000000010000000000000001", &image, 0o600)
        .unwrap();
    let stats = template.memory_stats();
    assert_eq!(stats.file_bytes, SEGMENT);
    assert_eq!(stats.stored_chunks, 1, "only the written page's chunk is stored");
    assert_eq!(stats.stored_bytes, 8192, "only up to the last non-zero byte");

    let mut clones: Vec<Vfs> = (0..100).map(|_| template.fork().unwrap()).collect();
    let after = template.memory_stats();
    assert_eq!(after.stored_chunks, 1);
    assert_eq!(after.shared_chunks, 1, "the chunk is shared with the forks");
    assert_eq!(
        after.shared_nodes, after.nodes,
        "every node is shared until changed"
    );

    let clone = &mut clones[0];
    let fd = clone
        .openat(
            AT_FDCWD,
            b"/pglite/data/pg_wal/000000010000000000000001",
            O_RDWR,
            0,
        )
        .unwrap();
    // A write into the hole materialises one new chunk in the clone only.
    clone.pwrite(fd, &[0xee; 8192], 8 << 20).unwrap();
    assert_eq!(clone.memory_stats().stored_chunks, 2);
    assert_eq!(template.memory_stats().stored_chunks, 1);
    // A write into the shared chunk copies it for the clone.
    clone.pwrite(fd, &[0xaa; 8192], 8192).unwrap();
    let mut page = [0u8; 8192];
    template
        .openat(
            AT_FDCWD,
            b"/pglite/data/pg_wal/000000010000000000000001",
            O_RDONLY,
            0,
        )
        .and_then(|fd| template.pread(fd, &mut page, 8192))
        .unwrap();
    assert!(page.iter().all(|&b| b == 0));
    clone.pread(fd, &mut page, 8192).unwrap();
    assert!(page.iter().all(|&b| b == 0xaa));
    clone.pread(fd, &mut page, 0).unwrap();
    assert!(page.iter().all(|&b| b == 0xd1));
}

#[test]
fn fork_refuses_host_mounts() {
    let (vfs, _dir) = mounted(Durability::Relaxed);
    assert_eq!(vfs.fork().err(), Some(Errno::EXDEV));
}

#[test]
fn host_mount_files() {
    let (mut vfs, dir) = mounted(Durability::Relaxed);
    let fd = vfs
        .openat(
            AT_FDCWD,
            b"/pglite/data/PG_VERSION",
            O_CREAT | O_EXCL | O_WRONLY,
            0o600,
        )
        .unwrap();
    assert_eq!(vfs.write(fd, b"18\n"), Ok(3));
    vfs.close(fd).unwrap();
    assert_eq!(std::fs::read(dir.path().join("PG_VERSION")).unwrap(), b"18\n");
    assert_eq!(vfs.read_file("/pglite/data/PG_VERSION").unwrap(), b"18\n");

    // Relative paths under a host working directory, pages at offsets.
    vfs.chdir(b"/pglite/data").unwrap();
    assert_eq!(vfs.getcwd(), b"/pglite/data");
    vfs.mkdirat(AT_FDCWD, b"base", 0o700).unwrap();
    vfs.mkdirat(AT_FDCWD, b"base/5", 0o700).unwrap();
    let rel = vfs
        .openat(AT_FDCWD, b"base/5/1259", O_CREAT | O_RDWR, 0o600)
        .unwrap();
    let page = [0x5au8; 8192];
    vfs.pwrite(rel, &page, 8192).unwrap();
    let on_disk = std::fs::read(dir.path().join("base/5/1259")).unwrap();
    assert_eq!(on_disk.len(), 16384);
    assert_eq!(&on_disk[8192..], &page[..]);
    let mut back = [0u8; 8192];
    assert_eq!(vfs.pread(rel, &mut back, 8192), Ok(8192));
    assert_eq!(back, page);
    assert_eq!(vfs.seek(rel, 0, SEEK_END), Ok(16384));
    vfs.ftruncate(rel, 8192).unwrap();
    assert_eq!(vfs.fstat(rel).unwrap().size, 8192);
    vfs.truncate(b"base/5/1259", 100).unwrap();
    assert_eq!(
        std::fs::metadata(dir.path().join("base/5/1259")).unwrap().len(),
        100
    );

    // Appending.
    let log = vfs
        .openat(AT_FDCWD, b"log", O_CREAT | O_WRONLY | O_APPEND, 0o600)
        .unwrap();
    vfs.write(log, b"a").unwrap();
    vfs.seek(log, 0, SEEK_SET).unwrap();
    vfs.write(log, b"b").unwrap();
    assert_eq!(std::fs::read(dir.path().join("log")).unwrap(), b"ab");

    // stat comes from the host.
    let stat = vfs.statat(AT_FDCWD, b"base/5/1259", 0).unwrap();
    assert_eq!(stat.dev, 2);
    assert_eq!(FileKind::from_mode(stat.mode), FileKind::Regular);
    assert_eq!(stat.mode & 0o777, 0o600);
    assert_eq!(stat.size, 100);
    assert_eq!(vfs.fstat(rel).unwrap().ino, stat.ino);
    assert_eq!(
        FileKind::from_mode(vfs.statat(AT_FDCWD, b"/pglite/data", 0).unwrap().mode),
        FileKind::Directory
    );
    assert_eq!(vfs.faccessat(AT_FDCWD, b"base/5/1259", R_OK | W_OK, 0), Ok(()));
    assert_eq!(
        vfs.faccessat(AT_FDCWD, b"base/5/1259", X_OK, 0),
        Err(Errno::EACCES)
    );

    // Unlinked while open: still readable (OS semantics).
    vfs.unlinkat(AT_FDCWD, b"base/5/1259", 0).unwrap();
    assert!(!dir.path().join("base/5/1259").exists());
    assert_eq!(vfs.pread(rel, &mut back[..100], 0), Ok(100));
    vfs.close(rel).unwrap();

    assert_eq!(
        vfs.unlinkat(AT_FDCWD, b"base", AT_REMOVEDIR),
        Err(Errno::ENOTEMPTY)
    );
    vfs.unlinkat(AT_FDCWD, b"base/5", AT_REMOVEDIR).unwrap();
    assert_eq!(vfs.openat(AT_FDCWD, b"missing", O_RDONLY, 0), Err(Errno::ENOENT));
    assert_eq!(
        vfs.openat(AT_FDCWD, b"PG_VERSION", O_CREAT | O_EXCL | O_RDWR, 0o600),
        Err(Errno::EEXIST)
    );
    assert_eq!(vfs.openat(AT_FDCWD, b"base", O_RDWR, 0), Err(Errno::EISDIR));
    vfs.close_all();
    assert!(vfs.open_fds().is_empty());
}

#[test]
fn host_mount_rename_and_listing() {
    let (mut vfs, dir) = mounted(Durability::Durable);
    vfs.write_file("/pglite/data/global/pg_control", b"old", 0o600)
        .unwrap();
    vfs.write_file("/pglite/data/global/pg_control.tmp", b"new", 0o600)
        .unwrap();
    let old = vfs
        .openat(AT_FDCWD, b"/pglite/data/global/pg_control", O_RDONLY, 0)
        .unwrap();
    vfs.renameat(
        AT_FDCWD,
        b"/pglite/data/global/pg_control.tmp",
        AT_FDCWD,
        b"/pglite/data/global/pg_control",
    )
    .unwrap();
    assert_eq!(
        std::fs::read(dir.path().join("global/pg_control")).unwrap(),
        b"new"
    );
    assert!(!dir.path().join("global/pg_control.tmp").exists());
    let mut buf = [0u8; 3];
    assert_eq!(vfs.read(old, &mut buf), Ok(3));
    assert_eq!(&buf, b"old", "the replaced file stays readable");

    // Rename between directories of the mount, and across the mount boundary.
    vfs.mkdirat(AT_FDCWD, b"/pglite/data/pg_wal", 0o700).unwrap();
    vfs.renameat(
        AT_FDCWD,
        b"/pglite/data/global/pg_control",
        AT_FDCWD,
        b"/pglite/data/pg_wal/moved",
    )
    .unwrap();
    assert!(dir.path().join("pg_wal/moved").exists());
    vfs.write_file("/tmp/memfile", b"m", 0o600).unwrap();
    assert_eq!(
        vfs.renameat(AT_FDCWD, b"/tmp/memfile", AT_FDCWD, b"/pglite/data/memfile"),
        Err(Errno::EXDEV)
    );
    assert_eq!(
        vfs.renameat(AT_FDCWD, b"/pglite/data/pg_wal/moved", AT_FDCWD, b"/tmp/moved"),
        Err(Errno::EXDEV)
    );
    assert_eq!(
        vfs.linkat(AT_FDCWD, b"/tmp/memfile", AT_FDCWD, b"/pglite/data/l", 0),
        Err(Errno::EXDEV)
    );
    assert_eq!(
        vfs.renameat(AT_FDCWD, b"/pglite/data", AT_FDCWD, b"/pglite/other"),
        Err(Errno::EBUSY)
    );
    assert_eq!(
        vfs.unlinkat(AT_FDCWD, b"/pglite/data", AT_REMOVEDIR),
        Err(Errno::EBUSY)
    );

    // Listing: real directory plus "." and "..".
    let fd = vfs
        .openat(AT_FDCWD, b"/pglite/data", O_RDONLY | O_DIRECTORY, 0)
        .unwrap();
    let entries = vfs.getdents(fd, 100).unwrap();
    assert_eq!(names(&entries), [".", "..", "global", "pg_wal"]);
    assert_eq!(entries[1].ino, vfs.statat(AT_FDCWD, b"/pglite", 0).unwrap().ino);
    assert_eq!(entries[2].kind, FileKind::Directory);
    std::fs::write(dir.path().join("added"), b"").unwrap();
    vfs.seek(fd, 0, SEEK_SET).unwrap();
    let entries = vfs.getdents(fd, 100).unwrap();
    assert_eq!(names(&entries), [".", "..", "added", "global", "pg_wal"]);
    assert_eq!(entries[2].kind, FileKind::Regular);

    // fsync in Durable mode really syncs (files and directories).
    let wal = vfs
        .openat(AT_FDCWD, b"/pglite/data/pg_wal/moved", O_RDWR, 0)
        .unwrap();
    vfs.pwrite(wal, b"durable", 0).unwrap();
    assert_eq!(vfs.fsync(wal), Ok(()));
    assert_eq!(vfs.fdatasync(wal), Ok(()));
    assert_eq!(vfs.fsync(fd), Ok(()));
    assert_eq!(
        std::fs::read(dir.path().join("pg_wal/moved")).unwrap(),
        b"durable"
    );
}

#[test]
fn host_mount_boundaries() {
    let (mut vfs, dir) = mounted(Durability::Relaxed);
    std::fs::create_dir(dir.path().join("sub")).unwrap();
    // `..` at the mount root goes back to the in-memory parent, however often it is repeated.
    let pglite = vfs.statat(AT_FDCWD, b"/pglite", 0).unwrap();
    assert_eq!(
        vfs.statat(AT_FDCWD, b"/pglite/data/..", 0).unwrap().ino,
        pglite.ino
    );
    assert_eq!(
        vfs.statat(AT_FDCWD, b"/pglite/data/sub/../..", 0).unwrap().ino,
        pglite.ino
    );
    vfs.chdir(b"/pglite/data/sub").unwrap();
    assert_eq!(vfs.getcwd(), b"/pglite/data/sub");
    vfs.chdir(b"../../..").unwrap();
    assert_eq!(vfs.getcwd(), b"/");
    let root = vfs.statat(AT_FDCWD, b"/", 0).unwrap();
    assert_eq!(
        vfs.statat(AT_FDCWD, b"/pglite/data/../../../../..", 0)
            .unwrap()
            .ino,
        root.ino
    );

    // Symbolic links on the mount are resolved through the VFS, not the host.
    vfs.write_file("/tmp/outside", b"vfs file", 0o644).unwrap();
    vfs.symlinkat(b"/tmp/outside", AT_FDCWD, b"/pglite/data/abs")
        .unwrap();
    assert_eq!(
        std::fs::read_link(dir.path().join("abs")).unwrap(),
        Path::new("/tmp/outside")
    );
    assert_eq!(vfs.read_file("/pglite/data/abs").unwrap(), b"vfs file");
    vfs.symlinkat(b"../../../tmp/outside", AT_FDCWD, b"/pglite/data/sub/rel")
        .unwrap();
    assert_eq!(vfs.read_file("/pglite/data/sub/rel").unwrap(), b"vfs file");
    assert_eq!(
        vfs.readlinkat(AT_FDCWD, b"/pglite/data/sub/rel").unwrap(),
        b"../../../tmp/outside"
    );
    vfs.symlinkat(b"sub", AT_FDCWD, b"/pglite/data/tblspc").unwrap();
    vfs.write_file("/pglite/data/tblspc/f", b"via link", 0o600)
        .unwrap();
    assert_eq!(std::fs::read(dir.path().join("sub/f")).unwrap(), b"via link");
    vfs.symlinkat(b"loop", AT_FDCWD, b"/pglite/data/loop").unwrap();
    assert_eq!(vfs.statat(AT_FDCWD, b"/pglite/data/loop", 0), Err(Errno::ELOOP));

    // Mounting twice, on the root, or inside a mount is refused.
    let other = TempDir::new();
    assert_eq!(
        vfs.mount_host_dir("/pglite/data", other.path(), Durability::Relaxed),
        Err(Errno::EBUSY)
    );
    assert_eq!(
        vfs.mount_host_dir("/", other.path(), Durability::Relaxed),
        Err(Errno::EBUSY)
    );
    assert_eq!(
        vfs.mount_host_dir("/pglite/data/sub", other.path(), Durability::Relaxed),
        Err(Errno::EBUSY)
    );
    assert_eq!(
        vfs.mount_host_dir("/pglite/data/new/dir", other.path(), Durability::Relaxed),
        Err(Errno::EBUSY)
    );
    assert!(!dir.path().join("new").exists(), "nothing created on the host");
    assert_eq!(
        vfs.mount_host_dir("/elsewhere", &other.path().join("missing"), Durability::Relaxed),
        Err(Errno::ENOENT)
    );
    // A second mount gets its own device number; moving between mounts is EXDEV.
    vfs.mount_host_dir("/mnt/two", other.path(), Durability::Relaxed)
        .unwrap();
    vfs.write_file("/mnt/two/x", b"", 0o600).unwrap();
    assert_eq!(vfs.statat(AT_FDCWD, b"/mnt/two/x", 0).unwrap().dev, 3);
    assert_eq!(
        vfs.renameat(AT_FDCWD, b"/mnt/two/x", AT_FDCWD, b"/pglite/data/x"),
        Err(Errno::EXDEV)
    );
}

#[test]
fn dot_dot_of_a_removed_working_directory_does_not_exist() {
    let mut vfs = Vfs::new();
    vfs.create_dir_all("/a/b", 0o755).unwrap();
    vfs.chdir(b"/a/b").unwrap();
    vfs.unlinkat(AT_FDCWD, b"/a/b", AT_REMOVEDIR).unwrap();
    vfs.unlinkat(AT_FDCWD, b"/a", AT_REMOVEDIR).unwrap();
    assert_eq!(vfs.statat(AT_FDCWD, b"..", 0).unwrap_err(), Errno::ENOENT);
    assert_eq!(vfs.statat(AT_FDCWD, b"../x", 0).unwrap_err(), Errno::ENOENT);
    assert!(
        vfs.statat(AT_FDCWD, b".", 0).is_ok(),
        "the directory itself is still open"
    );
    vfs.chdir(b"/").unwrap();
    assert!(vfs.statat(AT_FDCWD, b"..", 0).is_ok());
}
