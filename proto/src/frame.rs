//! The binary frame: how one [`Event`] is written to the spool, a file or a Kafka message.
//!
//! ```text
//! offset size field
//! 0      2    magic    b"Fy"
//! 2      1    version  FORMAT_VERSION
//! 3      1    flags    0 (reserved; a reader rejects frames with unknown flags)
//! 4      4    length   payload length, u32 little-endian, at most MAX_PAYLOAD
//! 8      4    crc      CRC-32C (Castagnoli) of bytes 0..8 and the payload, u32 little-endian
//! 12     len  payload  the event, bincode 2 (standard config: little-endian, varint integers)
//! ```
//!
//! The full specification, with the payload's encoding rules, is `docs/format.md`. Decoding never
//! panics: every malformed input is a [`FrameError`], and a frame cut short is told apart from a
//! corrupt one ([`FrameError::Incomplete`]) so the spool can recognise a torn write at its tail.

use crate::event::Event;

/// The two magic bytes that open every frame.
pub const MAGIC: [u8; 2] = *b"Fy";
/// The frame format version this build writes.
///
/// - 2: a PostgreSQL transaction's position (Begin, Commit) is the end LSN of its commit record,
///   so a position has one meaning everywhere (see [`crate::position`]).
/// - 1: it was the commit record's start LSN. Read by adding one, which compares the same as the
///   end LSN against every position ferry compares it with (those are record boundaries), and
///   which is what version 1's own resume and acknowledgement used.
pub const FORMAT_VERSION: u8 = 2;
/// The oldest frame format version this build reads.
pub const OLDEST_READ_VERSION: u8 = 1;
/// Size of the frame header in bytes.
pub const HEADER_LEN: usize = 12;
/// The largest payload accepted: 1 GiB, PostgreSQL's largest field, leaves room for one huge value.
pub const MAX_PAYLOAD: usize = 1 << 30;

type Config = bincode::config::Configuration<
    bincode::config::LittleEndian,
    bincode::config::Varint,
    bincode::config::Limit<MAX_PAYLOAD>,
>;

fn config() -> Config {
    bincode::config::standard()
        .with_little_endian()
        .with_variable_int_encoding()
        .with_limit::<MAX_PAYLOAD>()
}

/// Why bytes are not a valid frame.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The input ends before the frame does; `needed` more bytes would complete the header or the
    /// payload. At the tail of a log this is a torn write, not corruption.
    #[error("frame incomplete: {needed} more bytes needed")]
    Incomplete { needed: usize },
    #[error("bad frame magic {found:02x?}: not a ferry frame, or the data is corrupt")]
    BadMagic { found: [u8; 2] },
    #[error(
        "frame format version {found} is not supported (this build reads versions \
         {OLDEST_READ_VERSION} to {FORMAT_VERSION})"
    )]
    UnsupportedVersion { found: u8 },
    #[error("frame has unknown flags {found:#04x}")]
    UnknownFlags { found: u8 },
    #[error("frame payload of {len} bytes exceeds the {MAX_PAYLOAD}-byte limit")]
    Oversized { len: usize },
    #[error("frame checksum mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    Checksum { stored: u32, computed: u32 },
    #[error("frame payload does not decode: {0}")]
    Payload(#[source] bincode::error::DecodeError),
    #[error("frame payload has {0} trailing bytes after the event")]
    TrailingBytes(usize),
    #[error("event does not encode: {0}")]
    Encode(#[source] bincode::error::EncodeError),
}

/// A validated frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub payload_len: usize,
    pub crc: u32,
}

impl Header {
    /// Header plus payload.
    pub fn frame_len(&self) -> usize {
        HEADER_LEN + self.payload_len
    }
}

