//! Snapshots on disk, so that every process of a test run (cargo-nextest starts one per test)
//! opens databases from the same frozen instance instead of booting its own.
//!
//! A saved snapshot is a directory of two files, written under a temporary name and renamed
//! into place whole:
//! * `memory.img`: the linear memory, a sparse file mapped copy-on-write by every instance
//!   restored from it (the page cache is shared between processes);
//! * `state.bin`: a header (magic, version), the instance's globals, table and linker records,
//!   environment and clock, and a SHA-256 of all that; then the filesystem in the format of
//!   `Vfs::write_snapshot` (which carries its own checksum).
//!
//! Damaged or foreign files are refused with the reason; callers then make the snapshot again.

use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Read, Write};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sha2::{Digest, Sha256};

use super::instance::{GlobalValue, InstanceSnapshot};
use super::memory::MemoryImage;
use crate::vfs::Vfs;

const MAGIC: &[u8; 8] = b"PGLHSNAP";
const VERSION: u32 = 1;
const MEMORY_FILE: &str = "memory.img";
const STATE_FILE: &str = "state.bin";

/// Why a saved snapshot cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotFileError {
    /// Reading or writing failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The files are not a snapshot this version wrote, or are damaged.
    #[error("{0}")]
    Invalid(String),
}

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> SnapshotFileError {
    let context = context.into();
    move |source| SnapshotFileError::Io { context, source }
}

/// Writes `snapshot`, with the caller's `label` (what the snapshot is of), as the directory
/// `dir` (atomically: it appears whole or not at all). An existing `dir` is left alone (another
/// process saved the same snapshot first).
pub(crate) fn save(snapshot: &InstanceSnapshot, label: &[u8], dir: &Path) -> Result<(), SnapshotFileError> {
    if dir.exists() {
        return Ok(());
    }
    let parent = dir
        .parent()
        .ok_or_else(|| SnapshotFileError::Invalid(format!("{} has no parent", dir.display())))?;
    std::fs::create_dir_all(parent).map_err(io(format!("cannot create {}", parent.display())))?;
    let tmp = tempfile::Builder::new()
        .prefix(".saving-")
        .tempdir_in(parent)
        .map_err(io(format!("cannot create a directory in {}", parent.display())))?;

    let memory = File::create(tmp.path().join(MEMORY_FILE)).map_err(io("cannot create memory.img"))?;
    snapshot
        .memory
        .copy_to(&memory)
        .map_err(io("cannot write memory.img"))?;
    memory.sync_all().map_err(io("cannot sync memory.img"))?;

    let state = File::create(tmp.path().join(STATE_FILE)).map_err(io("cannot create state.bin"))?;
    let mut out = BufWriter::with_capacity(1 << 20, state);
    let header = encode_header(snapshot, label);
    out.write_all(&header).map_err(io("cannot write state.bin"))?;
    out.write_all(&Sha256::digest(&header))
        .map_err(io("cannot write state.bin"))?;
    let vfs = snapshot
        .vfs
        .lock()
        .map_err(|_| SnapshotFileError::Invalid("the snapshot's filesystem lock is poisoned".into()))?;
    vfs.write_snapshot(&mut out)
        .map_err(|e| SnapshotFileError::Invalid(format!("cannot write the filesystem: {e}")))?;
    drop(vfs);
    let state = out
        .into_inner()
        .map_err(|e| io("cannot write state.bin")(e.into_error()))?;
    state.sync_all().map_err(io("cannot sync state.bin"))?;

    let tmp = tmp.keep();
    match std::fs::rename(&tmp, dir) {
        Ok(()) => Ok(()),
        // Another process won the race with the same snapshot.
        Err(_) if dir.exists() => {
            let _ = std::fs::remove_dir_all(&tmp);
            Ok(())
        }
        Err(e) => {
            let _ = std::fs::remove_dir_all(&tmp);
            Err(io(format!("cannot rename the snapshot into {}", dir.display()))(
                e,
            ))
        }
    }
}

