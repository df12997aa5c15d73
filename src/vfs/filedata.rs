//! Contents of an in-memory regular file: chunks of at most [`CHUNK_SIZE`] bytes shared
//! copy-on-write between forks, with never-written (all-zero) chunks not stored at all.
//!
//! Cloning a [`FileData`] copies one pointer per stored chunk. A write copies a shared chunk the
//! first time it touches it ([`Arc::make_mut`]); reads and writes at arbitrary offsets cost
//! O(bytes touched) and do not allocate unless a chunk is created, grown or copied. A chunk only
//! holds bytes up to the last one written in it (growing geometrically), so a small file takes
//! about its size, not a whole chunk.

use std::sync::Arc;

use super::errno::{Errno, VfsResult};

/// Largest size of one chunk of file data.
pub const CHUNK_SIZE: usize = 64 * 1024;

/// Largest size an in-memory file may reach (writes or truncation beyond it fail with `EFBIG`).
pub const MAX_FILE_SIZE: u64 = 1 << 36;

const CHUNK: u64 = CHUNK_SIZE as u64;

/// One chunk: the bytes from its start up to the last one written; the rest reads as zeros.
pub(super) type Chunk = Arc<Vec<u8>>;

/// The bytes of an in-memory file.
///
/// Invariants: no chunk is longer than [`CHUNK_SIZE`], and every stored byte at or beyond `len`
/// is zero, so growing the file exposes zeros without touching the chunks.
#[derive(Clone, Debug, Default)]
pub struct FileData {
    len: u64,
    /// Chunk `i` holds bytes from `i * CHUNK_SIZE`. `None`, or an index past the end of the
    /// vector, means all zeros.
    chunks: Vec<Option<Chunk>>,
}

impl FileData {
    /// A file holding `data`; all-zero chunks are not stored.
    pub fn from_bytes(data: &[u8]) -> FileData {
        let mut file = FileData::default();
        file.write_at(data, 0)
            .expect("in-memory data larger than the maximum file size");
        file
    }

    /// File size in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the file is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Number of chunks that hold real memory.
    #[cfg(test)]
    pub fn stored_chunks(&self) -> usize {
        self.chunks.iter().filter(|chunk| chunk.is_some()).count()
    }

    /// Visits every stored chunk (for memory accounting across forks).
    pub fn for_each_chunk(&self, visit: impl FnMut(&Chunk)) {
        self.chunks.iter().flatten().for_each(visit);
    }

    /// The chunk slots (`None` for an all-zero chunk), for snapshots.
    pub(super) fn chunk_slots(&self) -> &[Option<Chunk>] {
        &self.chunks
    }

    /// File contents from a size and chunk slots a snapshot recorded, unchecked: call
    /// [`FileData::check`] before using them.
    pub(super) fn from_parts(len: u64, chunks: Vec<Option<Chunk>>) -> FileData {
        FileData { len, chunks }
    }

    /// Checks the invariants (for contents read from a snapshot): the size is at most
    /// [`MAX_FILE_SIZE`], no chunk is longer than [`CHUNK_SIZE`] or lies past the end of the
    /// file, and every stored byte at or beyond the size is zero.
    pub(super) fn check(&self) -> Result<(), String> {
        let len = self.len;
        if len > MAX_FILE_SIZE {
            return Err(format!("file size {len} exceeds the maximum {MAX_FILE_SIZE}"));
        }
        if self.chunks.len() as u64 > len.div_ceil(CHUNK) {
            return Err(format!(
                "{} chunk slots for a file of {len} bytes",
                self.chunks.len()
            ));
        }
        for (index, chunk) in self.chunks.iter().enumerate() {
            let Some(chunk) = chunk else { continue };
            if chunk.len() > CHUNK_SIZE {
                return Err(format!("chunk {index} holds {} bytes", chunk.len()));
            }
            let start = index as u64 * CHUNK;
            let inside = usize::try_from(len.saturating_sub(start)).unwrap_or(usize::MAX);
            if chunk.iter().skip(inside).any(|&b| b != 0) {
                return Err(format!("chunk {index} holds data past the file size {len}"));
            }
        }
        Ok(())
    }

    /// Copies bytes from `offset` into `buf`; returns how many were copied (short at the end of
    /// the file, 0 at or past it).
    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> usize {
        if offset >= self.len {
            return 0;
        }
        let total = usize::try_from(self.len - offset).map_or(buf.len(), |left| left.min(buf.len()));
        let mut done = 0;
        while done < total {
            let pos = offset + done as u64;
            let (index, within) = split(pos);
            let n = (CHUNK_SIZE - within).min(total - done);
            let out = &mut buf[done..done + n];
            let stored = match self.chunks.get(index).and_then(Option::as_ref) {
                Some(chunk) if within < chunk.len() => {
                    let stored = n.min(chunk.len() - within);
                    out[..stored].copy_from_slice(&chunk[within..within + stored]);
                    stored
                }
                _ => 0,
            };
            out[stored..].fill(0);
            done += n;
        }
        total
    }

