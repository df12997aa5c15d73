//! Snapshots of a memory-only [`Vfs`] as bytes, to reuse a booted instance's file system across
//! processes.
//!
//! [`Vfs::write_snapshot`] records exactly the state [`Vfs::fork`] copies: every node of the
//! in-memory tree with its inode number (arena slot), permission bits, link and open counts,
//! timestamps and contents; the free slots in their reuse order (so the next inode numbers are
//! the same); the descriptor table with every open file description (target, flags, position,
//! `getdents` listing, sharing between descriptors, `FD_CLOEXEC`), including descriptions of
//! files unlinked while open; the pipes with their buffered bytes; the `/dev/blob` buffers; the
//! working directory and the umask. [`Vfs::read_snapshot`] gives back a file system that behaves
//! exactly like a fork of the original, with two exceptions:
//!
//! * output sinks are closures and cannot be recorded: the read-back file system discards what
//!   the guest writes to fds 1 and 2 until [`Vfs::set_output_sink`] installs new sinks;
//! * nothing is shared copy-on-write with the original (it lives in another process).
//!
//! Open pipes are recorded (with their buffered bytes), not refused. A file system with a host
//! mount is refused ([`SnapshotError::HostMounts`], the snapshot counterpart of `fork`'s
//! `EXDEV`).
//!
//! # Format (version 1)
//!
//! Everything is little-endian. The file starts with the 8-byte magic [`SNAPSHOT_MAGIC`] and the
//! `u32` version, followed by sections, each opening with a 4-byte tag:
//!
//! * `TREE`: the number of node slots (`u32`), then per slot a kind byte (0 free, 1 regular
//!   file, 2 directory, 3 symbolic link, 4 device) and, for a live node, `perm`, `links`,
//!   `open_refs` (`u32` each), atime, mtime, ctime (`i64` seconds, `u32` nanoseconds) and:
//!   a file's size (`u64`), number of chunk slots (`u32`), number of stored chunks (`u32`)
//!   and per stored chunk its index (`u32`), length (`u32`) and bytes (trailing zero bytes are
//!   dropped and all-zero chunks are not written, so holes stay holes); a directory's parent
//!   (`u32`), number of subdirectories (`u32`), number of entries (`u32`) and per entry, in
//!   listing order, the name (`u8` length, bytes) and node (`u32`); a symbolic link's target
//!   (`u32` length, bytes); a device's code (`u8`). Then the free list (`u32` count, `u32`
//!   slots).
//! * `FDES`: the number of descriptor slots (`u32`), per slot 0 (closed) or 1, description
//!   (`u32`), `FD_CLOEXEC` (`u8`); the first possibly free descriptor (`u32`); the number of
//!   description slots (`u32`), per slot 0 (free), 1 (in-memory node, `u32`) or 2 (pipe,
//!   `u32`, end `u8`: 0 read, 1 write), then flags (`u32`), position (`u64`), descriptor
//!   count (`u32`) and the listing (0, or 1, `u32` count, per entry inode `u64`, kind `u8`,
//!   name as `u8` length and bytes); then the free list.
//! * `PIPE`: the number of pipe slots (`u32`), per slot 0 (free) or 1, readers, writers,
//!   buffered length (`u32` each) and bytes; then the free list.
//! * `DEVS`: the `/dev/blob` input and output (`u64` length, bytes each).
//! * `PROC`: the working directory's node (`u32`) and the umask (`u32`).
//! * `END!`, then the SHA-256 of every byte before it (from the magic on).
//!
//! The reader checks the header first, then reads every section, then the checksum, and only
//! then checks that the parts form a consistent file system (link counts against directory
//! entries, open counts against descriptions and the working directory, references to live
//! nodes, descriptions and pipes, and so on), so a damaged or foreign input is an error
//! ([`SnapshotError`]) and never a panic later. Lengths read from the input never allocate more
//! than what the input really holds (plus at most 1 MiB).

use std::collections::VecDeque;
use std::io::{self, BufRead, BufWriter, Write};
use std::sync::Arc;

use sha2::{Digest, Sha256};

use super::device::{Device, DeviceState};
use super::fdtable::{DescId, Description, FdEntry, FdTable, Target};
use super::filedata::{CHUNK_SIZE, Chunk, FileData, MAX_FILE_SIZE};
use super::memory::{DirNode, MemTree, Node, NodeId, NodeKind};
use super::pipe::{PIPE_CAPACITY, Pipe, PipeEnd, PipeTable};
use super::resolve::{Loc, PATH_MAX};
use super::stat::{DirEntry, FileKind, PERMISSION_BITS, Timespec};
use super::{Vfs, fdtable};

