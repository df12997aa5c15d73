//! Name resolution: numeric `getaddrinfo`/`getnameinfo` (pg_hba.conf's `127.0.0.1/32` and `::1/128`
//! are resolved at every start) and socket calls, which have nothing to connect to.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use wasmtime::{Caller, Linker};

use super::super::state::HostState;
use super::with_memory;
use crate::runtime::guest;
use crate::vfs::Errno;

type C<'a> = Caller<'a, HostState>;

const AF_UNSPEC: i32 = 0;
const AF_INET: i32 = 2;
const AF_INET6: i32 = 10;
const AI_PASSIVE: i32 = 1;
const EAI_NONAME: i32 = -2;
const EAI_FAMILY: i32 = -6;
const EAI_MEMORY: i32 = -10;
const EAI_SERVICE: i32 = -8;
const EAI_OVERFLOW: i32 = -12;
const NI_NUMERICHOST: i32 = 1;
/// Errno values for socket calls: no address family is supported, and no fd is a socket.
const EAFNOSUPPORT: Errno = Errno(5);
const ENOTSOCK: Errno = Errno(57);

pub(super) fn define(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    linker.func_wrap("env", "getaddrinfo", getaddrinfo)?;
    linker.func_wrap("env", "getnameinfo", getnameinfo)?;
    linker.func_wrap(
        "env",
        "__syscall_socket",
        |_: i32, _: i32, _: i32, _: i32, _: i32, _: i32| -i32::from(EAFNOSUPPORT.0),
    )?;
    for name in [
        "__syscall_accept4",
        "__syscall_bind",
        "__syscall_connect",
        "__syscall_listen",
        "__syscall_recvfrom",
        "__syscall_sendto",
    ] {
        linker.func_wrap("env", name, |_: i32, _: i32, _: i32, _: i32, _: i32, _: i32| {
            -i32::from(ENOTSOCK.0)
        })?;
    }
    Ok(())
}

fn getaddrinfo(mut c: C<'_>, node: i32, service: i32, hints: i32, res: i32) -> wasmtime::Result<i32> {
    let parsed = with_memory(&mut c, |mem, _| -> Result<(Option<IpAddr>, u16, [i32; 4]), i32> {
        let mut h = [0i32; 4]; // flags, family, socktype, protocol
        if hints != 0 {
            for (i, slot) in h.iter_mut().enumerate() {
                *slot = guest::read_i32(mem, hints + 4 * i as i32).map_err(|_| EAI_NONAME)?;
            }
        }
        let node = if node == 0 {
            None
        } else {
            Some(guest::cstr(mem, node).map_err(|_| EAI_NONAME)?)
        };
        let service = if service == 0 {
            None
        } else {
            Some(guest::cstr(mem, service).map_err(|_| EAI_NONAME)?)
        };
        if node.is_none() && service.is_none() {
            return Err(EAI_NONAME);
        }
        let port = match service {
            None => 0,
            Some(s) => std::str::from_utf8(s)
                .ok()
                .and_then(|s| s.parse::<u16>().ok())
                .ok_or(EAI_SERVICE)?,
        };
        let addr = match node {
            None => None,
            Some(b"localhost") => Some(IpAddr::V4(Ipv4Addr::LOCALHOST)),
            Some(n) => Some(
                std::str::from_utf8(n)
                    .ok()
                    .and_then(|s| s.parse::<IpAddr>().ok())
                    .ok_or(EAI_NONAME)?,
            ),
        };
        Ok((addr, port, h))
    });
    let (addr, port, [flags, family, socktype, protocol]) = match parsed {
        Ok(p) => p,
        Err(code) => return Ok(code),
    };
    let addr = addr.unwrap_or(if flags & AI_PASSIVE != 0 {
        if family == AF_INET6 {
            IpAddr::V6(Ipv6Addr::UNSPECIFIED)
        } else {
            IpAddr::V4(Ipv4Addr::UNSPECIFIED)
        }
    } else if family == AF_INET6 {
        IpAddr::V6(Ipv6Addr::LOCALHOST)
    } else {
        IpAddr::V4(Ipv4Addr::LOCALHOST)
    });
    match (family, addr) {
        (AF_UNSPEC, _) | (AF_INET, IpAddr::V4(_)) | (AF_INET6, IpAddr::V6(_)) => {}
        (AF_INET | AF_INET6, _) => return Ok(EAI_NONAME),
        _ => return Ok(EAI_FAMILY),
    }
    let socktype = if socktype == 0 { 1 } else { socktype };
    let protocol = if protocol != 0 {
        protocol
    } else if socktype == 2 {
        17
    } else {
        6
    };
    let sockaddr = sockaddr_bytes(addr, port);

    let malloc = c.data().exports().malloc.clone();
    let ai = malloc.call(&mut c, 32 + sockaddr.len() as i32)?;
    if ai == 0 {
        return Ok(EAI_MEMORY);
    }
    let sa = ai + 32;
    let written = with_memory(&mut c, |mem, _| -> Result<(), Errno> {
        let family = if addr.is_ipv4() { AF_INET } else { AF_INET6 };
        for (i, v) in [0, family, socktype, protocol, sockaddr.len() as i32, sa, 0, 0]
            .into_iter()
            .enumerate()
        {
            guest::write_i32(mem, ai + 4 * i as i32, v)?;
        }
        guest::write_bytes(mem, sa, &sockaddr)?;
        guest::write_i32(mem, res, ai)
    });
    Ok(if written.is_ok() { 0 } else { EAI_MEMORY })
}