    /// Writes `buf` at `offset`, growing the file if needed; returns `buf.len()`.
    pub fn write_at(&mut self, buf: &[u8], offset: u64) -> VfsResult<usize> {
        let end = offset
            .checked_add(buf.len() as u64)
            .filter(|&end| end <= MAX_FILE_SIZE)
            .ok_or(Errno::EFBIG)?;
        let mut done = 0;
        while done < buf.len() {
            let pos = offset + done as u64;
            let (index, within) = split(pos);
            let n = (CHUNK_SIZE - within).min(buf.len() - done);
            let src = &buf[done..done + n];
            done += n;
            match self.chunks.get_mut(index).and_then(Option::as_mut) {
                Some(chunk) => {
                    let src = &src[..stored_prefix(chunk.len(), within, src)];
                    // Zeros where the chunk already reads as zeros change nothing.
                    if !src.is_empty() {
                        write_into(Arc::make_mut(chunk), within, src);
                    }
                }
                None => {
                    let src = &src[..stored_prefix(0, within, src)];
                    if src.is_empty() {
                        continue;
                    }
                    if self.chunks.len() <= index {
                        self.chunks.resize(index + 1, None);
                    }
                    let mut bytes = Vec::new();
                    write_into(&mut bytes, within, src);
                    self.chunks[index] = Some(Arc::new(bytes));
                }
            }
        }
        self.len = self.len.max(end);
        Ok(buf.len())
    }

    /// Sets the file size; bytes beyond a shrunk size are dropped, a grown file reads zeros.
    pub fn set_len(&mut self, len: u64) -> VfsResult<()> {
        if len > MAX_FILE_SIZE {
            return Err(Errno::EFBIG);
        }
        if len < self.len {
            let (index, within) = split(len);
            self.chunks.truncate(index + usize::from(within > 0));
            if within > 0
                && let Some(Some(chunk)) = self.chunks.get_mut(index)
                && chunk.len() > within
            {
                if Arc::get_mut(chunk).is_some() {
                    Arc::make_mut(chunk).truncate(within);
                } else {
                    // Shared with a fork: copy only the part that stays.
                    *chunk = Arc::new(chunk[..within].to_vec());
                }
            }
            while self.chunks.last().is_some_and(Option::is_none) {
                self.chunks.pop();
            }
        }
        self.len = len;
        Ok(())
    }

    /// The whole contents as one vector.
    pub fn to_vec(&self) -> Vec<u8> {
        let len = usize::try_from(self.len).expect("file larger than the address space");
        let mut out = vec![0u8; len];
        self.read_at(&mut out, 0);
        out
    }
}

/// Copies `src` into a chunk at `within`, extending it with zeros first if needed. A new chunk
/// is allocated at exactly the size needed; later growth doubles, never beyond [`CHUNK_SIZE`].
fn write_into(chunk: &mut Vec<u8>, within: usize, src: &[u8]) {
    let needed = within + src.len();
    debug_assert!(needed <= CHUNK_SIZE);
    if needed > chunk.capacity() {
        let target = needed.max(chunk.capacity() * 2).min(CHUNK_SIZE);
        chunk.reserve_exact(target - chunk.len());
    }
    // Bytes past the stored ones are appended, not zeroed first and then overwritten.
    let overlap = chunk.len().saturating_sub(within).min(src.len());
    if within > chunk.len() {
        chunk.resize(within, 0);
    }
    chunk[within..within + overlap].copy_from_slice(&src[..overlap]);
    chunk.extend_from_slice(&src[overlap..]);
}

/// How much of `src`, written at `within` into a chunk holding `stored` bytes, must really be
/// stored: everything that overlaps the stored bytes, and beyond them up to the last non-zero
/// byte (the chunk reads zeros past its end anyway).
fn stored_prefix(stored: usize, within: usize, src: &[u8]) -> usize {
    let overlap = stored.saturating_sub(within).min(src.len());
    if overlap == src.len() {
        return overlap;
    }
    overlap + nonzero_prefix(&src[overlap..])
}