/// The first bytes of every snapshot.
pub const SNAPSHOT_MAGIC: [u8; 8] = *b"PGLHVFS\0";

/// The format version this build writes and reads.
pub const SNAPSHOT_VERSION: u32 = 1;

/// Largest piece in which long byte strings are read, so that a damaged length cannot make the
/// reader allocate much more than the input holds.
const READ_PIECE: usize = 1 << 20;

/// Capacity of the writer's buffer.
const WRITE_BUFFER: usize = 1 << 20;

/// Why a snapshot could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// The file system has a host directory mounted, whose files cannot be recorded (the
    /// counterpart of `EXDEV` from [`Vfs::fork`]).
    #[error("cannot snapshot a file system with host directories mounted (EXDEV)")]
    HostMounts,
    /// Reading or writing the underlying stream failed.
    #[error("VFS snapshot I/O: {0}")]
    Io(#[from] io::Error),
    /// The input does not start with [`SNAPSHOT_MAGIC`].
    #[error("not a VFS snapshot: the input starts with {found:02x?}")]
    BadMagic {
        /// The first bytes of the input.
        found: [u8; 8],
    },
    /// The snapshot was written in a format version this build cannot read.
    #[error(
        "VFS snapshot format version {found} is not supported (this build reads version {SNAPSHOT_VERSION})"
    )]
    UnsupportedVersion {
        /// The version in the header.
        found: u32,
    },
    /// The input ended before the snapshot did.
    #[error("VFS snapshot truncated: the input ends inside {section}")]
    Truncated {
        /// The part being read when the input ended.
        section: &'static str,
    },
    /// The bytes do not match the checksum at the end: the snapshot is damaged.
    #[error("VFS snapshot damaged: its SHA-256 checksum does not match")]
    ChecksumMismatch,
    /// The snapshot is well framed but describes something impossible.
    #[error("invalid VFS snapshot ({section}): {reason}")]
    Invalid {
        /// The part where the problem was found.
        section: &'static str,
        /// What is wrong.
        reason: String,
    },
}

#[allow(
    dead_code,
    reason = "the API for snapshot fixtures shared between processes; callers come next"
)]
impl Vfs {
    /// Serialises this memory-only file system to `out` (see the [module docs](self) for what
    /// is recorded and the format): every node and its metadata, file contents (holes stay
    /// holes), the descriptor table with every open file description (positions, flags,
    /// targets, including files unlinked while open), pipes with their buffered bytes, the
    /// working directory, the umask and the `/dev/blob` buffers. Output sinks are not recorded.
    ///
    /// Writes go through a 1 MiB buffer, flushed before returning; `out` need not be buffered.
    /// [`SnapshotError::HostMounts`] if a host directory is mounted (nothing is written then).
    pub fn write_snapshot(&self, out: &mut impl Write) -> Result<(), SnapshotError> {
        if !self.mounts.is_empty() {
            return Err(SnapshotError::HostMounts);
        }
        let Loc::Mem(cwd) = self.cwd else {
            return Err(SnapshotError::HostMounts);
        };
        let mut enc = Encoder {
            out: BufWriter::with_capacity(
                WRITE_BUFFER,
                HashingWriter {
                    inner: out,
                    hasher: Sha256::new(),
                },
            ),
        };
        enc.bytes(&SNAPSHOT_MAGIC)?;
        enc.u32(SNAPSHOT_VERSION)?;

        enc.bytes(b"TREE")?;
        enc.count(self.tree.slots().len())?;
        for slot in self.tree.slots() {
            write_node(&mut enc, slot.as_deref())?;
        }
        enc.ids(self.tree.free_list())?;

        enc.bytes(b"FDES")?;
        enc.count(self.fds.fd_slots().len())?;
        for slot in self.fds.fd_slots() {
            match slot {
                None => enc.u8(0)?,
                Some(entry) => {
                    enc.u8(1)?;
                    enc.u32(entry.desc)?;
                    enc.u8(u8::from(entry.cloexec))?;
                }
            }
        }
        enc.count(self.fds.first_free())?;
        enc.count(self.fds.desc_slots().len())?;
        for slot in self.fds.desc_slots() {
            write_description(&mut enc, slot.as_ref())?;
        }
        enc.ids(self.fds.free_desc_list())?;

        enc.bytes(b"PIPE")?;
        enc.count(self.pipes.slots().len())?;
        for slot in self.pipes.slots() {
            match slot {
                None => enc.u8(0)?,
                Some(pipe) => {
                    enc.u8(1)?;
                    enc.u32(pipe.readers)?;
                    enc.u32(pipe.writers)?;
                    enc.count(pipe.buffer.len())?;
                    let (front, back) = pipe.buffer.as_slices();
                    enc.bytes(front)?;
                    enc.bytes(back)?;
                }
            }
        }
        enc.ids(self.pipes.free_list())?;

        enc.bytes(b"DEVS")?;
        for buffer in [&self.devices.blob_input, &self.devices.blob_output] {
            enc.u64(buffer.len() as u64)?;
            enc.bytes(buffer)?;
        }

        enc.bytes(b"PROC")?;
        enc.u32(cwd)?;
        enc.u32(self.umask)?;
        enc.bytes(b"END!")?;

        let HashingWriter { inner, hasher } = enc.out.into_inner().map_err(|err| err.into_error())?;
        inner.write_all(&hasher.finalize())?;
        inner.flush()?;
        Ok(())
    }

