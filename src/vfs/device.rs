//! Character devices under `/dev` and the state behind them (output sinks, `/dev/blob`).

use std::fmt;
use std::sync::Arc;

use super::errno::{Errno, VfsResult};

/// Receives the bytes the guest writes to its standard output or standard error, exactly as
/// written (no line buffering).
pub type OutputSink = Arc<dyn Fn(&[u8]) + Send + Sync>;

/// A character device node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Device {
    /// `/dev/null`: reads end at once, writes are swallowed.
    Null,
    /// `/dev/zero`: reads give zeros, writes are swallowed.
    Zero,
    /// `/dev/tty`, `/dev/tty1`: like `/dev/null`, but a terminal for `isatty`.
    Tty,
    /// `/dev/random`, `/dev/urandom`: reads give random bytes, writes are swallowed.
    Random,
    /// `/dev/stdin` (fd 0): always at end of file.
    Stdin,
    /// `/dev/stdout` (fd 1): writes go to the stdout sink.
    Stdout,
    /// `/dev/stderr` (fd 2): writes go to the stderr sink.
    Stderr,
    /// `/dev/blob`: reads come from the blob input (at the file position), writes append to the
    /// blob output. Used by `COPY ... TO/FROM '/dev/blob'`.
    Blob,
}

/// How `lseek` behaves on a device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SeekBehaviour {
    /// The position stays 0 and every seek succeeds (Linux does this for `/dev/null`).
    AlwaysZero,
    /// A real position, like a file.
    Positional,
    /// `ESPIPE`, as for a terminal.
    Unseekable,
}

impl Device {
    /// The device number (`makedev(major, minor)` in the old 8-bit encoding Emscripten uses).
    pub fn rdev(self) -> u32 {
        let (major, minor) = match self {
            Device::Null => (1, 3),
            Device::Zero => (1, 5),
            Device::Random => (1, 9),
            Device::Tty => (5, 0),
            Device::Stdin | Device::Stdout | Device::Stderr => (6, 0),
            Device::Blob => (64, 0),
        };
        (major << 8) | minor
    }

    /// Whether `isatty` is true for this device.
    pub fn is_tty(self) -> bool {
        self == Device::Tty
    }

    /// How seeking behaves on this device.
    pub fn seek_behaviour(self) -> SeekBehaviour {
        match self {
            Device::Null | Device::Zero | Device::Random => SeekBehaviour::AlwaysZero,
            Device::Blob => SeekBehaviour::Positional,
            Device::Tty | Device::Stdin | Device::Stdout | Device::Stderr => SeekBehaviour::Unseekable,
        }
    }
}

/// Everything the devices need besides the node: sinks and the `/dev/blob` buffers.
#[derive(Clone, Default)]
pub(crate) struct DeviceState {
    pub stdout: Option<OutputSink>,
    pub stderr: Option<OutputSink>,
    pub blob_input: Vec<u8>,
    pub blob_output: Vec<u8>,
}

impl DeviceState {
    /// Reads from `device` at file position `pos` (only `/dev/blob` uses the position).
    pub fn read(&mut self, device: Device, buf: &mut [u8], pos: u64) -> VfsResult<usize> {
        match device {
            Device::Null | Device::Tty | Device::Stdin | Device::Stdout | Device::Stderr => Ok(0),
            Device::Zero => {
                buf.fill(0);
                Ok(buf.len())
            }
            Device::Random => {
                getrandom::fill(buf).map_err(|err| {
                    tracing::warn!(%err, "host random source failed");
                    Errno::EIO
                })?;
                Ok(buf.len())
            }
            Device::Blob => {
                let input = &self.blob_input;
                let start = usize::try_from(pos).unwrap_or(usize::MAX).min(input.len());
                let n = buf.len().min(input.len() - start);
                buf[..n].copy_from_slice(&input[start..start + n]);
                Ok(n)
            }
        }
    }

    /// Writes to `device`; every device takes all the bytes.
    pub fn write(&mut self, device: Device, buf: &[u8]) -> VfsResult<usize> {
        match device {
            Device::Stdout => emit(self.stdout.as_ref(), buf),
            Device::Stderr => emit(self.stderr.as_ref(), buf),
            Device::Blob => self.blob_output.extend_from_slice(buf),
            Device::Null | Device::Zero | Device::Tty | Device::Random | Device::Stdin => {}
        }
        Ok(buf.len())
    }
}

fn emit(sink: Option<&OutputSink>, bytes: &[u8]) {
    if let Some(sink) = sink
        && !bytes.is_empty()
    {
        sink(bytes);
    }
}

impl fmt::Debug for DeviceState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeviceState")
            .field("stdout_sink", &self.stdout.is_some())
            .field("stderr_sink", &self.stderr.is_some())
            .field("blob_input_len", &self.blob_input.len())
            .field("blob_output_len", &self.blob_output.len())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[test]
    fn random_gives_nonzero_bytes() {
        let mut state = DeviceState::default();
        let mut buf = [0u8; 64];
        assert_eq!(state.read(Device::Random, &mut buf, 0), Ok(64));
        assert!(buf.iter().any(|&b| b != 0));
    }

    #[test]
    fn null_zero_and_stdin() {
        let mut state = DeviceState::default();
        let mut buf = [5u8; 8];
        assert_eq!(state.read(Device::Null, &mut buf, 0), Ok(0));
        assert_eq!(state.read(Device::Stdin, &mut buf, 0), Ok(0));
        assert_eq!(state.read(Device::Zero, &mut buf, 0), Ok(8));
        assert_eq!(buf, [0u8; 8]);
        assert_eq!(state.write(Device::Null, b"gone"), Ok(4));
    }

    #[test]
    fn sinks_receive_exact_bytes() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink_seen = Arc::clone(&seen);
        let mut state = DeviceState {
            stderr: Some(Arc::new(move |bytes: &[u8]| {
                sink_seen.lock().unwrap().extend_from_slice(bytes)
            })),
            ..DeviceState::default()
        };
        state.write(Device::Stderr, b"LOG:  hello\n").unwrap();
        state.write(Device::Stdout, b"dropped").unwrap();
        assert_eq!(&*seen.lock().unwrap(), b"LOG:  hello\n");
    }

    #[test]
    fn blob_reads_at_position_and_appends_writes() {
        let mut state = DeviceState {
            blob_input: b"1,a\n2,b\n".to_vec(),
            ..DeviceState::default()
        };
        let mut buf = [0u8; 5];
        assert_eq!(state.read(Device::Blob, &mut buf, 0), Ok(5));
        assert_eq!(&buf, b"1,a\n2");
        assert_eq!(state.read(Device::Blob, &mut buf, 5), Ok(3));
        assert_eq!(state.read(Device::Blob, &mut buf, 8), Ok(0));
        assert_eq!(state.read(Device::Blob, &mut buf, u64::MAX), Ok(0));
        state.write(Device::Blob, b"x").unwrap();
        state.write(Device::Blob, b"y").unwrap();
        assert_eq!(state.blob_output, b"xy");
    }
}
