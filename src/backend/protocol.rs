//! Framing checks on frontend bytes before they reach the backend.
//!
//! The backend is one Postgres session that dies on malformed input (an unknown message type is a
//! FATAL protocol violation; a message cut short reads as EOF). `exec` therefore only passes on
//! buffers made of complete messages of known types.

use std::fmt;

/// Frontend message types a backend in the normal protocol state accepts.
const FRONTEND_TYPES: &[u8] = b"BCdcfDEHFPpQSX";

/// The length field of a message counts itself, so it is at least 4.
const MIN_LENGTH: u32 = 4;

/// The protocol code of the special packets sent without a type byte.
pub(crate) const PROTOCOL_3_0: u32 = 196_608;
pub(crate) const SSL_REQUEST: u32 = 80_877_103;
pub(crate) const GSSENC_REQUEST: u32 = 80_877_104;
pub(crate) const CANCEL_REQUEST: u32 = 80_877_102;

/// What is wrong with a frontend buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProtocolError {
    /// A message type byte no frontend sends.
    UnknownMessageType {
        /// The byte.
        tag: u8,
        /// Offset of the message in the buffer.
        offset: usize,
    },
    /// A length field below 4.
    InvalidLength {
        /// The message type.
        tag: u8,
        /// The length field.
        length: u32,
    },
    /// The buffer ends inside a message.
    Incomplete {
        /// The message type.
        tag: u8,
        /// Bytes the message claims.
        needed: usize,
        /// Bytes present.
        available: usize,
    },
    /// A startup-phase packet (no type byte) that is not a StartupMessage or a request the host
    /// answers itself.
    BadStartupPacket(String),
}

impl fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProtocolError::UnknownMessageType { tag, offset } => {
                write!(
                    f,
                    "invalid frontend message type {:?} (0x{tag:02x}) at byte {offset}",
                    *tag as char
                )
            }
            ProtocolError::InvalidLength { tag, length } => {
                write!(f, "invalid length {length} in a {:?} message", *tag as char)
            }
            ProtocolError::Incomplete {
                tag,
                needed,
                available,
            } => write!(
                f,
                "incomplete {:?} message: it claims {needed} bytes but only {available} were sent",
                *tag as char
            ),
            ProtocolError::BadStartupPacket(why) => write!(f, "invalid startup packet: {why}"),
        }
    }
}

impl std::error::Error for ProtocolError {}

/// One message in a checked buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Frame {
    pub tag: u8,
    pub start: usize,
    pub end: usize,
}

/// Splits `buf` into complete frontend messages, or says what is wrong with it.
#[cfg(test)]
fn frames(buf: &[u8]) -> Result<Vec<Frame>, ProtocolError> {
    checked_frames(buf).collect()
}

/// How much of `buf` to run: all of it, up to a Terminate (which is dropped with what follows).
/// Checks every message on the way, as [`frames`] does, without collecting them.
pub(crate) fn runnable_len(buf: &[u8]) -> Result<usize, ProtocolError> {
    for frame in checked_frames(buf) {
        let frame = frame?;
        if frame.tag == b'X' {
            return Ok(frame.start);
        }
    }
    Ok(buf.len())
}

/// The messages of `buf`, each checked; the walk ends at the first error.
fn checked_frames(buf: &[u8]) -> impl Iterator<Item = Result<Frame, ProtocolError>> + '_ {
    let mut at = 0;
    std::iter::from_fn(move || {
        if at >= buf.len() {
            return None;
        }
        let frame = check_frame(buf, at);
        // After an error the walk stops.
        at = match &frame {
            Ok(frame) => frame.end,
            Err(_) => buf.len(),
        };
        Some(frame)
    })
}

/// The message starting at `at`.
fn check_frame(buf: &[u8], at: usize) -> Result<Frame, ProtocolError> {
    let tag = buf[at];
    if !FRONTEND_TYPES.contains(&tag) {
        return Err(ProtocolError::UnknownMessageType { tag, offset: at });
    }
    let Some(len_bytes) = buf.get(at + 1..at + 5) else {
        return Err(ProtocolError::Incomplete {
            tag,
            needed: 5,
            available: buf.len() - at,
        });
    };
    let length = u32::from_be_bytes(len_bytes.try_into().expect("4 bytes"));
    if length < MIN_LENGTH {
        return Err(ProtocolError::InvalidLength { tag, length });
    }
    let end = at + 1 + length as usize;
    if end > buf.len() {
        return Err(ProtocolError::Incomplete {
            tag,
            needed: 1 + length as usize,
            available: buf.len() - at,
        });
    }
    Ok(Frame { tag, start: at, end })
}