    /// Reads back what [`Vfs::write_snapshot`] wrote. The result behaves exactly like
    /// [`Vfs::fork`] of the original would have, except that no output sinks are set (install
    /// them with [`Vfs::set_output_sink`]; until then writes to fds 1 and 2 are discarded).
    ///
    /// Exactly the snapshot's bytes are consumed from `input`, so a snapshot can be embedded in
    /// a larger stream. A large buffer (`BufReader::with_capacity(1 << 20, file)`) reads a file
    /// fastest. A truncated, damaged or foreign input is an error naming what is wrong.
    pub fn read_snapshot(input: &mut impl BufRead) -> Result<Vfs, SnapshotError> {
        let mut dec = Decoder {
            input,
            hasher: Sha256::new(),
            section: "the header",
        };
        let mut magic = [0u8; 8];
        dec.fill(&mut magic)?;
        if magic != SNAPSHOT_MAGIC {
            return Err(SnapshotError::BadMagic { found: magic });
        }
        let version = dec.u32()?;
        if version != SNAPSHOT_VERSION {
            return Err(SnapshotError::UnsupportedVersion { found: version });
        }

        dec.section(b"TREE", "the node table")?;
        let slots = dec.u32()?;
        let mut nodes = Vec::with_capacity(capped(slots));
        for id in 0..slots {
            nodes.push(read_node(&mut dec, id)?);
        }
        let node_free = dec.ids()?;

        dec.section(b"FDES", "the descriptor table")?;
        let fd_slots = dec.u32()?;
        if fd_slots as usize > fdtable::MAX_FDS {
            return Err(dec.invalid(format!("{fd_slots} descriptor slots")));
        }
        let mut fds = Vec::with_capacity(capped(fd_slots));
        for _ in 0..fd_slots {
            fds.push(match dec.u8()? {
                0 => None,
                1 => Some(FdEntry {
                    desc: dec.u32()?,
                    cloexec: dec.flag()?,
                }),
                tag => return Err(dec.invalid(format!("descriptor tag {tag}"))),
            });
        }
        let first_free = dec.u32()? as usize;
        let desc_slots = dec.u32()?;
        let mut descs = Vec::with_capacity(capped(desc_slots));
        for id in 0..desc_slots {
            descs.push(read_description(&mut dec, id)?);
        }
        let desc_free = dec.ids()?;

        dec.section(b"PIPE", "the pipe table")?;
        let pipe_slots = dec.u32()?;
        let mut pipes = Vec::with_capacity(capped(pipe_slots));
        for id in 0..pipe_slots {
            pipes.push(match dec.u8()? {
                0 => None,
                1 => {
                    let readers = dec.u32()?;
                    let writers = dec.u32()?;
                    let len = dec.u32()?;
                    if len as usize > PIPE_CAPACITY {
                        return Err(dec.invalid(format!("pipe {id} buffers {len} bytes")));
                    }
                    let buffer = VecDeque::from(dec.vec(u64::from(len))?);
                    Some(Pipe {
                        buffer,
                        readers,
                        writers,
                    })
                }
                tag => return Err(dec.invalid(format!("pipe {id}: tag {tag}"))),
            });
        }
        let pipe_free = dec.ids()?;

        dec.section(b"DEVS", "the device buffers")?;
        let len = dec.u64()?;
        let blob_input = dec.vec(len)?;
        let len = dec.u64()?;
        let blob_output = dec.vec(len)?;

        dec.section(b"PROC", "the working directory and umask")?;
        let cwd = dec.u32()?;
        let umask = dec.u32()?;
        dec.section(b"END!", "the checksum")?;
        let computed = std::mem::take(&mut dec.hasher).finalize();
        let mut recorded = [0u8; 32];
        dec.fill(&mut recorded)?;
        if recorded[..] != computed[..] {
            return Err(SnapshotError::ChecksumMismatch);
        }

        let invalid =
            |section: &'static str| move |reason: String| SnapshotError::Invalid { section, reason };
        for (id, node) in nodes.iter().enumerate() {
            if let Some(node) = node
                && let NodeKind::File(data) = &node.kind
            {
                data.check()
                    .map_err(|reason| format!("node {id}: {reason}"))
                    .map_err(invalid("the node table"))?;
            }
        }
        let tree = MemTree::from_parts(nodes, node_free).map_err(invalid("the node table"))?;
        let fds = FdTable::from_parts(fds, first_free, descs, desc_free)
            .map_err(invalid("the descriptor table"))?;
        let pipes = PipeTable::from_parts(pipes, pipe_free).map_err(invalid("the pipe table"))?;
        if umask & !0o777 != 0 {
            return Err(invalid("the umask")(format!("{umask:#o}")));
        }
        check_links(&tree, &fds, &pipes, cwd).map_err(invalid("cross references"))?;
        Ok(Vfs {
            tree,
            mounts: Vec::new(),
            fds,
            pipes,
            devices: DeviceState {
                stdout: None,
                stderr: None,
                blob_input,
                blob_output,
            },
            cwd: Loc::Mem(cwd),
            umask,
        })
    }
}

