//! One archived object: a run of whole transactions from the spool, self-contained (the
//! relations in force come first), compressed, optionally encrypted, checksummed; and its
//! manifest, which says what it holds and commits it to the archive.
//!
//! Bytes of an object (format 1):
//!
//! ```text
//! "FERRYARC" | version u8 = 1 | flags u8 (bit 0: encrypted) | 2 bytes zero
//! payload: zstd(frames)                                  without encryption
//!          nonce (24 bytes) | XChaCha20-Poly1305(zstd(frames)), associated data = the name
//! crc32c of everything before it, u32 little-endian
//! ```
//!
//! The frames are the spool's own (proto's frame format): Relation frames for every table
//! defined at the object's start, then the transactions and heartbeats in spool order. The
//! checksum catches damage in storage or transit; the cipher's tag catches tampering and a wrong
//! key, and binding the name as associated data catches an object swapped for another.

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use ferry_proto::{Event, Position};
use ferry_spool::Offset;
use serde::{Deserialize, Serialize};

use crate::error::{ArchiveError, Result};

const MAGIC: &[u8; 8] = b"FERRYARC";
const VERSION: u8 = 1;
const HEADER_LEN: usize = 12;
const NONCE_LEN: usize = 24;

/// The key of an encrypted archive: 32 bytes, XChaCha20-Poly1305.
#[derive(Clone)]
pub struct Key(pub [u8; 32]);

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Key(***)")
    }
}

impl Key {
    /// A key written as 64 hex digits.
    pub fn from_hex(text: &str) -> Result<Key> {
        let text = text.trim();
        let bad = || {
            ArchiveError::Config("archive encryption_key must be 64 hex digits (32 bytes)".into())
        };
        if text.len() != 64 {
            return Err(bad());
        }
        let mut key = [0u8; 32];
        for (i, b) in key.iter_mut().enumerate() {
            *b = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
        }
        Ok(Key(key))
    }
}

/// What an object holds, stored beside it as JSON. Its presence commits the object to the
/// archive: an object without a manifest is an unfinished write and is not read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: u8,
    /// The object's name (relative to the archive's root).
    pub object: String,
    /// Spool offsets: the first transaction's Begin, and just after the last event.
    pub first_offset: u64,
    pub end_offset: u64,
    /// The first transaction's position and the last transaction's (or heartbeat's).
    pub first_position: Position,
    pub last_position: Position,
    /// Source commit times, microseconds since the epoch.
    pub first_commit_time: i64,
    pub last_commit_time: i64,
    pub transactions: u64,
    /// Size and crc32c of the stored object.
    pub bytes: u64,
    pub crc32c: u32,
    pub encrypted: bool,
    pub compression: String,
    /// Set when the object ends inside a transaction too large for one object (the next object
    /// continues it): where that transaction began in the spool, its position and commit time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ends_in_transaction: Option<TxnMark>,
}

/// A transaction an object ends inside.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxnMark {
    pub begin_offset: u64,
    pub position: Position,
    pub commit_time: i64,
}

/// The names of the object holding spool offsets `[first, end)`, and of its manifest; they
/// sort in stream order.
pub fn names(first: Offset, end: Offset) -> (String, String) {
    let stem = format!("log/{:016x}-{:016x}", first.0, end.0);
    (format!("{stem}.ferry"), format!("{stem}.json"))
}

/// The bytes of an object holding `frames` (concatenated spool frames).
pub fn seal(frames: &[u8], key: Option<&Key>, name: &str) -> Result<Vec<u8>> {
    seal_parts(&[frames], key, name)
}

/// The bytes of an object holding the concatenation of `parts`, compressed as they stream
/// through (no copy of the whole is made).
pub fn seal_parts(parts: &[&[u8]], key: Option<&Key>, name: &str) -> Result<Vec<u8>> {
    let mut packer = Packer::new()?;
    for part in parts {
        packer.write(part)?;
    }
    packer.finish(key, name)
}

/// An object's frames, compressed as they arrive: memory holds their compressed form only.
pub struct Packer {
    encoder: zstd::stream::Encoder<'static, Vec<u8>>,
    raw: usize,
}

impl std::fmt::Debug for Packer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Packer").field("raw", &self.raw).finish()
    }
}

fn compressing(e: std::io::Error) -> ArchiveError {
    ArchiveError::Format(format!("compressing an archive object: {e}"))
}

impl Packer {
    pub fn new() -> Result<Packer> {
        Ok(Packer {
            encoder: zstd::stream::Encoder::new(Vec::new(), 3).map_err(compressing)?,
            raw: 0,
        })
    }

    pub fn write(&mut self, bytes: &[u8]) -> Result<()> {
        std::io::Write::write_all(&mut self.encoder, bytes).map_err(compressing)?;
        self.raw += bytes.len();
        Ok(())
    }

    /// Bytes written (before compression).
    pub fn raw_len(&self) -> usize {
        self.raw
    }

    /// The object's bytes.
    pub fn finish(self, key: Option<&Key>, name: &str) -> Result<Vec<u8>> {
        let packed = self.encoder.finish().map_err(compressing)?;
        frame_object(&packed, key, name)
    }
}

