//! Linear memories whose initial contents are a file mapped copy-on-write: the host's
//! `MemoryCreator`.
//!
//! The rewritten module writes nothing into its memory at instantiation (see `super::rewrite`),
//! so a new memory can start as any [`MemoryImage`]: the module's data segments laid out (a fresh
//! boot), or the linear memory of a booted instance (a snapshot). The image is a sparse file
//! (a memfd on Linux) mapped `MAP_PRIVATE`, so a new instance costs one `mmap`, pages are shared
//! until written, and only written pages become private memory.
//!
//! Which image the next memory starts from is set per thread with [`with_image`] around an
//! instantiation; memories created without one start zeroed, as the `MemoryCreator` contract asks.

use std::cell::RefCell;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use rustix::mm::{MapFlags, MprotectFlags, ProtFlags};
use wasmtime::{LinearMemory, MemoryCreator, MemoryType};

/// The host page size all mappings are aligned to (wasm pages are 64 KiB, a multiple of it).
const HOST_PAGE: usize = 4096;

/// The initial contents of a linear memory: `len` bytes of a (sparse) file.
pub(crate) struct MemoryImage {
    file: File,
    len: usize,
}

impl std::fmt::Debug for MemoryImage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryImage").field("len", &self.len).finish()
    }
}

impl MemoryImage {
    /// An image of `len` bytes (rounded up to whole host pages) holding `segments` at their
    /// offsets and zeros elsewhere.
    pub fn from_segments(segments: &[(u32, &[u8])], len: usize) -> io::Result<MemoryImage> {
        let len = len.next_multiple_of(HOST_PAGE);
        let file = anonymous_file("pglite-initial-memory")?;
        file.set_len(len as u64)?;
        for &(offset, bytes) in segments {
            if offset as usize + bytes.len() > len {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("a data segment at {offset} ends past the image ({len} bytes)"),
                ));
            }
            file.write_all_at(bytes, u64::from(offset))?;
        }
        Ok(MemoryImage { file, len })
    }

    /// An image of a whole linear memory; only its non-zero pages are written, so the file is as
    /// sparse as the memory.
    pub fn from_memory(memory: &[u8]) -> io::Result<MemoryImage> {
        let file = anonymous_file("pglite-snapshot-memory")?;
        write_sparse(&file, memory)?;
        Ok(MemoryImage {
            file,
            len: memory.len().next_multiple_of(HOST_PAGE),
        })
    }

    /// An image read from `file` (a snapshot on disk): its first `len` bytes.
    pub fn from_file(file: File, len: usize) -> io::Result<MemoryImage> {
        if !len.is_multiple_of(HOST_PAGE) || file.metadata()?.len() < len as u64 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("a memory image of {len} bytes needs a file of at least that many whole pages"),
            ));
        }
        Ok(MemoryImage { file, len })
    }

    /// Copies the image into `out` (a file to keep on disk), sparse where the image is zero.
    pub fn copy_to(&self, out: &File) -> io::Result<()> {
        out.set_len(self.len as u64)?;
        let mut page = vec![0u8; 1 << 20];
        let mut at = 0;
        while at < self.len {
            let n = page.len().min(self.len - at);
            self.file.read_exact_at(&mut page[..n], at as u64)?;
            for (i, chunk) in page[..n].chunks(HOST_PAGE).enumerate() {
                if !is_zero(chunk) {
                    out.write_all_at(chunk, (at + i * HOST_PAGE) as u64)?;
                }
            }
            at += n;
        }
        Ok(())
    }

    /// Reads `out.len()` bytes at `offset` of the image.
    pub fn read_at(&self, out: &mut [u8], offset: usize) -> io::Result<()> {
        self.file.read_exact_at(out, offset as u64)
    }
}

/// Writes the non-zero pages of `memory` into `file` (sized to the memory, page-rounded).
fn write_sparse(file: &File, memory: &[u8]) -> io::Result<()> {
    file.set_len(memory.len().next_multiple_of(HOST_PAGE) as u64)?;
    let mut run_start: Option<usize> = None;
    for (index, page) in memory.chunks(HOST_PAGE).enumerate() {
        let at = index * HOST_PAGE;
        match (is_zero(page), run_start) {
            (false, None) => run_start = Some(at),
            (true, Some(start)) => {
                file.write_all_at(&memory[start..at], start as u64)?;
                run_start = None;
            }
            _ => {}
        }
    }
    if let Some(start) = run_start {
        file.write_all_at(&memory[start..], start as u64)?;
    }
    Ok(())
}

