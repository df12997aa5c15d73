//! Time, heap growth, file-backed `mmap`, user ids and the dynamic-linker hooks.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use wasmtime::{Caller, Linker};

use super::super::dylink;
use super::super::state::HostState;
use super::{syscall, with_memory};
use crate::runtime::guest;
use crate::vfs::{Errno, FileKind};

type C<'a> = Caller<'a, HostState>;

const WASM_PAGE: u64 = 64 * 1024;
/// The module's declared memory maximum: 32768 pages.
pub(crate) const HEAP_MAX: u64 = 2 * 1024 * 1024 * 1024;
const PROT_WRITE: i32 = 2;
const MAP_SHARED: i32 = 1;

pub(super) fn define(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    // --- time ---
    linker.func_wrap("env", "emscripten_date_now", || -> f64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs_f64()
            * 1000.0
    })?;
    linker.func_wrap("env", "emscripten_get_now", |c: C<'_>| -> f64 {
        c.data().monotonic().as_secs_f64() * 1000.0
    })?;
    linker.func_wrap(
        "env",
        "_tzset_js",
        |mut c: C<'_>, timezone: i32, daylight: i32, std_name: i32, dst_name: i32| {
            // The environment sets TZ=UTC; Postgres keeps its own zone database for everything else.
            with_memory(&mut c, |mem, _| -> Result<(), Errno> {
                guest::write_i32(mem, timezone, 0)?;
                guest::write_i32(mem, daylight, 0)?;
                guest::write_bytes(mem, std_name, b"UTC\0")?;
                guest::write_bytes(mem, dst_name, b"UTC\0")
            })
            .map_err(|e| wasmtime::format_err!("_tzset_js: bad pointer ({e})"))
        },
    )?;
    for name in ["_localtime_js", "_gmtime_js"] {
        linker.func_wrap("env", name, |mut c: C<'_>, time: i64, tm: i32| -> i32 {
            with_memory(&mut c, |mem, _| match write_tm(mem, tm, time) {
                Ok(()) => 0,
                Err(e) => -i32::from(e.0),
            })
        })?;
    }
    linker.func_wrap(
        "env",
        "_setitimer_js",
        |mut c: C<'_>, which: i32, ms: f64| -> i32 {
            let Some(slot) = c.data_mut().timers.get_mut(which as usize) else {
                return -i32::from(Errno::EINVAL.0);
            };
            // Timers are recorded, not fired: like the official build, a running statement is not
            // interrupted by statement_timeout.
            *slot = (ms > 0.0).then(|| Instant::now() + Duration::from_secs_f64(ms / 1000.0));
            0
        },
    )?;

    // --- memory ---
    linker.func_wrap("env", "emscripten_get_heap_max", || -> i32 {
        HEAP_MAX as u32 as i32
    })?;
    linker.func_wrap(
        "env",
        "emscripten_resize_heap",
        |mut c: C<'_>, requested: i32| -> wasmtime::Result<i32> {
            let memory = c.data().exports().memory;
            let old = memory.data_size(&c) as u64;
            let requested = u64::from(requested as u32);
            if requested > HEAP_MAX {
                return Ok(0);
            }
            // The official glue's policy: over-allocate by 20% (capped at +96 MiB), then 10%, then 5%.
            for factor in [1.2f64, 1.1, 1.05] {
                let over = ((old as f64 * factor) as u64).min(requested + 96 * 1024 * 1024);
                let target = over.max(requested).div_ceil(WASM_PAGE) * WASM_PAGE;
                let target = target.min(HEAP_MAX);
                if target <= old {
                    return Ok(1);
                }
                if memory.grow(&mut c, (target - old) / WASM_PAGE).is_ok() {
                    return Ok(1);
                }
            }
            Ok(0)
        },
    )?;
    linker.func_wrap(
        "env",
        "_mmap_js",
        |mut c: C<'_>,
         len: i32,
         _prot: i32,
         _flags: i32,
         fd: i32,
         offset: i64,
         allocated: i32,
         addr: i32|
         -> wasmtime::Result<i32> { mmap(&mut c, len, fd, offset, allocated, addr) },
    )?;
    linker.func_wrap(
        "env",
        "_munmap_js",
        |mut c: C<'_>, addr: i32, len: i32, prot: i32, flags: i32, fd: i32, offset: i64| -> i32 {
            syscall(&mut c, |mem, st| {
                // A shared writable mapping is written back to its file (msync).
                if prot & PROT_WRITE != 0 && flags & MAP_SHARED != 0 && fd >= 0 {
                    let bytes = guest::slice(mem, addr, len as u32 as usize)?;
                    st.vfs
                        .pwrite(fd, bytes, u64::try_from(offset).map_err(|_| Errno::EINVAL)?)?;
                }
                Ok(0)
            })
        },
    )?;

    // --- identity: one user, root as far as the VFS is concerned (Postgres itself uses a
    // compiled-in uid through pgl_getuid) ---
    for name in [
        "__syscall_getuid32",
        "__syscall_geteuid32",
        "__syscall_getgid32",
        "__syscall_getegid32",
    ] {
        linker.func_wrap("env", name, || -> i32 { 0 })?;
    }

    // --- dynamic linking ---
    linker.func_wrap(
        "env",
        "_dlopen_js",
        |mut c: C<'_>, handle: i32| -> wasmtime::Result<i32> { dylink::dlopen(&mut c, handle) },
    )?;
    linker.func_wrap(
        "env",
        "_dlsym_js",
        |mut c: C<'_>, handle: i32, symbol: i32, index: i32| -> wasmtime::Result<i32> {
            dylink::dlsym(&mut c, handle, symbol, index)
        },
    )?;
    Ok(())
}