/// `sockaddr_in` (16 bytes) or `sockaddr_in6` (28 bytes).
fn sockaddr_bytes(addr: IpAddr, port: u16) -> Vec<u8> {
    match addr {
        IpAddr::V4(v4) => {
            let mut b = vec![0u8; 16];
            b[0..2].copy_from_slice(&(AF_INET as u16).to_le_bytes());
            b[2..4].copy_from_slice(&port.to_be_bytes());
            b[4..8].copy_from_slice(&v4.octets());
            b
        }
        IpAddr::V6(v6) => {
            let mut b = vec![0u8; 28];
            b[0..2].copy_from_slice(&(AF_INET6 as u16).to_le_bytes());
            b[2..4].copy_from_slice(&port.to_be_bytes());
            b[8..24].copy_from_slice(&v6.octets());
            b
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn getnameinfo(
    mut c: C<'_>,
    sa: i32,
    salen: i32,
    host: i32,
    hostlen: i32,
    serv: i32,
    servlen: i32,
    flags: i32,
) -> i32 {
    with_memory(&mut c, |mem, _| {
        let Ok(bytes) = guest::slice(mem, sa, salen.max(0) as usize) else {
            return EAI_FAMILY;
        };
        if bytes.len() < 4 {
            return EAI_FAMILY;
        }
        let port = u16::from_be_bytes([bytes[2], bytes[3]]);
        let addr = match i32::from(u16::from_le_bytes([bytes[0], bytes[1]])) {
            AF_INET if bytes.len() >= 8 => IpAddr::V4(Ipv4Addr::new(bytes[4], bytes[5], bytes[6], bytes[7])),
            AF_INET6 if bytes.len() >= 24 => IpAddr::V6(Ipv6Addr::from(
                <[u8; 16]>::try_from(&bytes[8..24]).expect("16 bytes"),
            )),
            _ => return EAI_FAMILY,
        };
        let _ = flags & NI_NUMERICHOST; // names are always numeric: there is no resolver
        let mut put = |ptr: i32, len: i32, text: String| -> Result<(), i32> {
            if ptr == 0 || len <= 0 {
                return Ok(());
            }
            if text.len() + 1 > len as usize {
                return Err(EAI_OVERFLOW);
            }
            guest::write_bytes(mem, ptr, text.as_bytes()).map_err(|_| EAI_OVERFLOW)?;
            guest::write_bytes(mem, ptr + text.len() as i32, &[0]).map_err(|_| EAI_OVERFLOW)
        };
        match put(host, hostlen, addr.to_string()).and_then(|()| put(serv, servlen, port.to_string())) {
            Ok(()) => 0,
            Err(code) => code,
        }
    })
}
