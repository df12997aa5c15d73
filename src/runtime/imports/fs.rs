//! The Emscripten filesystem syscalls (`__syscall_*`), over the instance's VFS.

use wasmtime::{Caller, Linker};

use super::super::state::HostState;
use super::syscall;
use crate::runtime::guest::{self, cstr};
use crate::vfs::{AT_FDCWD, DirEntry, Errno, flags};

/// `F_GETLK`, `F_SETLK`, `F_SETLKW` in Emscripten's numbering.
const F_GETLK: i32 = 12;
const F_SETLK: i32 = 13;
const F_SETLKW: i32 = 14;
/// `F_UNLCK` for `struct flock.l_type`.
const F_UNLCK: u16 = 2;
/// `utimensat` special nanosecond values.
const UTIME_NOW: i64 = 0x3fff_ffff;
const UTIME_OMIT: i64 = 0x3fff_fffe;
/// Terminal ioctls answered for a tty.
const TCGETS: i32 = 0x5401;
const TIOCGWINSZ: i32 = 0x5413;
/// Longest single sleep of a `poll` with nothing ready, so a cancel is seen promptly.
const POLL_SLICE_MS: i32 = 5;

type C<'a> = Caller<'a, HostState>;

pub(super) fn define(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    linker.func_wrap(
        "env",
        "__syscall_openat",
        |mut c: C<'_>, dirfd: i32, path: i32, oflags: i32, varargs: i32| {
            syscall(&mut c, |mem, st| {
                let path = cstr(mem, path)?;
                let mode = if oflags as u32 & flags::O_CREAT != 0 {
                    guest::read_u32(mem, varargs)?
                } else {
                    0
                };
                st.vfs.openat(dirfd, path, oflags as u32, mode)
            })
        },
    )?;
    linker.func_wrap(
        "env",
        "__syscall_faccessat",
        |mut c: C<'_>, dirfd: i32, path: i32, amode: i32, fl: i32| {
            syscall(&mut c, |mem, st| {
                st.vfs
                    .faccessat(dirfd, cstr(mem, path)?, amode as u32, fl as u32)
                    .map(|()| 0)
            })
        },
    )?;
    linker.func_wrap("env", "__syscall_chdir", |mut c: C<'_>, path: i32| {
        syscall(&mut c, |mem, st| st.vfs.chdir(cstr(mem, path)?).map(|()| 0))
    })?;
    linker.func_wrap("env", "__syscall_getcwd", |mut c: C<'_>, buf: i32, size: i32| {
        syscall(&mut c, |mem, st| {
            let mut cwd = st.vfs.getcwd();
            cwd.push(0);
            if cwd.len() > size as u32 as usize {
                return Err(Errno::ERANGE);
            }
            guest::write_bytes(mem, buf, &cwd)?;
            Ok(cwd.len() as i32)
        })
    })?;
    linker.func_wrap("env", "__syscall_chmod", |mut c: C<'_>, path: i32, mode: i32| {
        syscall(&mut c, |mem, st| {
            st.vfs
                .chmodat(AT_FDCWD, cstr(mem, path)?, mode as u32)
                .map(|()| 0)
        })
    })?;
    linker.func_wrap(
        "env",
        "__syscall_fchmodat2",
        |mut c: C<'_>, dirfd: i32, path: i32, mode: i32, _fl: i32| {
            syscall(&mut c, |mem, st| {
                st.vfs.chmodat(dirfd, cstr(mem, path)?, mode as u32).map(|()| 0)
            })
        },
    )?;
    linker.func_wrap("env", "__syscall_fchmod", |mut c: C<'_>, fd: i32, mode: i32| {
        syscall(&mut c, |_, st| st.vfs.fchmod(fd, mode as u32).map(|()| 0))
    })?;
    // There is one user: ownership changes succeed when the file exists.
    linker.func_wrap(
        "env",
        "__syscall_fchownat",
        |mut c: C<'_>, dirfd: i32, path: i32, _uid: i32, _gid: i32, fl: i32| {
            syscall(&mut c, |mem, st| {
                st.vfs.statat(dirfd, cstr(mem, path)?, fl as u32).map(|_| 0)
            })
        },
    )?;
    linker.func_wrap(
        "env",
        "__syscall_fchown32",
        |mut c: C<'_>, fd: i32, _uid: i32, _gid: i32| syscall(&mut c, |_, st| st.vfs.fstat(fd).map(|_| 0)),
    )?;
    linker.func_wrap("env", "__syscall_dup", |mut c: C<'_>, fd: i32| {
        syscall(&mut c, |_, st| st.vfs.dup(fd))
    })?;
    linker.func_wrap(
        "env",
        "__syscall_dup3",
        |mut c: C<'_>, fd: i32, newfd: i32, fl: i32| {
            syscall(&mut c, |_, st| st.vfs.dup3(fd, newfd, fl as u32))
        },
    )?;
    linker.func_wrap("env", "__syscall_fdatasync", |mut c: C<'_>, fd: i32| {
        syscall(&mut c, |_, st| st.vfs.fdatasync(fd).map(|()| 0))
    })?;
    linker.func_wrap(
        "env",
        "__syscall_fcntl64",
        |mut c: C<'_>, fd: i32, cmd: i32, varargs: i32| {
            syscall(&mut c, |mem, st| match cmd {
                F_GETLK => {
                    st.vfs.fstat(fd)?;
                    let arg = guest::read_i32(mem, varargs)?;
                    guest::write_u16(mem, arg, F_UNLCK)?;
                    Ok(0)
                }
                // One process per data directory is enforced by the host's own lock.
                F_SETLK | F_SETLKW => st.vfs.fstat(fd).map(|_| 0),
                _ => {
                    let arg = guest::read_i32(mem, varargs).unwrap_or(0);
                    st.vfs.fcntl(fd, cmd, arg)
                }
            })
        },
    )?;
    linker.func_wrap(
        "env",
        "__syscall_ioctl",
        |mut c: C<'_>, fd: i32, op: i32, varargs: i32| {
            syscall(&mut c, |mem, st| {
                if !st.vfs.is_tty(fd)? {
                    return Err(Errno::ENOTTY);
                }
                match op {
                    TIOCGWINSZ => {
                        let arg = guest::read_i32(mem, varargs)?;
                        guest::write_bytes(mem, arg, &[24, 0, 80, 0, 0, 0, 0, 0])?;
                        Ok(0)
                    }
                    TCGETS => Ok(0),
                    _ => Ok(0),
                }
            })
        },
    )?;
    linker.func_wrap("env", "__syscall_fstat64", |mut c: C<'_>, fd: i32, buf: i32| {
        syscall(&mut c, |mem, st| {
            let stat = st.vfs.fstat(fd)?;
            guest::write_bytes(mem, buf, &stat.to_bytes())?;
            Ok(0)
        })
    })?;
    linker.func_wrap("env", "__syscall_stat64", |mut c: C<'_>, path: i32, buf: i32| {
        syscall(&mut c, |mem, st| {
            let stat = st.vfs.statat(AT_FDCWD, cstr(mem, path)?, 0)?;
            guest::write_bytes(mem, buf, &stat.to_bytes())?;
            Ok(0)
        })
    })?;
    linker.func_wrap("env", "__syscall_lstat64", |mut c: C<'_>, path: i32, buf: i32| {
        syscall(&mut c, |mem, st| {
            let stat = st
                .vfs
                .statat(AT_FDCWD, cstr(mem, path)?, flags::AT_SYMLINK_NOFOLLOW)?;
            guest::write_bytes(mem, buf, &stat.to_bytes())?;
            Ok(0)
        })
    })?;
    linker.func_wrap(
        "env",
        "__syscall_newfstatat",
        |mut c: C<'_>, dirfd: i32, path: i32, buf: i32, fl: i32| {
            syscall(&mut c, |mem, st| {
                let stat = st.vfs.statat(dirfd, cstr(mem, path)?, fl as u32)?;
                guest::write_bytes(mem, buf, &stat.to_bytes())?;
                Ok(0)
            })
        },
    )?;
    linker.func_wrap(
        "env",
        "__syscall_ftruncate64",
        |mut c: C<'_>, fd: i32, len: i64| {
            syscall(&mut c, |_, st| {
                st.vfs
                    .ftruncate(fd, u64::try_from(len).map_err(|_| Errno::EINVAL)?)
                    .map(|()| 0)
            })
        },
    )?;
    linker.func_wrap(
        "env",
        "__syscall_truncate64",
        |mut c: C<'_>, path: i32, len: i64| {
            syscall(&mut c, |mem, st| {
                st.vfs
                    .truncate(cstr(mem, path)?, u64::try_from(len).map_err(|_| Errno::EINVAL)?)
                    .map(|()| 0)
            })
        },
    )?;
    linker.func_wrap(
        "env",
        "__syscall_mkdirat",
        |mut c: C<'_>, dirfd: i32, path: i32, mode: i32| {
            syscall(&mut c, |mem, st| {
                st.vfs.mkdirat(dirfd, cstr(mem, path)?, mode as u32).map(|()| 0)
            })
        },
    )?;
    linker.func_wrap("env", "__syscall_pipe2", |mut c: C<'_>, fds: i32, fl: i32| {
        syscall(&mut c, |mem, st| {
            let (read, write) = st.vfs.pipe2(fl as u32)?;
            guest::write_i32(mem, fds, read)?;
            guest::write_i32(mem, fds + 4, write)?;
            Ok(0)
        })
    })?;
    // Advice only.
    linker.func_wrap(
        "env",
        "__syscall_fadvise64",
        |mut c: C<'_>, fd: i32, _off: i64, _len: i64, _advice: i32| {
            syscall(&mut c, |_, st| st.vfs.fstat(fd).map(|_| 0))
        },
    )?;
    linker.func_wrap(
        "env",
        "__syscall_fallocate",
        |mut c: C<'_>, fd: i32, mode: i32, off: i64, len: i64| {
            syscall(&mut c, |_, st| {
                let (off, len) = (
                    u64::try_from(off).map_err(|_| Errno::EINVAL)?,
                    u64::try_from(len).map_err(|_| Errno::EINVAL)?,
                );
                st.vfs.fallocate(fd, mode, off, len).map(|()| 0)
            })
        },
    )?;
    linker.func_wrap(
        "env",
        "__syscall_getdents64",
        |mut c: C<'_>, fd: i32, dirp: i32, count: i32| {
            syscall(&mut c, |mem, st| {
                let max = count as u32 as usize / DirEntry::RECORD_SIZE;
                if max == 0 {
                    return Err(Errno::EINVAL);
                }
                let first = st.vfs.seek(fd, 0, flags::SEEK_CUR)? / DirEntry::RECORD_SIZE as u64;
                let entries = st.vfs.getdents(fd, max)?;
                let mut record = [0u8; DirEntry::RECORD_SIZE];
                for (i, entry) in entries.iter().enumerate() {
                    entry.write_record(first + i as u64, &mut record);
                    guest::write_bytes(mem, dirp + (i * DirEntry::RECORD_SIZE) as i32, &record)?;
                }
                Ok((entries.len() * DirEntry::RECORD_SIZE) as i32)
            })
        },
    )?;
    linker.func_wrap(
        "env",
        "__syscall_readlinkat",
        |mut c: C<'_>, dirfd: i32, path: i32, buf: i32, size: i32| {
            syscall(&mut c, |mem, st| {
                let target = st.vfs.readlinkat(dirfd, cstr(mem, path)?)?;
                let n = target.len().min(size.max(0) as usize);
                guest::write_bytes(mem, buf, &target[..n])?;
                Ok(n as i32)
            })
        },
    )?;
    linker.func_wrap(
        "env",
        "__syscall_renameat",
        |mut c: C<'_>, olddirfd: i32, old: i32, newdirfd: i32, new: i32| {
            syscall(&mut c, |mem, st| {
                let (old, new) = (cstr(mem, old)?.to_vec(), cstr(mem, new)?);
                st.vfs.renameat(olddirfd, &old, newdirfd, new).map(|()| 0)
            })
        },
    )?;
    linker.func_wrap("env", "__syscall_rmdir", |mut c: C<'_>, path: i32| {
        syscall(&mut c, |mem, st| {
            st.vfs
                .unlinkat(AT_FDCWD, cstr(mem, path)?, flags::AT_REMOVEDIR)
                .map(|()| 0)
        })
    })?;
    linker.func_wrap(
        "env",
        "__syscall_unlinkat",
        |mut c: C<'_>, dirfd: i32, path: i32, fl: i32| {
            syscall(&mut c, |mem, st| {
                st.vfs.unlinkat(dirfd, cstr(mem, path)?, fl as u32).map(|()| 0)
            })
        },
    )?;
    linker.func_wrap(
        "env",
        "__syscall_symlinkat",
        |mut c: C<'_>, target: i32, dirfd: i32, path: i32| {
            syscall(&mut c, |mem, st| {
                let target = cstr(mem, target)?.to_vec();
                st.vfs.symlinkat(&target, dirfd, cstr(mem, path)?).map(|()| 0)
            })
        },
    )?;
    linker.func_wrap(
        "env",
        "__syscall_linkat",
        |mut c: C<'_>, olddirfd: i32, old: i32, newdirfd: i32, new: i32, fl: i32| {
            syscall(&mut c, |mem, st| {
                let old = cstr(mem, old)?.to_vec();
                st.vfs
                    .linkat(olddirfd, &old, newdirfd, cstr(mem, new)?, fl as u32)
                    .map(|()| 0)
            })
        },
    )?;
    linker.func_wrap("env", "__syscall_umask", |mut c: C<'_>, mask: i32| {
        syscall(&mut c, |_, st| Ok(st.vfs.umask(mask as u32) as i32))
    })?;
    linker.func_wrap(
        "env",
        "__syscall_utimensat",
        |mut c: C<'_>, dirfd: i32, path: i32, times: i32, fl: i32| {
            syscall(&mut c, |mem, st| {
                let times = if times == 0 {
                    None
                } else {
                    let now = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .unwrap_or_default();
                    let mut pair = [(0i64, 0u32); 2];
                    for (i, slot) in pair.iter_mut().enumerate() {
                        // struct timespec { i64 tv_sec; i32 tv_nsec; (padding) } on wasm32.
                        let at = times + (i as i32) * 16;
                        let (sec, nsec) = (
                            guest::read_i64(mem, at)?,
                            i64::from(guest::read_i32(mem, at + 8)?),
                        );
                        *slot = if nsec == UTIME_NOW || nsec == UTIME_OMIT {
                            (now.as_secs() as i64, now.subsec_nanos())
                        } else {
                            (sec, nsec as u32)
                        };
                    }
                    Some(pair)
                };
                let path = cstr(mem, path)?;
                st.vfs.utimensat(dirfd, path, times, fl as u32).map(|()| 0)
            })
        },
    )?;
    linker.func_wrap(
        "env",
        "__syscall_statfs64",
        |mut c: C<'_>, path: i32, _size: i32, buf: i32| {
            syscall(&mut c, |mem, st| {
                let fs = st.vfs.statfs(cstr(mem, path)?)?;
                guest::write_bytes(mem, buf, &fs.to_bytes())?;
                Ok(0)
            })
        },
    )?;
    linker.func_wrap(
        "env",
        "__syscall_poll",
        |mut c: C<'_>, fds: i32, nfds: i32, timeout: i32| {
            let ready = syscall(&mut c, |mem, st| {
                st.deliver_cancel(mem);
                let mut ready = 0;
                for i in 0..nfds.max(0) {
                    // struct pollfd { i32 fd; i16 events; i16 revents; }
                    let at = fds + i * 8;
                    let fd = guest::read_i32(mem, at)?;
                    let events = i16::from_le_bytes(guest::read(mem, at + 4)?);
                    let revents = if fd < 0 {
                        0
                    } else {
                        st.vfs.poll_revents(fd, events)
                    };
                    guest::write_u16(mem, at + 6, revents as u16)?;
                    ready += i32::from(revents != 0);
                }
                Ok(ready)
            });
            // Nothing is ready (Postgres waiting on its latch, e.g. pg_sleep): wait a slice of the
            // timeout rather than spin. Postgres re-checks its clock and interrupts, then waits again.
            if ready == 0 && timeout != 0 && !c.data().interrupts.is_requested() {
                let slice = if timeout < 0 {
                    POLL_SLICE_MS
                } else {
                    timeout.min(POLL_SLICE_MS)
                };
                std::thread::sleep(std::time::Duration::from_millis(slice as u64));
            }
            ready
        },
    )?;
    Ok(())
}