/// Node kind tags.
const FREE: u8 = 0;
const FILE: u8 = 1;
const DIR: u8 = 2;
const SYMLINK: u8 = 3;
const DEVICE: u8 = 4;

fn write_node<W: Write>(enc: &mut Encoder<W>, node: Option<&Node>) -> io::Result<()> {
    let Some(node) = node else {
        return enc.u8(FREE);
    };
    let tag = match node.kind {
        NodeKind::File(_) => FILE,
        NodeKind::Dir(_) => DIR,
        NodeKind::Symlink(_) => SYMLINK,
        NodeKind::Device(_) => DEVICE,
    };
    enc.u8(tag)?;
    enc.u32(node.perm)?;
    enc.u32(node.links)?;
    enc.u32(node.open_refs)?;
    for time in [node.atime, node.mtime, node.ctime] {
        enc.time(time)?;
    }
    match &node.kind {
        NodeKind::File(data) => {
            // Only what holds a non-zero byte is written: a chunk up to its last non-zero byte.
            let stored: Vec<(usize, &[u8])> = data
                .chunk_slots()
                .iter()
                .enumerate()
                .filter_map(|(index, chunk)| {
                    let chunk = chunk.as_ref()?;
                    let end = chunk.iter().rposition(|&b| b != 0)? + 1;
                    Some((index, &chunk[..end]))
                })
                .collect();
            enc.u64(data.len())?;
            enc.count(data.chunk_slots().len())?;
            enc.count(stored.len())?;
            for (index, bytes) in stored {
                enc.count(index)?;
                enc.count(bytes.len())?;
                enc.bytes(bytes)?;
            }
        }
        NodeKind::Dir(dir) => {
            enc.u32(dir.parent)?;
            enc.u32(dir.subdirs)?;
            enc.count(dir.entries.len())?;
            for (name, &id) in &dir.entries {
                enc.name(name)?;
                enc.u32(id)?;
            }
        }
        NodeKind::Symlink(target) => {
            enc.count(target.len())?;
            enc.bytes(target)?;
        }
        NodeKind::Device(device) => enc.u8(device_code(*device))?,
    }
    Ok(())
}

