//! CRC-32C for the module, computed by the host: the CPU's CRC instruction where it has one.
//!
//! Postgres checksums every WAL record, and the control file, with CRC-32C. Native builds use the
//! CPU's `crc32` instruction; compiled to wasm, Postgres falls back to a table lookup per byte
//! (slicing-by-8), five to six times slower, a twentieth of the backend's time under a stream of
//! INSERTs. The module rewrite (`rewrite::crc32c`) sends those calls here instead.

use wasmtime::{Caller, Linker};

use super::super::state::HostState;
use super::with_memory;
use crate::runtime::guest;

/// Where the rewritten module imports the function from: `(crc, ptr, len) -> crc`.
pub(crate) const IMPORT_MODULE: &str = "pglite_harness";
/// The function's name under [`IMPORT_MODULE`].
pub(crate) const IMPORT_NAME: &str = "crc32c";

pub(super) fn define(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    linker.func_wrap(
        IMPORT_MODULE,
        IMPORT_NAME,
        |mut caller: Caller<'_, HostState>, crc: i32, ptr: i32, len: i32| -> wasmtime::Result<i32> {
            with_memory(&mut caller, |mem, _| {
                // Out of bounds is a trap, as the module's own loads would have been.
                let bytes = guest::slice(mem, ptr, len as u32 as usize).map_err(|_| {
                    wasmtime::format_err!("crc32c of {len} bytes at {ptr:#x}: outside linear memory")
                })?;
                Ok(update(crc as u32, bytes) as i32)
            })
        },
    )?;
    Ok(())
}

/// Continues the CRC-32C (Castagnoli, reflected) `crc` over `bytes`, as Postgres'
/// `pg_comp_crc32c` does: no inversion on the way in or out.
pub(crate) fn update(crc: u32, bytes: &[u8]) -> u32 {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("sse4.2") {
        // SAFETY: the CPU has SSE 4.2 (checked just above).
        return unsafe { update_sse42(crc, bytes) };
    }
    #[cfg(target_arch = "aarch64")]
    if std::arch::is_aarch64_feature_detected!("crc") {
        // SAFETY: the CPU has the CRC extension (checked just above).
        return unsafe { update_arm_crc(crc, bytes) };
    }
    update_table(crc, bytes)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "sse4.2")]
fn update_sse42(mut crc: u32, bytes: &[u8]) -> u32 {
    use std::arch::x86_64::{_mm_crc32_u8, _mm_crc32_u64};
    let mut words = bytes.chunks_exact(8);
    let mut crc64 = u64::from(crc);
    for word in &mut words {
        crc64 = _mm_crc32_u64(crc64, u64::from_le_bytes(word.try_into().expect("8 bytes")));
    }
    crc = crc64 as u32;
    for &byte in words.remainder() {
        crc = _mm_crc32_u8(crc, byte);
    }
    crc
}

#[cfg(target_arch = "aarch64")]
#[target_feature(enable = "crc")]
fn update_arm_crc(mut crc: u32, bytes: &[u8]) -> u32 {
    use std::arch::aarch64::{__crc32cb, __crc32cd};
    let mut words = bytes.chunks_exact(8);
    for word in &mut words {
        crc = __crc32cd(crc, u64::from_le_bytes(word.try_into().expect("8 bytes")));
    }
    for &byte in words.remainder() {
        crc = __crc32cb(crc, byte);
    }
    crc
}

/// The byte-at-a-time table of the reflected Castagnoli polynomial.
const TABLE: [u32; 256] = {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut crc = i as u32;
        let mut bit = 0;
        while bit < 8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0x82F6_3B78
            } else {
                crc >> 1
            };
            bit += 1;
        }
        table[i] = crc;
        i += 1;
    }
    table
};

/// The first bytes of the table as Postgres lays it out in memory (little-endian): how the
/// rewrite finds the module's own CRC-32C function.
pub(crate) fn table_prefix() -> Vec<u8> {
    TABLE[..16].iter().flat_map(|entry| entry.to_le_bytes()).collect()
}

/// For CPUs without a CRC instruction.
fn update_table(mut crc: u32, bytes: &[u8]) -> u32 {
    for &byte in bytes {
        crc = TABLE[((crc ^ u32::from(byte)) & 0xff) as usize] ^ (crc >> 8);
    }
    crc
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What Postgres' INIT_CRC32C / COMP_CRC32C / FIN_CRC32C compute.
    fn crc32c(bytes: &[u8]) -> u32 {
        !update(!0, bytes)
    }

    #[test]
    fn the_check_value_and_a_split_input_agree_with_the_standard() {
        // The CRC-32C check value (RFC 3720's polynomial, over "123456789").
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
        assert_eq!(crc32c(b""), 0);
        let data: Vec<u8> = (0..1000u32).map(|i| (i * 7 + i / 13) as u8).collect();
        for split in [0, 1, 7, 8, 9, 500, 999, 1000] {
            let (a, b) = data.split_at(split);
            assert_eq!(!update(update(!0, a), b), crc32c(&data), "split at {split}");
        }
    }

    #[test]
    fn the_instruction_and_the_table_give_the_same_crc() {
        let data: Vec<u8> = (0..4099u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        for len in [0, 1, 3, 8, 15, 16, 63, 64, 1000, 4099] {
            for start in [0, 1, 5] {
                let bytes = &data[start..start + len.min(data.len() - start)];
                assert_eq!(
                    update(0x1234_5678, bytes),
                    update_table(0x1234_5678, bytes),
                    "{len} from {start}"
                );
            }
        }
    }
}