/// Reads the snapshot saved in `dir`, and its label.
pub(crate) fn load(dir: &Path) -> Result<(InstanceSnapshot, Vec<u8>), SnapshotFileError> {
    let state = File::open(dir.join(STATE_FILE))
        .map_err(io(format!("cannot open {}/{STATE_FILE}", dir.display())))?;
    let mut input = BufReader::with_capacity(1 << 20, state);
    let mut fixed = [0u8; 16];
    input
        .read_exact(&mut fixed)
        .map_err(io("cannot read state.bin"))?;
    if &fixed[..8] != MAGIC {
        return Err(SnapshotFileError::Invalid(
            "state.bin is not a pglite-harness snapshot".into(),
        ));
    }
    let version = u32::from_le_bytes(fixed[8..12].try_into().expect("4 bytes"));
    if version != VERSION {
        return Err(SnapshotFileError::Invalid(format!(
            "state.bin has format version {version}, this build reads {VERSION}"
        )));
    }
    let len = u32::from_le_bytes(fixed[12..16].try_into().expect("4 bytes")) as usize;
    if len > 64 << 20 {
        return Err(SnapshotFileError::Invalid(
            "state.bin's header length is implausible".into(),
        ));
    }
    let mut header = fixed.to_vec();
    header.resize(16 + len, 0);
    input
        .read_exact(&mut header[16..])
        .map_err(io("state.bin is truncated"))?;
    let mut digest = [0u8; 32];
    input
        .read_exact(&mut digest)
        .map_err(io("state.bin is truncated"))?;
    if Sha256::digest(&header).as_slice() != digest {
        return Err(SnapshotFileError::Invalid(
            "state.bin is damaged (checksum mismatch)".into(),
        ));
    }
    let (header, label) = decode_header(&header[16..])?;
    let vfs = Vfs::read_snapshot(&mut input)
        .map_err(|e| SnapshotFileError::Invalid(format!("the saved filesystem is unusable: {e}")))?;
    if !input.fill_buf().map_err(io("cannot read state.bin"))?.is_empty() {
        return Err(SnapshotFileError::Invalid(
            "state.bin has bytes after its end".into(),
        ));
    }

    let memory = File::open(dir.join(MEMORY_FILE))
        .map_err(io(format!("cannot open {}/{MEMORY_FILE}", dir.display())))?;
    let memory = MemoryImage::from_file(memory, header.memory_size)
        .map_err(|e| SnapshotFileError::Invalid(format!("memory.img: {e}")))?;
    Ok((header.into_snapshot(Arc::new(memory), vfs), label))
}

fn encode_header(snapshot: &InstanceSnapshot, label: &[u8]) -> Vec<u8> {
    let mut e = Encoder::default();
    e.bytes(label);
    e.u64(snapshot.memory_size as u64);
    e.u32(snapshot.globals.len() as u32);
    for (index, value) in &snapshot.globals {
        e.u32(*index);
        let (tag, bits) = match *value {
            GlobalValue::I32(v) => (0, v as u32 as u64),
            GlobalValue::I64(v) => (1, v as u64),
            GlobalValue::F32(v) => (2, u64::from(v)),
            GlobalValue::F64(v) => (3, v),
        };
        e.u8(tag);
        e.u64(bits);
    }
    e.u32(snapshot.callback_slots.len() as u32);
    for slot in &snapshot.callback_slots {
        e.u32(*slot);
    }
    e.u64(snapshot.table_size);
    snapshot.dylink.encode(&mut e);
    e.u32(snapshot.environ.len() as u32);
    for var in &snapshot.environ {
        e.bytes(var);
    }
    e.u64(snapshot.monotonic.as_nanos() as u64);

    let mut out = MAGIC.to_vec();
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(&(e.0.len() as u32).to_le_bytes());
    out.extend_from_slice(&e.0);
    out
}

/// The fields of `state.bin`'s header: a snapshot but for its memory image and filesystem.
struct Header {
    memory_size: usize,
    globals: Vec<(u32, GlobalValue)>,
    callback_slots: Vec<u32>,
    table_size: u64,
    dylink: super::dylink::DylinkSnapshot,
    environ: Vec<Vec<u8>>,
    monotonic: Duration,
}