fn read_node<R: BufRead>(dec: &mut Decoder<'_, R>, id: NodeId) -> Result<Option<Arc<Node>>, SnapshotError> {
    let tag = dec.u8()?;
    if tag == FREE {
        return Ok(None);
    }
    let perm = dec.u32()?;
    if perm & !PERMISSION_BITS != 0 {
        return Err(dec.invalid(format!("node {id}: permission bits {perm:#o}")));
    }
    let links = dec.u32()?;
    let open_refs = dec.u32()?;
    let atime = dec.time()?;
    let mtime = dec.time()?;
    let ctime = dec.time()?;
    let kind = match tag {
        FILE => {
            let len = dec.u64()?;
            if len > MAX_FILE_SIZE {
                return Err(dec.invalid(format!("node {id}: file size {len}")));
            }
            let slots = dec.u32()?;
            if u64::from(slots) > len.div_ceil(CHUNK_SIZE as u64) {
                return Err(dec.invalid(format!("node {id}: {slots} chunk slots for {len} bytes")));
            }
            let mut chunks: Vec<Option<Chunk>> = vec![None; slots as usize];
            let stored = dec.u32()?;
            let mut next = 0;
            for _ in 0..stored {
                let index = dec.u32()?;
                let n = dec.u32()?;
                if index < next || index >= slots {
                    return Err(dec.invalid(format!("node {id}: chunk index {index} out of order")));
                }
                if n == 0 || n as usize > CHUNK_SIZE {
                    return Err(dec.invalid(format!("node {id}: chunk {index} of {n} bytes")));
                }
                chunks[index as usize] = Some(Arc::new(dec.vec(u64::from(n))?));
                next = index + 1;
            }
            NodeKind::File(FileData::from_parts(len, chunks))
        }
        DIR => {
            let parent = dec.u32()?;
            let subdirs = dec.u32()?;
            let count = dec.u32()?;
            let mut dir = DirNode {
                parent,
                subdirs,
                ..DirNode::default()
            };
            let mut last: Option<Box<[u8]>> = None;
            for _ in 0..count {
                let name = dec.name()?;
                let child = dec.u32()?;
                if name.is_empty()
                    || name == b"."
                    || name == b".."
                    || name.contains(&b'/')
                    || name.contains(&0)
                {
                    let shown = String::from_utf8_lossy(&name).into_owned();
                    return Err(dec.invalid(format!("directory {id}: entry name {shown:?}")));
                }
                let name: Box<[u8]> = name.into();
                if last.as_ref().is_some_and(|last| *last >= name) {
                    return Err(dec.invalid(format!("directory {id}: entries out of order or repeated")));
                }
                dir.entries.insert(name.clone(), child);
                last = Some(name);
            }
            NodeKind::Dir(dir)
        }
        SYMLINK => {
            let len = dec.u32()?;
            if len == 0 || len as usize >= PATH_MAX {
                return Err(dec.invalid(format!("symbolic link {id}: target of {len} bytes")));
            }
            NodeKind::Symlink(dec.vec(u64::from(len))?.into())
        }
        DEVICE => {
            let code = dec.u8()?;
            let device =
                device_from_code(code).ok_or_else(|| dec.invalid(format!("device {id}: code {code}")))?;
            NodeKind::Device(device)
        }
        _ => return Err(dec.invalid(format!("node {id}: kind tag {tag}"))),
    };
    Ok(Some(Arc::new(Node {
        kind,
        perm,
        links,
        open_refs,
        atime,
        mtime,
        ctime,
    })))
}

/// Description target tags.
const TARGET_MEM: u8 = 1;
const TARGET_PIPE: u8 = 2;

fn write_description<W: Write>(enc: &mut Encoder<W>, desc: Option<&Description>) -> io::Result<()> {
    let Some(desc) = desc else {
        return enc.u8(FREE);
    };
    match desc.target {
        Target::Mem(id) => {
            enc.u8(TARGET_MEM)?;
            enc.u32(id)?;
        }
        Target::Pipe(id, end) => {
            enc.u8(TARGET_PIPE)?;
            enc.u32(id)?;
            enc.u8(match end {
                PipeEnd::Read => 0,
                PipeEnd::Write => 1,
            })?;
        }
        // Host files exist only under a mount, which `write_snapshot` refused.
        Target::Host(_) => {
            return Err(io::Error::other("a description refers to a host file"));
        }
    }
    enc.u32(desc.flags)?;
    enc.u64(desc.pos)?;
    enc.u32(desc.refs())?;
    match &desc.listing {
        None => enc.u8(0)?,
        Some(entries) => {
            enc.u8(1)?;
            enc.count(entries.len())?;
            for entry in entries {
                enc.u64(entry.ino)?;
                enc.u8(kind_code(entry.kind))?;
                enc.name(&entry.name)?;
            }
        }
    }
    Ok(())
}