/// Appends the frame of `event` to `out` and returns the frame's length.
pub fn encode(event: &Event, out: &mut Vec<u8>) -> Result<usize, FrameError> {
    let start = out.len();
    out.extend_from_slice(&[0; HEADER_LEN]);
    if let Err(e) = bincode::serde::encode_into_std_write(event, out, config()) {
        out.truncate(start);
        return Err(FrameError::Encode(e));
    }
    let payload_len = out.len() - start - HEADER_LEN;
    if payload_len > MAX_PAYLOAD {
        out.truncate(start);
        return Err(FrameError::Oversized { len: payload_len });
    }
    let len = u32::try_from(payload_len).map_err(|_| FrameError::Oversized { len: payload_len })?;
    let frame = &mut out[start..];
    frame[0..2].copy_from_slice(&MAGIC);
    frame[2] = FORMAT_VERSION;
    frame[3] = 0;
    frame[4..8].copy_from_slice(&len.to_le_bytes());
    let crc = crc32c::crc32c_append(crc32c::crc32c(&frame[0..8]), &frame[HEADER_LEN..]);
    frame[8..12].copy_from_slice(&crc.to_le_bytes());
    Ok(HEADER_LEN + payload_len)
}

/// Encodes one event into a fresh buffer.
pub fn encode_to_vec(event: &Event) -> Result<Vec<u8>, FrameError> {
    let mut out = Vec::with_capacity(256);
    encode(event, &mut out)?;
    Ok(out)
}

/// Validates the header at the start of `buf` (which may hold less than a whole frame).
pub fn decode_header(buf: &[u8]) -> Result<Header, FrameError> {
    // Check each field as soon as its bytes are there, so garbage is reported as corruption
    // rather than as a frame waiting for more bytes.
    if let Some(m) = buf.get(0..2)
        && m != MAGIC
    {
        return Err(FrameError::BadMagic {
            found: [m[0], m[1]],
        });
    }
    if let Some(&v) = buf.get(2)
        && !(OLDEST_READ_VERSION..=FORMAT_VERSION).contains(&v)
    {
        return Err(FrameError::UnsupportedVersion { found: v });
    }
    if let Some(&f) = buf.get(3)
        && f != 0
    {
        return Err(FrameError::UnknownFlags { found: f });
    }
    let Some(h) = buf.get(0..HEADER_LEN) else {
        return Err(FrameError::Incomplete {
            needed: HEADER_LEN - buf.len(),
        });
    };
    let payload_len = u32::from_le_bytes([h[4], h[5], h[6], h[7]]) as usize;
    if payload_len > MAX_PAYLOAD {
        return Err(FrameError::Oversized { len: payload_len });
    }
    Ok(Header {
        payload_len,
        crc: u32::from_le_bytes([h[8], h[9], h[10], h[11]]),
    })
}

/// Checks `payload` against `header` and decodes the event it holds.
pub fn decode_payload(
    header_bytes: &[u8; HEADER_LEN],
    header: &Header,
    payload: &[u8],
) -> Result<Event, FrameError> {
    let computed = crc32c::crc32c_append(crc32c::crc32c(&header_bytes[0..8]), payload);
    if computed != header.crc {
        return Err(FrameError::Checksum {
            stored: header.crc,
            computed,
        });
    }
    let (event, used) = bincode::serde::decode_from_slice::<Event, _>(payload, config())
        .map_err(FrameError::Payload)?;
    if used != payload.len() {
        return Err(FrameError::TrailingBytes(payload.len() - used));
    }
    Ok(match header_bytes[2] {
        1 => upgrade_v1(event),
        _ => event,
    })
}

/// A version 1 event in version 2's meaning: a PostgreSQL transaction's position moves from its
/// commit record's start to the first LSN after it.
fn upgrade_v1(mut event: Event) -> Event {
    use crate::position::{Lsn, Position};
    if let Event::Begin(crate::Begin { position, .. })
    | Event::Commit(crate::Commit { position, .. }) = &mut event
        && let Position::Postgres(Lsn(l)) = position
    {
        *l = l.saturating_add(1);
    }
    event
}

/// Decodes the frame at the start of `buf`; returns the event and the frame's length.
pub fn decode(buf: &[u8]) -> Result<(Event, usize), FrameError> {
    let header = decode_header(buf)?;
    let total = header.frame_len();
    if buf.len() < total {
        return Err(FrameError::Incomplete {
            needed: total - buf.len(),
        });
    }
    let mut hb = [0u8; HEADER_LEN];
    hb.copy_from_slice(&buf[..HEADER_LEN]);
    let event = decode_payload(&hb, &header, &buf[HEADER_LEN..total])?;
    Ok((event, total))
}

#[cfg(test)]
mod tests;