/// Whether every byte is zero (written to vectorise: no early exit inside a 64-byte block).
fn is_zero(bytes: &[u8]) -> bool {
    bytes
        .chunks(64)
        .all(|block| block.iter().fold(0u8, |acc, &b| acc | b) == 0)
}

/// A file with no name: a memfd on Linux, an unlinked temporary file elsewhere.
fn anonymous_file(name: &str) -> io::Result<File> {
    #[cfg(target_os = "linux")]
    {
        let fd = rustix::fs::memfd_create(name, rustix::fs::MemfdFlags::CLOEXEC)?;
        Ok(File::from(fd))
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = name;
        tempfile::tempfile()
    }
}

thread_local! {
    /// The image the next memory of this type created on this thread starts from.
    static NEXT_IMAGE: RefCell<Option<(MemoryType, Arc<MemoryImage>)>> = const { RefCell::new(None) };
}

/// Runs `f` (an instantiation) with `image` as the contents of the first memory of type `ty` it
/// creates.
pub(crate) fn with_image<R>(image: &Arc<MemoryImage>, ty: &MemoryType, f: impl FnOnce() -> R) -> R {
    struct Reset;
    impl Drop for Reset {
        fn drop(&mut self) {
            NEXT_IMAGE.with(|next| next.borrow_mut().take());
        }
    }
    NEXT_IMAGE.with(|next| *next.borrow_mut() = Some((ty.clone(), image.clone())));
    let _reset = Reset;
    f()
}

/// The engine's `MemoryCreator`: memories reserved whole up front (they never move), their
/// first bytes mapped from the pending image, if any.
pub(crate) struct ImageMemoryCreator;

// SAFETY: every memory returned reserves `reserved_size_in_bytes` (or the maximum) plus the guard
// as one mapping that never moves; bytes past `byte_size` stay PROT_NONE, so the guard region
// faults as wasmtime's elided bounds checks require.
unsafe impl MemoryCreator for ImageMemoryCreator {
    fn new_memory(
        &self,
        ty: MemoryType,
        minimum: usize,
        maximum: Option<usize>,
        reserved_size_in_bytes: Option<usize>,
        guard_size_in_bytes: usize,
    ) -> Result<Box<dyn LinearMemory>, String> {
        // The image is the module's linear memory's: not, say, the GC heap's (which holds the
        // exceptions that carry longjmps), created at the same instantiation.
        let image = NEXT_IMAGE.with(|next| {
            let mut next = next.borrow_mut();
            match &*next {
                Some((expected, _)) if *expected == ty => next.take().map(|(_, image)| image),
                _ => None,
            }
        });
        let capacity = reserved_size_in_bytes
            .or(maximum)
            .unwrap_or(4 << 30)
            .max(minimum)
            .next_multiple_of(HOST_PAGE);
        let mut memory = ImageMemory::reserve(capacity, guard_size_in_bytes, image)
            .map_err(|e| format!("cannot reserve {capacity} bytes for a linear memory: {e}"))?;
        memory
            .grow_to(minimum)
            .map_err(|e| format!("cannot map a linear memory of {minimum} bytes: {e}"))?;
        Ok(Box::new(memory))
    }
}

/// One linear memory: a reservation of `capacity + guard` bytes, of which the first `size` are
/// accessible.
struct ImageMemory {
    base: std::ptr::NonNull<u8>,
    capacity: usize,
    reservation: usize,
    size: usize,
    image: Option<Arc<MemoryImage>>,
}

// SAFETY: the memory is a plain mapping owned by this value; wasmtime synchronises access to it
// through the store that owns the memory.
unsafe impl Send for ImageMemory {}
// SAFETY: as above; `&self` methods only read the fields.
unsafe impl Sync for ImageMemory {}

impl ImageMemory {
    fn reserve(capacity: usize, guard: usize, image: Option<Arc<MemoryImage>>) -> io::Result<ImageMemory> {
        let reservation = capacity + guard;
        // SAFETY: a fresh anonymous mapping at an address of the kernel's choosing; nothing else
        // refers to it.
        let base = unsafe {
            rustix::mm::mmap_anonymous(
                std::ptr::null_mut(),
                reservation,
                ProtFlags::empty(),
                MapFlags::PRIVATE | MapFlags::NORESERVE,
            )?
        };
        let base =
            std::ptr::NonNull::new(base.cast::<u8>()).ok_or_else(|| io::Error::other("mmap gave null"))?;
        Ok(ImageMemory {
            base,
            capacity,
            reservation,
            size: 0,
            image,
        })
    }
}

