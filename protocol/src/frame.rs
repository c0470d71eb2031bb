//! Framing: a 12-byte header — magic `b"CCN1"`, protocol version (u16 BE), reserved (u16), payload
//! length (u32 BE) — then the message as JSON. A peer rejects a wrong magic, another version, or a
//! frame over [`MAX_FRAME_LEN`] before reading its payload, so a hostile peer cannot make it
//! allocate without bound.

use std::io::{self, Read, Write};

use crate::messages::Message;

pub const MAGIC: [u8; 4] = *b"CCN1";
pub const PROTOCOL_VERSION: u16 = 1;
/// Largest payload accepted: control messages are small; bulk data never travels here.
pub const MAX_FRAME_LEN: u32 = 1 << 20;
const HEADER_LEN: usize = 12;

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("the peer closed the channel")]
    Closed,
    #[error("reading or writing the channel: {0}")]
    Io(#[from] io::Error),
    #[error("not a cocoon protocol frame (magic {0:02x?})")]
    BadMagic([u8; 4]),
    #[error("the peer speaks protocol version {0}, this side speaks {PROTOCOL_VERSION}")]
    UnsupportedVersion(u16),
    #[error("frame of {0} bytes is over the {MAX_FRAME_LEN}-byte limit")]
    TooLarge(u64),
    #[error("malformed message: {0}")]
    Malformed(#[from] serde_json::Error),
}

/// Writes one message as one frame.
pub fn write_message<W: Write>(out: &mut W, message: &Message) -> Result<(), FrameError> {
    let payload = serde_json::to_vec(message)?;
    if payload.len() as u64 > u64::from(MAX_FRAME_LEN) {
        return Err(FrameError::TooLarge(payload.len() as u64));
    }
    let mut frame = Vec::with_capacity(HEADER_LEN + payload.len());
    frame.extend_from_slice(&MAGIC);
    frame.extend_from_slice(&PROTOCOL_VERSION.to_be_bytes());
    frame.extend_from_slice(&0u16.to_be_bytes());
    frame.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    frame.extend_from_slice(&payload);
    out.write_all(&frame)?;
    out.flush()?;
    Ok(())
}

/// Reads one frame and decodes its message. A clean end of stream before a header is `Closed`.
pub fn read_message<R: Read>(input: &mut R) -> Result<Message, FrameError> {
    let mut header = [0u8; HEADER_LEN];
    let mut filled = 0;
    while filled < HEADER_LEN {
        match input.read(&mut header[filled..]) {
            Ok(0) if filled == 0 => return Err(FrameError::Closed),
            Ok(0) => return Err(FrameError::Io(io::ErrorKind::UnexpectedEof.into())),
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    let magic: [u8; 4] = header[0..4].try_into().expect("4 bytes");
    if magic != MAGIC {
        return Err(FrameError::BadMagic(magic));
    }
    let version = u16::from_be_bytes([header[4], header[5]]);
    if version != PROTOCOL_VERSION {
        return Err(FrameError::UnsupportedVersion(version));
    }
    let len = u32::from_be_bytes(header[8..12].try_into().expect("4 bytes"));
    if len > MAX_FRAME_LEN {
        return Err(FrameError::TooLarge(u64::from(len)));
    }
    let mut payload = vec![0u8; len as usize];
    input.read_exact(&mut payload)?;
    Ok(serde_json::from_slice(&payload)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::messages::*;

    fn round_trip(m: &Message) -> Message {
        let mut buf = Vec::new();
        write_message(&mut buf, m).unwrap();
        read_message(&mut buf.as_slice()).unwrap()
    }

    #[test]
    fn every_kind_of_message_round_trips() {
        let spec = oci_spec::runtime::Spec::default();
        let messages = vec![
            Message::Request(Request {
                id: 1,
                op: Operation::CreateContainer {
                    container_id: "c1".into(),
                    spec: Box::new(spec),
                    rootfs: Rootfs::BlockDevice {
                        device: "/dev/vdb".into(),
                        fstype: "ext4".into(),
                        read_only: false,
                    },
                    stdio: StdioPorts {
                        stdin: None,
                        stdout: Some(2000),
                        stderr: Some(2001),
                        token: "0".repeat(32),
                    },
                },
            }),
            Message::Request(Request {
                id: 2,
                op: Operation::Signal {
                    container_id: "c1".into(),
                    exec_id: None,
                    signal: 9,
                    all: true,
                },
            }),
            Message::Response(Response {
                id: 2,
                result: Ok(Reply::Exited {
                    status: ExitStatus::Signaled(9),
                }),
            }),
            Message::Response(Response {
                id: 3,
                result: Err(AgentError::new(ErrorKind::NotFound, "no container c9")),
            }),
            Message::Event(Event::Oom {
                container_id: "c1".into(),
            }),
        ];
        for m in &messages {
            assert_eq!(&round_trip(m), m);
        }
    }

    #[test]
    fn several_frames_on_one_stream() {
        let mut buf = Vec::new();
        for id in 0..3 {
            let m = Message::Request(Request {
                id,
                op: Operation::Version,
            });
            write_message(&mut buf, &m).unwrap();
        }
        let mut input = buf.as_slice();
        for id in 0..3 {
            match read_message(&mut input).unwrap() {
                Message::Request(r) => assert_eq!(r.id, id),
                other => panic!("{other:?}"),
            }
        }
        assert!(matches!(read_message(&mut input), Err(FrameError::Closed)));
    }

    fn header(magic: &[u8; 4], version: u16, len: u32) -> Vec<u8> {
        let mut h = magic.to_vec();
        h.extend_from_slice(&version.to_be_bytes());
        h.extend_from_slice(&[0, 0]);
        h.extend_from_slice(&len.to_be_bytes());
        h
    }

    #[test]
    fn hostile_frames_are_errors() {
        let bad_magic = header(b"HTTP", 1, 2);
        assert!(matches!(
            read_message(&mut bad_magic.as_slice()),
            Err(FrameError::BadMagic(_))
        ));
        let other_version = header(&MAGIC, 7, 2);
        assert!(matches!(
            read_message(&mut other_version.as_slice()),
            Err(FrameError::UnsupportedVersion(7))
        ));
        let huge = header(&MAGIC, 1, u32::MAX);
        assert!(matches!(
            read_message(&mut huge.as_slice()),
            Err(FrameError::TooLarge(_))
        ));
        let mut truncated = header(&MAGIC, 1, 100);
        truncated.extend_from_slice(b"{\"message\"");
        assert!(matches!(
            read_message(&mut truncated.as_slice()),
            Err(FrameError::Io(_))
        ));
        let mut garbage = header(&MAGIC, 1, 5);
        garbage.extend_from_slice(b"nope!");
        assert!(matches!(
            read_message(&mut garbage.as_slice()),
            Err(FrameError::Malformed(_))
        ));
        let half_header = &MAGIC[..2];
        assert!(matches!(
            read_message(&mut &half_header[..]),
            Err(FrameError::Io(_))
        ));
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        // A small deterministic generator: every prefix length and byte pattern mix.
        let mut state = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..2000 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let len = (state % 64) as usize;
            let mut bytes: Vec<u8> = (0..len).map(|i| (state >> (i % 8 * 8)) as u8).collect();
            if state.is_multiple_of(3) && bytes.len() >= 12 {
                bytes[..4].copy_from_slice(&MAGIC);
                bytes[4..6].copy_from_slice(&1u16.to_be_bytes());
            }
            let _ = read_message(&mut bytes.as_slice());
        }
    }

    #[test]
    fn oversized_messages_are_not_sent() {
        let m = Message::Response(Response {
            id: 1,
            result: Err(AgentError::new(
                ErrorKind::Internal,
                "x".repeat(MAX_FRAME_LEN as usize),
            )),
        });
        let mut buf = Vec::new();
        assert!(matches!(
            write_message(&mut buf, &m),
            Err(FrameError::TooLarge(_))
        ));
        assert!(buf.is_empty());
    }
}