/// Header, (encrypted) compressed frames, checksum.
fn frame_object(packed: &[u8], key: Option<&Key>, name: &str) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(packed.len() + 64);
    out.extend_from_slice(MAGIC);
    out.push(VERSION);
    out.push(u8::from(key.is_some()));
    out.extend_from_slice(&[0, 0]);
    match key {
        None => out.extend_from_slice(packed),
        Some(key) => {
            let mut nonce = [0u8; NONCE_LEN];
            getrandom::fill(&mut nonce)
                .map_err(|e| ArchiveError::Format(format!("no randomness for a nonce: {e}")))?;
            let cipher = XChaCha20Poly1305::new(key.0.as_slice().into());
            let sealed = cipher
                .encrypt(
                    XNonce::from_slice(&nonce),
                    Payload {
                        msg: packed,
                        aad: name.as_bytes(),
                    },
                )
                .map_err(|_| ArchiveError::Format(format!("encrypting {name} failed")))?;
            out.extend_from_slice(&nonce);
            out.extend_from_slice(&sealed);
        }
    }
    let crc = crc32c::crc32c(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    Ok(out)
}

/// The frames an object holds, after checking its checksum (and, encrypted, its tag with
/// `key`). Every failure names the object.
pub fn open(bytes: &[u8], key: Option<&Key>, name: &str) -> Result<Vec<u8>> {
    let damaged = |what: &str| ArchiveError::Damaged {
        object: name.to_owned(),
        reason: what.to_owned(),
    };
    if bytes.len() < HEADER_LEN + 4 || &bytes[..8] != MAGIC {
        return Err(damaged("not a ferry archive object"));
    }
    let (body, tail) = bytes.split_at(bytes.len() - 4);
    let stored = u32::from_le_bytes([tail[0], tail[1], tail[2], tail[3]]);
    if crc32c::crc32c(body) != stored {
        return Err(damaged(
            "checksum mismatch (the object was changed or damaged)",
        ));
    }
    if body[8] != VERSION {
        return Err(damaged(&format!(
            "format version {} is not one ferry reads",
            body[8]
        )));
    }
    let encrypted = body[9] & 1 == 1;
    let payload = &body[HEADER_LEN..];
    let packed = match (encrypted, key) {
        (false, _) => payload.to_vec(),
        (true, None) => {
            return Err(ArchiveError::Config(format!(
                "{name} is encrypted: set [archive] encryption_key"
            )));
        }
        (true, Some(key)) => {
            if payload.len() < NONCE_LEN {
                return Err(damaged("too short for its nonce"));
            }
            let (nonce, sealed) = payload.split_at(NONCE_LEN);
            let cipher = XChaCha20Poly1305::new(key.0.as_slice().into());
            cipher
                .decrypt(
                    XNonce::from_slice(nonce),
                    Payload {
                        msg: sealed,
                        aad: name.as_bytes(),
                    },
                )
                .map_err(|_| ArchiveError::Decrypt(name.to_owned()))?
        }
    };
    zstd::stream::decode_all(&packed[..]).map_err(|e| damaged(&format!("zstd: {e}")))
}

/// The events of an object's frames, in order.
pub fn events(frames: &[u8], name: &str) -> Result<Vec<Event>> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < frames.len() {
        let (event, used) =
            ferry_proto::frame::decode(&frames[at..]).map_err(|e| ArchiveError::Damaged {
                object: name.to_owned(),
                reason: format!("frame at byte {at}: {e}"),
            })?;
        out.push(event);
        at += used;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames() -> Vec<u8> {
        let mut out = Vec::new();
        for e in ferry_proto::samples::all_kinds() {
            ferry_proto::frame::encode(&e, &mut out).unwrap();
        }
        out
    }

    #[test]
    fn round_trips_plain_and_encrypted() {
        let f = frames();
        let key = Key([7; 32]);
        for k in [None, Some(&key)] {
            let bytes = seal(&f, k, "log/a.ferry").unwrap();
            assert_eq!(open(&bytes, k, "log/a.ferry").unwrap(), f);
            assert_eq!(events(&f, "x").unwrap(), ferry_proto::samples::all_kinds());
        }
    }

    #[test]
    fn damage_a_wrong_key_and_a_swapped_name_are_errors() {
        let f = frames();
        let key = Key([7; 32]);
        let bytes = seal(&f, Some(&key), "log/a.ferry").unwrap();
        let mut flipped = bytes.clone();
        flipped[20] ^= 1;
        assert!(matches!(
            open(&flipped, Some(&key), "log/a.ferry"),
            Err(ArchiveError::Damaged { .. })
        ));
        assert!(matches!(
            open(&bytes, Some(&Key([8; 32])), "log/a.ferry"),
            Err(ArchiveError::Decrypt(_))
        ));
        assert!(matches!(
            open(&bytes, Some(&key), "log/b.ferry"),
            Err(ArchiveError::Decrypt(_))
        ));
        assert!(matches!(
            open(&bytes, None, "log/a.ferry"),
            Err(ArchiveError::Config(_))
        ));
    }

    #[test]
    fn every_truncation_is_an_error_not_a_panic() {
        let bytes = seal(&frames(), None, "n").unwrap();
        for cut in 0..bytes.len() {
            assert!(open(&bytes[..cut], None, "n").is_err(), "{cut}");
        }
    }

    #[test]
    fn keys_parse_from_hex() {
        assert!(Key::from_hex(&"ab".repeat(32)).is_ok());
        assert!(Key::from_hex("abc").is_err());
        assert!(Key::from_hex(&"zz".repeat(32)).is_err());
    }
}