fn read_description<R: BufRead>(
    dec: &mut Decoder<'_, R>,
    id: DescId,
) -> Result<Option<Description>, SnapshotError> {
    let target = match dec.u8()? {
        FREE => return Ok(None),
        TARGET_MEM => Target::Mem(dec.u32()?),
        TARGET_PIPE => {
            let pipe = dec.u32()?;
            let end = match dec.u8()? {
                0 => PipeEnd::Read,
                1 => PipeEnd::Write,
                end => return Err(dec.invalid(format!("description {id}: pipe end {end}"))),
            };
            Target::Pipe(pipe, end)
        }
        tag => return Err(dec.invalid(format!("description {id}: target tag {tag}"))),
    };
    let flags = dec.u32()?;
    let pos = dec.u64()?;
    let refs = dec.u32()?;
    let listing = if dec.flag()? {
        let count = dec.u32()?;
        let mut entries = Vec::with_capacity(capped(count));
        for _ in 0..count {
            let ino = dec.u64()?;
            let code = dec.u8()?;
            let kind = kind_from_code(code)
                .ok_or_else(|| dec.invalid(format!("description {id}: file kind {code}")))?;
            let name = dec.name()?;
            entries.push(DirEntry { ino, kind, name });
        }
        Some(entries)
    } else {
        None
    };
    let mut desc = Description::new(target, flags).with_refs(refs);
    desc.pos = pos;
    desc.listing = listing;
    Ok(Some(desc))
}

/// Checks the references between the parts: directory entries, descriptions and the working
/// directory name live nodes; link and open counts, subdirectory counts and parents match;
/// pipe end counts match the descriptions.
fn check_links(tree: &MemTree, fds: &FdTable, pipes: &PipeTable, cwd: NodeId) -> Result<(), String> {
    let slots = tree.slots();
    let live = |id: NodeId| slots.get(id as usize).and_then(Option::as_deref);
    let mut links = vec![0u32; slots.len()];
    let mut open_refs = vec![0u32; slots.len()];
    links[MemTree::ROOT as usize] = 1;
    for (id, node) in slots.iter().enumerate() {
        let Some(node) = node else { continue };
        let NodeKind::Dir(dir) = &node.kind else { continue };
        let mut subdirs = 0;
        for (name, &child) in &dir.entries {
            let name = String::from_utf8_lossy(name);
            let Some(child_node) = live(child) else {
                return Err(format!(
                    "directory {id}: entry {name:?} names missing node {child}"
                ));
            };
            if child == MemTree::ROOT {
                return Err(format!("directory {id}: entry {name:?} names the root"));
            }
            links[child as usize] += 1;
            if let NodeKind::Dir(child_dir) = &child_node.kind {
                subdirs += 1;
                if child_dir.parent as usize != id {
                    return Err(format!(
                        "directory {child} ({name:?} in {id}) records parent {}",
                        child_dir.parent
                    ));
                }
            }
        }
        if subdirs != dir.subdirs {
            return Err(format!(
                "directory {id} records {} subdirectories but has {subdirs}",
                dir.subdirs
            ));
        }
        if dir.parent as usize >= slots.len() {
            return Err(format!("directory {id}: parent {} past the arena", dir.parent));
        }
        if node.links == 0 && !dir.entries.is_empty() {
            return Err(format!("removed directory {id} still has entries"));
        }
    }
    // Named directories form one tree under the root (no cycles cut off from it), which the
    // walks up through parents (`path_of`, `is_ancestor`) rely on.
    let mut reached = vec![false; slots.len()];
    let mut pending = vec![MemTree::ROOT];
    while let Some(id) = pending.pop() {
        reached[id as usize] = true;
        if let Some(Node {
            kind: NodeKind::Dir(dir),
            ..
        }) = live(id)
        {
            pending.extend(
                dir.entries
                    .values()
                    .filter(|&&child| matches!(live(child).map(|n| &n.kind), Some(NodeKind::Dir(_))))
                    .filter(|&&child| !reached[child as usize]),
            );
        }
    }
    if tree.parent(MemTree::ROOT) != MemTree::ROOT {
        return Err("the root's parent is not the root".into());
    }
    for (id, node) in slots.iter().enumerate() {
        if let Some(node) = node
            && matches!(node.kind, NodeKind::Dir(_))
            && node.links > 0
            && !reached[id]
        {
            return Err(format!("directory {id} is not reachable from the root"));
        }
    }
    for (index, desc) in fds.desc_slots().iter().enumerate() {
        match desc.as_ref().map(|desc| &desc.target) {
            Some(Target::Mem(id)) => match live(*id) {
                Some(_) => open_refs[*id as usize] += 1,
                None => return Err(format!("description {index} refers to missing node {id}")),
            },
            Some(Target::Pipe(id, _)) if pipes.slots().get(*id as usize).is_none_or(Option::is_none) => {
                return Err(format!("description {index} refers to missing pipe {id}"));
            }
            Some(Target::Host(_)) => return Err(format!("description {index} refers to a host file")),
            _ => {}
        }
    }
    match live(cwd) {
        Some(node) if matches!(node.kind, NodeKind::Dir(_)) => open_refs[cwd as usize] += 1,
        _ => return Err(format!("the working directory {cwd} is not a live directory")),
    }
    for (id, node) in slots.iter().enumerate() {
        let Some(node) = node else { continue };
        if node.links != links[id] {
            return Err(format!(
                "node {id} records {} links but {} entries name it",
                node.links, links[id]
            ));
        }
        if node.open_refs != open_refs[id] {
            return Err(format!(
                "node {id} records {} open references but {} were found",
                node.open_refs, open_refs[id]
            ));
        }
        if node.links == 0 && node.open_refs == 0 {
            return Err(format!("node {id} is neither named nor open"));
        }
        if matches!(node.kind, NodeKind::Dir(_)) && node.links > 1 {
            return Err(format!("directory {id} has {} names", node.links));
        }
    }
    for (id, pipe) in pipes.slots().iter().enumerate() {
        let Some(pipe) = pipe else { continue };
        let ends = |end: PipeEnd| {
            fds.desc_slots()
                .iter()
                .flatten()
                .filter(|desc| matches!(desc.target, Target::Pipe(p, e) if p as usize == id && e == end))
                .count()
        };
        let (readers, writers) = (ends(PipeEnd::Read), ends(PipeEnd::Write));
        if pipe.readers as usize != readers || pipe.writers as usize != writers {
            return Err(format!(
                "pipe {id} records {} readers and {} writers but {readers} and {writers} are open",
                pipe.readers, pipe.writers
            ));
        }
    }
    Ok(())
}