/// The length of `bytes` up to and including its last non-zero byte (0 if all are zero). Whole
/// zero pages are common (Postgres zero-fills every new WAL segment and relation page), so the
/// search skips zeros 16 bytes at a time.
fn nonzero_prefix(bytes: &[u8]) -> usize {
    let mut end = bytes.len();
    while end >= 16 {
        let block: [u8; 16] = bytes[end - 16..end].try_into().expect("16 bytes");
        if u128::from_ne_bytes(block) != 0 {
            break;
        }
        end -= 16;
    }
    bytes[..end]
        .iter()
        .rposition(|&b| b != 0)
        .map_or(0, |last| last + 1)
}

/// Chunk index and offset within it of a file position.
fn split(pos: u64) -> (usize, usize) {
    let index = usize::try_from(pos / CHUNK).expect("chunk index fits in usize");
    (index, (pos % CHUNK) as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_write_across_chunks() {
        let mut file = FileData::default();
        let data: Vec<u8> = (0..3 * CHUNK_SIZE).map(|i| (i % 251) as u8 + 1).collect();
        file.write_at(&data, 100).unwrap();
        assert_eq!(file.len(), 100 + data.len() as u64);
        let mut back = vec![0u8; data.len() + 200];
        let n = file.read_at(&mut back, 0);
        assert_eq!(n, data.len() + 100);
        assert!(back[..100].iter().all(|&b| b == 0));
        assert_eq!(&back[100..n], &data[..]);
        assert_eq!(file.stored_chunks(), 4);
        // The last chunk holds only what was written into it.
        let last = file.chunks[3].as_ref().unwrap();
        assert_eq!(last.len(), 100);
    }

    #[test]
    fn small_files_take_about_their_size() {
        let file = FileData::from_bytes(&[1u8; 100]);
        let chunk = file.chunks[0].as_ref().unwrap();
        assert_eq!(chunk.len(), 100);
        assert!(chunk.capacity() < 200);
        let mut grown = file.clone();
        for page in 0..8u64 {
            grown.write_at(&[2u8; 8192], page * 8192).unwrap();
        }
        let chunk = grown.chunks[0].as_ref().unwrap();
        assert_eq!(chunk.len(), CHUNK_SIZE);
        assert!(chunk.capacity() <= CHUNK_SIZE);
        assert_eq!(
            file.to_vec(),
            vec![1u8; 100],
            "the clone's growth did not leak back"
        );
    }

    #[test]
    fn sparse_file_stores_only_written_chunks() {
        let mut file = FileData::default();
        file.set_len(16 << 20).unwrap();
        assert_eq!(file.stored_chunks(), 0);
        file.write_at(&[7u8; 8192], 5 << 20).unwrap();
        assert_eq!(file.stored_chunks(), 1);
        // Writing zeros into a hole keeps it a hole.
        file.write_at(&[0u8; 8192], 9 << 20).unwrap();
        assert_eq!(file.stored_chunks(), 1);
        assert_eq!(file.len(), 16 << 20);
        let mut page = [1u8; 8192];
        assert_eq!(file.read_at(&mut page, 9 << 20), 8192);
        assert!(page.iter().all(|&b| b == 0));
    }

    #[test]
    fn zero_chunks_of_initial_data_stay_sparse() {
        let mut data = vec![0u8; 4 * CHUNK_SIZE];
        data[CHUNK_SIZE + 5] = 1;
        let file = FileData::from_bytes(&data);
        assert_eq!(file.stored_chunks(), 1);
        assert_eq!(file.to_vec(), data);
    }

    #[test]
    fn clones_share_chunks_until_written() {
        let mut original = FileData::from_bytes(&[1u8; 2 * CHUNK_SIZE]);
        let mut copy = original.clone();
        let shared = |file: &FileData, index: usize| Arc::strong_count(file.chunks[index].as_ref().unwrap());
        assert_eq!((shared(&original, 0), shared(&original, 1)), (2, 2));
        copy.write_at(b"copy", 10).unwrap();
        // Only the written chunk was copied; the other one is still shared.
        assert_eq!((shared(&original, 0), shared(&original, 1)), (1, 2));
        original.write_at(b"orig", CHUNK_SIZE as u64 + 10).unwrap();
        assert_eq!((shared(&copy, 0), shared(&copy, 1)), (1, 1));
        let mut buf = [0u8; 4];
        original.read_at(&mut buf, 10);
        assert_eq!(&buf, &[1, 1, 1, 1]);
        copy.read_at(&mut buf, CHUNK_SIZE as u64 + 10);
        assert_eq!(&buf, &[1, 1, 1, 1]);
        copy.read_at(&mut buf, 10);
        assert_eq!(&buf, b"copy");
        original.read_at(&mut buf, CHUNK_SIZE as u64 + 10);
        assert_eq!(&buf, b"orig");
    }

    #[test]
    fn shrinking_zeroes_the_tail_for_later_growth() {
        let mut file = FileData::from_bytes(&[9u8; 100]);
        file.set_len(10).unwrap();
        file.set_len(100).unwrap();
        let mut buf = [0xffu8; 100];
        assert_eq!(file.read_at(&mut buf, 0), 100);
        assert!(buf[..10].iter().all(|&b| b == 9));
        assert!(buf[10..].iter().all(|&b| b == 0));
        file.set_len(0).unwrap();
        assert_eq!(file.stored_chunks(), 0);
    }

    #[test]
    fn shrinking_a_shared_chunk_does_not_touch_the_other_copy() {
        let mut file = FileData::from_bytes(&[3u8; 100]);
        let copy = file.clone();
        file.set_len(50).unwrap();
        assert_eq!(copy.to_vec(), vec![3u8; 100]);
        assert_eq!(file.to_vec(), vec![3u8; 50]);
    }

    #[test]
    fn trailing_zeros_are_not_stored() {
        let mut page = [0u8; 8192];
        page[..10].fill(4);
        let mut file = FileData::from_bytes(&page);
        assert_eq!(file.len(), 8192);
        assert_eq!(file.chunks[0].as_ref().unwrap().len(), 10);
        // Zeros over stored bytes are real writes.
        file.write_at(&[0u8; 4], 2).unwrap();
        assert_eq!(file.to_vec()[..10], [4, 4, 0, 0, 0, 0, 4, 4, 4, 4]);
        assert_eq!(stored_prefix(10, 8, &[0, 0, 0, 0]), 2);
        assert_eq!(stored_prefix(10, 8, &[0, 0, 0, 5]), 4);
        assert_eq!(stored_prefix(0, 8, &[0, 0]), 0);
        assert_eq!(stored_prefix(20, 8, &[0, 0]), 2);
    }

    #[test]
    fn random_writes_truncations_and_forks_read_back_as_a_plain_vector_would() {
        // xorshift64: the same sequence on every run.
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = move |bound: u64| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state % bound
        };
        let (mut file, mut model) = (FileData::default(), Vec::<u8>::new());
        let mut forks = Vec::new();
        for step in 0..3000 {
            match next(10) {
                0 => {
                    let len = next(3 * CHUNK) as usize;
                    file.set_len(len as u64).unwrap();
                    model.resize(len, 0);
                }
                1 => forks.push((file.clone(), model.clone())),
                _ => {
                    let offset = next(3 * CHUNK) as usize;
                    let longest = if next(4) == 0 { CHUNK + 100 } else { 300 };
                    let len = next(longest) as usize;
                    // Runs of zeros and of data, so that both stored and sparse paths are taken.
                    let byte = if next(3) == 0 { 0 } else { next(255) as u8 + 1 };
                    let mut src = vec![byte; len];
                    if len > 0 && next(2) == 0 {
                        let at = next(len as u64) as usize;
                        src[at] = 7;
                    }
                    file.write_at(&src, offset as u64).unwrap();
                    if model.len() < offset + len {
                        model.resize(offset + len, 0);
                    }
                    model[offset..offset + len].copy_from_slice(&src);
                }
            }
            file.check().unwrap_or_else(|e| panic!("step {step}: {e}"));
            assert_eq!(file.to_vec(), model, "step {step}");
        }
        // Writes after a fork never reach it.
        for (fork, model) in forks {
            assert_eq!(fork.to_vec(), model);
        }
    }

    #[test]
    fn the_last_nonzero_byte_is_found_at_any_position() {
        assert_eq!(nonzero_prefix(&[]), 0);
        assert_eq!(nonzero_prefix(&[0u8; 8192]), 0);
        for len in [1, 15, 16, 17, 31, 32, 33, 100, 8192] {
            for at in 0..len {
                let mut bytes = vec![0u8; len];
                bytes[at] = 9;
                assert_eq!(nonzero_prefix(&bytes), at + 1, "byte {at} of {len}");
                bytes[0] = 1;
                assert_eq!(nonzero_prefix(&bytes), at + 1, "byte {at} of {len}, first set");
            }
        }
    }

    #[test]
    fn limits() {
        let mut file = FileData::default();
        assert_eq!(file.write_at(b"x", MAX_FILE_SIZE), Err(Errno::EFBIG));
        assert_eq!(file.set_len(MAX_FILE_SIZE + 1), Err(Errno::EFBIG));
        assert_eq!(file.read_at(&mut [0u8; 4], 10), 0);
    }
}