// SAFETY: `as_ptr` is stable for the memory's life (one reservation, never moved), and
// `byte_size` bytes from it are mapped readable and writable.
unsafe impl LinearMemory for ImageMemory {
    fn byte_size(&self) -> usize {
        self.size
    }

    fn byte_capacity(&self) -> usize {
        self.capacity
    }

    fn grow_to(&mut self, new_size: usize) -> wasmtime::Result<()> {
        if new_size <= self.size {
            return Ok(());
        }
        if new_size > self.capacity {
            wasmtime::bail!("{new_size} bytes exceed the reservation of {}", self.capacity);
        }
        let (from, to) = (self.size, new_size.next_multiple_of(HOST_PAGE));
        let image_end = self.image.as_ref().map_or(0, |image| image.len.min(to));
        if from < image_end {
            let image = self.image.as_ref().expect("image_end > 0 only with an image");
            // SAFETY: [from, image_end) lies inside this memory's own reservation and is not yet
            // accessible, so no reference into it exists; MAP_FIXED replaces only that range.
            unsafe {
                rustix::mm::mmap(
                    self.base.as_ptr().add(from).cast(),
                    image_end - from,
                    ProtFlags::READ | ProtFlags::WRITE,
                    MapFlags::PRIVATE | MapFlags::FIXED,
                    &image.file,
                    from as u64,
                )?;
            }
        }
        let zero_from = from.max(image_end);
        if zero_from < to {
            // SAFETY: the range lies inside this memory's reservation (anonymous, still zero).
            unsafe {
                rustix::mm::mprotect(
                    self.base.as_ptr().add(zero_from).cast(),
                    to - zero_from,
                    MprotectFlags::READ | MprotectFlags::WRITE,
                )?;
            }
        }
        self.size = new_size;
        Ok(())
    }

    fn as_ptr(&self) -> *mut u8 {
        self.base.as_ptr()
    }
}

impl Drop for ImageMemory {
    fn drop(&mut self) {
        // SAFETY: the reservation was made by `reserve` and is unmapped once, here; wasmtime
        // drops the memory only after the instance using it is gone.
        if let Err(e) = unsafe { rustix::mm::munmap(self.base.as_ptr().cast(), self.reservation) } {
            tracing::warn!("unmapping a linear memory failed: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_image_of_a_memory_keeps_its_bytes_and_its_holes() {
        let mut memory = vec![0u8; 64 << 10];
        memory[5] = 1;
        memory[40_000] = 7;
        let image = MemoryImage::from_memory(&memory).unwrap();
        let mut back = vec![1u8; memory.len()];
        image.read_at(&mut back, 0).unwrap();
        assert_eq!(back, memory);
    }

    #[test]
    fn a_memory_maps_its_image_and_grows_with_zeros() {
        let image =
            Arc::new(MemoryImage::from_segments(&[(10, b"hello"), (70_000, b"world")], 128 << 10).unwrap());
        let mut memory = ImageMemory::reserve(1 << 20, 64 << 10, Some(image.clone())).unwrap();
        memory.grow_to(64 << 10).unwrap();
        // SAFETY: 64 KiB are mapped from `as_ptr`.
        let bytes = unsafe { std::slice::from_raw_parts_mut(memory.as_ptr(), 64 << 10) };
        assert_eq!(&bytes[10..15], b"hello");
        bytes[10] = b'j';
        memory.grow_to(256 << 10).unwrap();
        // SAFETY: 256 KiB are mapped now.
        let bytes = unsafe { std::slice::from_raw_parts_mut(memory.as_ptr(), 256 << 10) };
        assert_eq!(&bytes[10..15], b"jello", "writes stay after a grow");
        assert_eq!(
            &bytes[70_000..70_005],
            b"world",
            "the image continues past the first size"
        );
        assert!(bytes[200_000..].iter().all(|&b| b == 0), "past the image: zeros");
        let mut original = [0u8; 5];
        image.read_at(&mut original, 10).unwrap();
        assert_eq!(&original, b"hello", "the image itself is never written");
        assert!(memory.grow_to(2 << 20).is_err(), "no growth past the reservation");
    }
}
