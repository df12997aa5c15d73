//! The 13 `wasi_snapshot_preview1` imports (besides `proc_exit`, in `control`): fds over the same
//! VFS as the Emscripten syscalls, the environment, clocks and randomness.

use std::time::{SystemTime, UNIX_EPOCH};

use wasmtime::{Caller, Linker};

use super::super::state::HostState;
use super::wasi_call;
use crate::runtime::guest;
use crate::vfs::Errno;

type C<'a> = Caller<'a, HostState>;
const WASI: &str = "wasi_snapshot_preview1";

pub(super) fn define(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    linker.func_wrap(
        WASI,
        "environ_sizes_get",
        |mut c: C<'_>, count: i32, size: i32| {
            wasi_call(&mut c, |mem, st| {
                let total: usize = st.environ.iter().map(|kv| kv.len() + 1).sum();
                guest::write_u32(mem, count, st.environ.len() as u32)?;
                guest::write_u32(mem, size, total as u32)
            })
        },
    )?;
    linker.func_wrap(WASI, "environ_get", |mut c: C<'_>, environ: i32, buf: i32| {
        wasi_call(&mut c, |mem, st| {
            let mut at = buf;
            for (i, kv) in st.environ.iter().enumerate() {
                guest::write_i32(mem, environ + 4 * i as i32, at)?;
                guest::write_bytes(mem, at, kv)?;
                guest::write_bytes(mem, at + kv.len() as i32, &[0])?;
                at += kv.len() as i32 + 1;
            }
            Ok(())
        })
    })?;
    linker.func_wrap(
        WASI,
        "clock_time_get",
        |mut c: C<'_>, id: i32, _precision: i64, out: i32| {
            wasi_call(&mut c, |mem, st| {
                // pg_sleep and other waits spin on this clock: a cancel gets in here.
                st.deliver_cancel(mem);
                let nanos = match id {
                    0 => SystemTime::now()
                        .duration_since(UNIX_EPOCH)
                        .unwrap_or_default()
                        .as_nanos() as u64,
                    1..=3 => st.monotonic().as_nanos() as u64,
                    _ => return Err(Errno::EINVAL),
                };
                guest::write_u64(mem, out, nanos)
            })
        },
    )?;
    linker.func_wrap(WASI, "random_get", |mut c: C<'_>, buf: i32, len: i32| {
        wasi_call(&mut c, |mem, _| {
            let out = guest::slice_mut(mem, buf, len as u32 as usize)?;
            getrandom::fill(out).map_err(|_| Errno::EIO)
        })
    })?;
    linker.func_wrap(WASI, "fd_close", |mut c: C<'_>, fd: i32| {
        wasi_call(&mut c, |_, st| st.vfs.close(fd))
    })?;
    linker.func_wrap(WASI, "fd_sync", |mut c: C<'_>, fd: i32| {
        wasi_call(&mut c, |_, st| st.vfs.fsync(fd))
    })?;
    linker.func_wrap(WASI, "fd_fdstat_get", |mut c: C<'_>, fd: i32, buf: i32| {
        wasi_call(&mut c, |mem, st| {
            let kind = st.vfs.file_kind(fd)?;
            let mut stat = [0u8; 24];
            stat[0] = kind.wasi_filetype();
            guest::write_bytes(mem, buf, &stat)
        })
    })?;
    linker.func_wrap(
        WASI,
        "fd_seek",
        |mut c: C<'_>, fd: i32, offset: i64, whence: i32, out: i32| {
            wasi_call(&mut c, |mem, st| {
                let pos = st
                    .vfs
                    .seek(fd, offset, u8::try_from(whence).map_err(|_| Errno::EINVAL)?)?;
                guest::write_u64(mem, out, pos)
            })
        },
    )?;
    linker.func_wrap(
        WASI,
        "fd_read",
        |mut c: C<'_>, fd: i32, iovs: i32, iovcnt: i32, nread: i32| {
            wasi_call(&mut c, |mem, st| {
                transfer(mem, iovs, iovcnt, 0, nread, |mem, ptr, len, _| {
                    st.vfs.read(fd, guest::slice_mut(mem, ptr, len)?)
                })
            })
        },
    )?;
    linker.func_wrap(
        WASI,
        "fd_write",
        |mut c: C<'_>, fd: i32, iovs: i32, iovcnt: i32, nwritten: i32| {
            wasi_call(&mut c, |mem, st| {
                transfer(mem, iovs, iovcnt, 0, nwritten, |mem, ptr, len, _| {
                    st.vfs.write(fd, guest::slice(mem, ptr, len)?)
                })
            })
        },
    )?;
    linker.func_wrap(
        WASI,
        "fd_pread",
        |mut c: C<'_>, fd: i32, iovs: i32, iovcnt: i32, offset: i64, nread: i32| {
            wasi_call(&mut c, |mem, st| {
                let start = u64::try_from(offset).map_err(|_| Errno::EINVAL)?;
                transfer(mem, iovs, iovcnt, start, nread, |mem, ptr, len, at| {
                    st.vfs.pread(fd, guest::slice_mut(mem, ptr, len)?, at)
                })
            })
        },
    )?;
    linker.func_wrap(
        WASI,
        "fd_pwrite",
        |mut c: C<'_>, fd: i32, iovs: i32, iovcnt: i32, offset: i64, nwritten: i32| {
            wasi_call(&mut c, |mem, st| {
                let start = u64::try_from(offset).map_err(|_| Errno::EINVAL)?;
                transfer(mem, iovs, iovcnt, start, nwritten, |mem, ptr, len, at| {
                    st.vfs.pwrite(fd, guest::slice(mem, ptr, len)?, at)
                })
            })
        },
    )?;
    Ok(())
}

/// Moves bytes through each iovec in turn with `step(mem, ptr, len, offset)`, stops at a short
/// transfer, and stores the total at `total_ptr` (the shape of fd_read/write/pread/pwrite).
fn transfer(
    mem: &mut [u8],
    iovs: i32,
    iovcnt: i32,
    start: u64,
    total_ptr: i32,
    mut step: impl FnMut(&mut [u8], i32, usize, u64) -> Result<usize, Errno>,
) -> Result<(), Errno> {
    let mut total = 0usize;
    for (ptr, len) in guest::iovecs(mem, iovs, iovcnt)? {
        let n = step(mem, ptr, len, start + total as u64)?;
        total += n;
        if n < len {
            break;
        }
    }
    guest::write_u32(mem, total_ptr, total as u32)
}