fn device_code(device: Device) -> u8 {
    match device {
        Device::Null => 0,
        Device::Zero => 1,
        Device::Tty => 2,
        Device::Random => 3,
        Device::Stdin => 4,
        Device::Stdout => 5,
        Device::Stderr => 6,
        Device::Blob => 7,
    }
}

fn device_from_code(code: u8) -> Option<Device> {
    Some(match code {
        0 => Device::Null,
        1 => Device::Zero,
        2 => Device::Tty,
        3 => Device::Random,
        4 => Device::Stdin,
        5 => Device::Stdout,
        6 => Device::Stderr,
        7 => Device::Blob,
        _ => return None,
    })
}

fn kind_code(kind: FileKind) -> u8 {
    match kind {
        FileKind::Regular => 0,
        FileKind::Directory => 1,
        FileKind::Symlink => 2,
        FileKind::CharDevice => 3,
        FileKind::Fifo => 4,
    }
}

fn kind_from_code(code: u8) -> Option<FileKind> {
    Some(match code {
        0 => FileKind::Regular,
        1 => FileKind::Directory,
        2 => FileKind::Symlink,
        3 => FileKind::CharDevice,
        4 => FileKind::Fifo,
        _ => return None,
    })
}

/// A capacity to reserve for `count` items read from the input: no more than a few thousand
/// before the items have really been read.
fn capped(count: u32) -> usize {
    (count as usize).min(4096)
}

/// Passes bytes on and hashes what was accepted.
struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// The writing half: little-endian fields into a buffered, hashing writer.
struct Encoder<W: Write> {
    out: BufWriter<HashingWriter<W>>,
}

impl<W: Write> Encoder<W> {
    fn bytes(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.out.write_all(bytes)
    }

    fn u8(&mut self, value: u8) -> io::Result<()> {
        self.bytes(&[value])
    }

    fn u32(&mut self, value: u32) -> io::Result<()> {
        self.bytes(&value.to_le_bytes())
    }

    fn u64(&mut self, value: u64) -> io::Result<()> {
        self.bytes(&value.to_le_bytes())
    }

    fn time(&mut self, (secs, nanos): Timespec) -> io::Result<()> {
        self.bytes(&secs.to_le_bytes())?;
        self.u32(nanos)
    }