/// Maps `len` bytes of file `fd` at `offset` into fresh, 64 KiB-aligned linear memory.
fn mmap(c: &mut C<'_>, len: i32, fd: i32, offset: i64, allocated: i32, addr: i32) -> wasmtime::Result<i32> {
    let kind = c.data().vfs.file_kind(fd);
    match kind {
        Ok(FileKind::Regular) => {}
        Ok(_) => return Ok(-i32::from(Errno::ENODEV.0)),
        Err(e) => return Ok(-i32::from(e.0)),
    }
    let Ok(offset) = u64::try_from(offset) else {
        return Ok(-i32::from(Errno::EINVAL.0));
    };
    let size = u64::from(len as u32).div_ceil(WASM_PAGE) * WASM_PAGE;
    let memalign = c.data().exports().memalign.clone();
    let ptr = memalign.call(&mut *c, (WASM_PAGE as i32, size as i32))?;
    if ptr == 0 {
        return Ok(-i32::from(Errno::ENOMEM.0));
    }
    Ok(syscall(c, |mem, st| {
        let region = guest::slice_mut(mem, ptr, size as usize)?;
        region.fill(0);
        let mut done = 0usize;
        let wanted = len as u32 as usize;
        while done < wanted {
            let n = st
                .vfs
                .pread(fd, &mut region[done..wanted], offset + done as u64)?;
            if n == 0 {
                break;
            }
            done += n;
        }
        guest::write_i32(mem, allocated, 1)?;
        guest::write_i32(mem, addr, ptr)?;
        Ok(0)
    }))
}

/// Fills a `struct tm` (ten i32: sec, min, hour, mday, mon, year-1900, wday, yday, isdst, gmtoff)
/// with the UTC time `time` (the process runs with TZ=UTC).
fn write_tm(mem: &mut [u8], tm: i32, time: i64) -> Result<(), Errno> {
    let days = time.div_euclid(86_400);
    let secs = time.rem_euclid(86_400);
    let (year, month, day) = civil_from_days(days);
    let jan1 = days_from_civil(year, 1, 1);
    let fields = [
        (secs % 60) as i32,
        (secs / 60 % 60) as i32,
        (secs / 3600) as i32,
        day as i32,
        month as i32 - 1,
        (year - 1900) as i32,
        (days + 4).rem_euclid(7) as i32,
        (days - jan1) as i32,
        0,
        0,
    ];
    for (i, v) in fields.into_iter().enumerate() {
        guest::write_i32(mem, tm + 4 * i as i32, v)?;
    }
    Ok(())
}

/// Days since 1970-01-01 to (year, month 1-12, day 1-31), proleptic Gregorian.
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates_round_trip() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(19_723), (2024, 1, 1));
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
        for days in [-800_000, -1, 0, 59, 60, 11_016, 20_000, 2_000_000] {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
        }
    }

    #[test]
    fn struct_tm_for_a_known_instant() {
        let mut mem = vec![0u8; 64];
        // 2000-03-01T12:34:56Z, a Wednesday, day 60 of a leap year.
        write_tm(&mut mem, 0, 951_914_096).unwrap();
        let field = |i: usize| i32::from_le_bytes(mem[i * 4..i * 4 + 4].try_into().unwrap());
        assert_eq!((field(0), field(1), field(2)), (56, 34, 12));
        assert_eq!((field(3), field(4), field(5)), (1, 2, 100));
        assert_eq!((field(6), field(7)), (3, 60));
    }
}