impl Header {
    fn into_snapshot(self, memory: Arc<MemoryImage>, vfs: Vfs) -> InstanceSnapshot {
        InstanceSnapshot {
            memory,
            vfs: Mutex::new(vfs),
            memory_size: self.memory_size,
            globals: self.globals,
            callback_slots: self.callback_slots,
            table_size: self.table_size,
            dylink: self.dylink,
            environ: self.environ,
            monotonic: self.monotonic,
        }
    }
}

fn decode_header(bytes: &[u8]) -> Result<(Header, Vec<u8>), SnapshotFileError> {
    let mut d = Decoder(bytes);
    let label = d.bytes()?.to_vec();
    let memory_size = d.u64()? as usize;
    let globals = (0..d.count()?)
        .map(|_| {
            let index = d.u32()?;
            let (tag, bits) = (d.u8()?, d.u64()?);
            let value = match tag {
                0 => GlobalValue::I32(bits as u32 as i32),
                1 => GlobalValue::I64(bits as i64),
                2 => GlobalValue::F32(bits as u32),
                3 => GlobalValue::F64(bits),
                _ => return Err(invalid("a global of unknown type")),
            };
            Ok((index, value))
        })
        .collect::<Result<_, _>>()?;
    let callback_slots = (0..d.count()?).map(|_| d.u32()).collect::<Result<_, _>>()?;
    let table_size = d.u64()?;
    let dylink = super::dylink::DylinkSnapshot::decode(&mut d)?;
    let environ = (0..d.count()?)
        .map(|_| d.bytes().map(<[u8]>::to_vec))
        .collect::<Result<_, _>>()?;
    let monotonic = Duration::from_nanos(d.u64()?);
    if !d.0.is_empty() {
        return Err(invalid("the header has bytes after its end"));
    }
    let header = Header {
        memory_size,
        globals,
        callback_slots,
        table_size,
        dylink,
        environ,
        monotonic,
    };
    Ok((header, label))
}

pub(crate) fn invalid(what: &str) -> SnapshotFileError {
    SnapshotFileError::Invalid(format!("state.bin is damaged: {what}"))
}

/// Little-endian encoding of the header's fields.
#[derive(Default)]
pub(crate) struct Encoder(Vec<u8>);

impl Encoder {
    pub fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    pub fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    pub fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    pub fn bytes(&mut self, v: &[u8]) {
        self.u32(v.len() as u32);
        self.0.extend_from_slice(v);
    }
    pub fn str(&mut self, v: &str) {
        self.bytes(v.as_bytes());
    }
}

/// Reads what [`Encoder`] wrote; running out of bytes is an error, never a panic.
pub(crate) struct Decoder<'a>(&'a [u8]);

impl<'a> Decoder<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], SnapshotFileError> {
        if self.0.len() < n {
            return Err(invalid("the header ends early"));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }
    pub fn u8(&mut self) -> Result<u8, SnapshotFileError> {
        Ok(self.take(1)?[0])
    }
    pub fn u32(&mut self) -> Result<u32, SnapshotFileError> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4 bytes")))
    }
    pub fn u64(&mut self) -> Result<u64, SnapshotFileError> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("8 bytes")))
    }
    /// A count of items that follow, each at least one byte (so a damaged count cannot make a
    /// huge allocation).
    pub fn count(&mut self) -> Result<usize, SnapshotFileError> {
        let n = self.u32()? as usize;
        if n > self.0.len() {
            return Err(invalid("a count exceeds the header"));
        }
        Ok(n)
    }
    pub fn bytes(&mut self) -> Result<&'a [u8], SnapshotFileError> {
        let n = self.u32()? as usize;
        self.take(n)
    }
    pub fn string(&mut self) -> Result<String, SnapshotFileError> {
        String::from_utf8(self.bytes()?.to_vec()).map_err(|_| invalid("a name is not UTF-8"))
    }
}