    /// A count or index that the format stores as `u32`.
    fn count(&mut self, value: usize) -> io::Result<()> {
        let value = u32::try_from(value)
            .map_err(|_| io::Error::other(format!("{value} does not fit the snapshot's 32-bit field")))?;
        self.u32(value)
    }

    /// A name of at most 255 bytes, with its length as one byte.
    fn name(&mut self, name: &[u8]) -> io::Result<()> {
        let len =
            u8::try_from(name.len()).map_err(|_| io::Error::other("a file name longer than 255 bytes"))?;
        self.u8(len)?;
        self.bytes(name)
    }

    /// A free list: count and ids.
    fn ids(&mut self, ids: &[u32]) -> io::Result<()> {
        self.count(ids.len())?;
        ids.iter().try_for_each(|&id| self.u32(id))
    }
}

/// The reading half: little-endian fields from a buffered input, hashed as they are read.
struct Decoder<'a, R: BufRead> {
    input: &'a mut R,
    hasher: Sha256,
    /// What is being read, for errors.
    section: &'static str,
}

impl<R: BufRead> Decoder<'_, R> {
    fn invalid(&self, reason: String) -> SnapshotError {
        SnapshotError::Invalid {
            section: self.section,
            reason,
        }
    }

    /// Passes up to `max` (> 0) of the next input bytes to `sink`, hashes and consumes them;
    /// returns how many there were. `Truncated` at the end of the input.
    fn take(&mut self, max: usize, sink: impl FnOnce(&[u8])) -> Result<usize, SnapshotError> {
        let buf = loop {
            match self.input.fill_buf() {
                Ok(buf) => break buf,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                Err(err) => return Err(SnapshotError::Io(err)),
            }
        };
        if buf.is_empty() {
            return Err(SnapshotError::Truncated {
                section: self.section,
            });
        }
        let n = buf.len().min(max);
        self.hasher.update(&buf[..n]);
        sink(&buf[..n]);
        self.input.consume(n);
        Ok(n)
    }

    fn fill(&mut self, out: &mut [u8]) -> Result<(), SnapshotError> {
        let mut done = 0;
        while done < out.len() {
            let rest = &mut out[done..];
            done += self.take(rest.len(), |bytes| rest[..bytes.len()].copy_from_slice(bytes))?;
        }
        Ok(())
    }

    /// `len` bytes, allocated as they arrive.
    fn vec(&mut self, len: u64) -> Result<Vec<u8>, SnapshotError> {
        let len = usize::try_from(len).map_err(|_| self.invalid(format!("a length of {len} bytes")))?;
        let mut out = Vec::with_capacity(len.min(READ_PIECE));
        while out.len() < len {
            self.take(len - out.len(), |bytes| out.extend_from_slice(bytes))?;
        }
        Ok(out)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], SnapshotError> {
        let mut out = [0u8; N];
        self.fill(&mut out)?;
        Ok(out)
    }

    fn u8(&mut self) -> Result<u8, SnapshotError> {
        Ok(self.array::<1>()?[0])
    }

    fn flag(&mut self) -> Result<bool, SnapshotError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            other => Err(self.invalid(format!("flag byte {other}"))),
        }
    }

    fn u32(&mut self) -> Result<u32, SnapshotError> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64, SnapshotError> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    fn time(&mut self) -> Result<Timespec, SnapshotError> {
        let secs = i64::from_le_bytes(self.array()?);
        Ok((secs, self.u32()?))
    }

    fn name(&mut self) -> Result<Vec<u8>, SnapshotError> {
        let len = self.u8()?;
        self.vec(u64::from(len))
    }

    fn ids(&mut self) -> Result<Vec<u32>, SnapshotError> {
        let count = self.u32()?;
        let mut ids = Vec::with_capacity(capped(count));
        for _ in 0..count {
            ids.push(self.u32()?);
        }
        Ok(ids)
    }

    /// Reads a section tag, which must be `tag`; errors from here on name `section`.
    fn section(&mut self, tag: &[u8; 4], section: &'static str) -> Result<(), SnapshotError> {
        self.section = section;
        let found = self.array::<4>()?;
        if &found != tag {
            return Err(self.invalid(format!(
                "expected section {:?}, found {:?}",
                String::from_utf8_lossy(tag),
                String::from_utf8_lossy(&found)
            )));
        }
        Ok(())
    }
}