/// A packet of the startup phase: a length, a protocol code, a body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StartupPacket {
    Startup,
    SslRequest,
    GssEncRequest,
    CancelRequest,
}

/// Classifies a startup-phase packet (which starts with its length, not a type byte).
pub(crate) fn startup_packet(buf: &[u8]) -> Result<StartupPacket, ProtocolError> {
    let bad = |why: &str| ProtocolError::BadStartupPacket(why.to_owned());
    if buf.len() < 8 {
        return Err(bad("shorter than 8 bytes"));
    }
    let length = u32::from_be_bytes(buf[0..4].try_into().expect("4 bytes")) as usize;
    if length != buf.len() {
        return Err(bad(&format!(
            "length field {length} but {} bytes sent",
            buf.len()
        )));
    }
    let code = u32::from_be_bytes(buf[4..8].try_into().expect("4 bytes"));
    match code {
        PROTOCOL_3_0 if buf.last() == Some(&0) => Ok(StartupPacket::Startup),
        PROTOCOL_3_0 => Err(bad("StartupMessage not terminated by a zero byte")),
        SSL_REQUEST => Ok(StartupPacket::SslRequest),
        GSSENC_REQUEST => Ok(StartupPacket::GssEncRequest),
        CANCEL_REQUEST => Ok(StartupPacket::CancelRequest),
        other => Err(bad(&format!(
            "unsupported protocol version {}.{}",
            other >> 16,
            other & 0xffff
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn complete_messages_are_split() {
        let buf = b"Q\x00\x00\x00\x0dSELECT 1\x00S\x00\x00\x00\x04";
        let frames = frames(buf).unwrap();
        assert_eq!(frames.len(), 2);
        assert_eq!((frames[0].tag, frames[0].end), (b'Q', 14));
        assert_eq!((frames[1].tag, frames[1].start, frames[1].end), (b'S', 14, 19));
    }

    #[test]
    fn garbage_and_truncation_are_refused() {
        assert_eq!(
            frames(b"\xffxyz"),
            Err(ProtocolError::UnknownMessageType { tag: 0xff, offset: 0 })
        );
        assert!(matches!(
            frames(b"Q\x00\x00\x00\x0dSELECT"),
            Err(ProtocolError::Incomplete { tag: b'Q', .. })
        ));
        assert!(matches!(
            frames(b"Q\x00\x00"),
            Err(ProtocolError::Incomplete { .. })
        ));
        assert_eq!(
            frames(b"S\x00\x00\x00\x02"),
            Err(ProtocolError::InvalidLength { tag: b'S', length: 2 })
        );
    }

    #[test]
    fn a_terminate_ends_what_runs_and_anything_malformed_is_refused() {
        let query = b"Q\x00\x00\x00\x0dSELECT 1\x00";
        let with_terminate = [&query[..], b"X\x00\x00\x00\x04", b"\xffgarbage after"].concat();
        assert_eq!(runnable_len(query), Ok(query.len()));
        assert_eq!(runnable_len(&with_terminate), Ok(query.len()));
        assert_eq!(
            runnable_len(&[&query[..], b"\xff"].concat()),
            Err(ProtocolError::UnknownMessageType {
                tag: 0xff,
                offset: query.len()
            })
        );
    }

    #[test]
    fn startup_packets_are_classified() {
        let ssl = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];
        assert_eq!(startup_packet(&ssl), Ok(StartupPacket::SslRequest));
        let mut startup = vec![0, 0, 0, 0, 0, 3, 0, 0];
        startup.extend_from_slice(b"user\0postgres\0\0");
        let len = startup.len() as u32;
        startup[0..4].copy_from_slice(&len.to_be_bytes());
        assert_eq!(startup_packet(&startup), Ok(StartupPacket::Startup));
        assert!(startup_packet(&[0, 0, 0, 9, 0, 2, 0, 0, 0]).is_err());
    }
}
