//! Bounds-checked access to the guest's linear memory (wasm32 pointers, little-endian).

use crate::vfs::Errno;

/// Emscripten's EFAULT: a pointer outside linear memory.
pub(crate) const EFAULT: Errno = Errno(21);

/// The bytes at `ptr..ptr+len`.
pub(crate) fn slice(mem: &[u8], ptr: i32, len: usize) -> Result<&[u8], Errno> {
    let start = ptr as u32 as usize;
    mem.get(start..start.checked_add(len).ok_or(EFAULT)?)
        .ok_or(EFAULT)
}

/// The bytes at `ptr..ptr+len`, writable.
pub(crate) fn slice_mut(mem: &mut [u8], ptr: i32, len: usize) -> Result<&mut [u8], Errno> {
    let start = ptr as u32 as usize;
    mem.get_mut(start..start.checked_add(len).ok_or(EFAULT)?)
        .ok_or(EFAULT)
}

/// The NUL-terminated string at `ptr`, without its NUL.
pub(crate) fn cstr(mem: &[u8], ptr: i32) -> Result<&[u8], Errno> {
    let start = ptr as u32 as usize;
    let tail = mem.get(start..).ok_or(EFAULT)?;
    let len = tail.iter().position(|&b| b == 0).ok_or(EFAULT)?;
    Ok(&tail[..len])
}

/// Reads a little-endian value of `N` bytes.
pub(crate) fn read<const N: usize>(mem: &[u8], ptr: i32) -> Result<[u8; N], Errno> {
    Ok(slice(mem, ptr, N)?.try_into().expect("slice has length N"))
}

pub(crate) fn read_u32(mem: &[u8], ptr: i32) -> Result<u32, Errno> {
    Ok(u32::from_le_bytes(read(mem, ptr)?))
}

pub(crate) fn read_i32(mem: &[u8], ptr: i32) -> Result<i32, Errno> {
    Ok(i32::from_le_bytes(read(mem, ptr)?))
}

pub(crate) fn read_i64(mem: &[u8], ptr: i32) -> Result<i64, Errno> {
    Ok(i64::from_le_bytes(read(mem, ptr)?))
}

pub(crate) fn write_bytes(mem: &mut [u8], ptr: i32, bytes: &[u8]) -> Result<(), Errno> {
    slice_mut(mem, ptr, bytes.len())?.copy_from_slice(bytes);
    Ok(())
}

pub(crate) fn write_u32(mem: &mut [u8], ptr: i32, value: u32) -> Result<(), Errno> {
    write_bytes(mem, ptr, &value.to_le_bytes())
}

pub(crate) fn write_i32(mem: &mut [u8], ptr: i32, value: i32) -> Result<(), Errno> {
    write_bytes(mem, ptr, &value.to_le_bytes())
}

pub(crate) fn write_u16(mem: &mut [u8], ptr: i32, value: u16) -> Result<(), Errno> {
    write_bytes(mem, ptr, &value.to_le_bytes())
}

pub(crate) fn write_u64(mem: &mut [u8], ptr: i32, value: u64) -> Result<(), Errno> {
    write_bytes(mem, ptr, &value.to_le_bytes())
}

/// The `(ptr, len)` pairs of a WASI iovec array.
pub(crate) fn iovecs(mem: &[u8], iovs: i32, count: i32) -> Result<Vec<(i32, usize)>, Errno> {
    (0..count.max(0))
        .map(|i| {
            let at = iovs.wrapping_add(i * 8);
            Ok((read_i32(mem, at)?, read_u32(mem, at + 4)? as usize))
        })
        .collect()
}
