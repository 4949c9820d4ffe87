//! MySQL 8's compressed transactions (`binlog_transaction_compression = ON`): a
//! Transaction_payload event holds a whole transaction's events, zstd-compressed.
//!
//! mysql_async decompresses it and yields the events inside after it, but a payload it cannot
//! decompress yields nothing at all, without an error, and the events inside carry no position
//! of their own (their end position is 0). So the source decompresses each payload itself first
//! ([`inner_events`]: an error here stops it), expects exactly that many events to follow, and
//! gives them the payload's end position, which is the transaction's. Fewer events than the
//! payload holds is an error, never a transaction cut short.

use std::io::Read;

use mysql_async::binlog::events::TransactionPayloadEvent;

use crate::error::{Error, Result};

/// The common binlog event header; its bytes 9..13 are the event's size.
const EVENT_HEADER_LEN: usize = 19;

fn bad(what: impl std::fmt::Display) -> Error {
    Error::Protocol(format!("a compressed transaction payload: {what}"))
}

/// How many events a Transaction_payload event holds, counted while it decompresses (the
/// events themselves are not kept: mysql_async holds the decompressed payload already).
pub fn inner_events(tpe: &TransactionPayloadEvent<'_>) -> Result<usize> {
    let reader = tpe
        .decompressed()
        .map_err(|e| bad(format!("does not decompress: {e}")))?;
    let (n, len) = count_events_in(reader)?;
    if tpe.uncompressed_size() != 0 && len != tpe.uncompressed_size() {
        return Err(bad(format!(
            "{len} bytes after decompression, the event says {}",
            tpe.uncompressed_size()
        )));
    }
    Ok(n)
}

/// The number of whole binlog events `data` holds back to back, each announcing its size.
pub fn count_events(data: &[u8]) -> Result<usize> {
    count_events_in(data).map(|(n, _)| n)
}

/// The events a stream of back-to-back binlog events holds, and its length in bytes.
fn count_events_in(mut input: impl Read) -> Result<(usize, u64)> {
    let mut header = [0u8; EVENT_HEADER_LEN];
    let (mut n, mut at) = (0usize, 0u64);
    loop {
        let got = read_up_to(&mut input, &mut header)?;
        if got == 0 {
            break;
        }
        if got < EVENT_HEADER_LEN {
            return Err(bad("ends inside an event header"));
        }
        let size = u64::from(u32::from_le_bytes([
            header[9], header[10], header[11], header[12],
        ]));
        if size < EVENT_HEADER_LEN as u64 {
            return Err(bad(format!("an event of {size} bytes at byte {at}")));
        }
        let body = size - EVENT_HEADER_LEN as u64;
        let skipped = std::io::copy(&mut (&mut input).take(body), &mut std::io::sink())
            .map_err(|e| bad(format!("does not decompress: {e}")))?;
        if skipped != body {
            return Err(bad(format!(
                "ends inside the event of {size} bytes at byte {at}"
            )));
        }
        at += size;
        n += 1;
    }
    if n == 0 {
        return Err(bad("holds no event"));
    }
    Ok((n, at))
}

/// Fills `buf` as far as `input` goes; the bytes read.
fn read_up_to(input: &mut impl Read, buf: &mut [u8]) -> Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match input.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(k) => got += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(bad(format!("does not decompress: {e}"))),
        }
    }
    Ok(got)
}

/// The payload being read: its end position, the events it still owes, and how many it held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pending {
    pub end: u64,
    pub remaining: usize,
    pub total: usize,
}

impl Pending {
    /// Accounts for the next event of the stream, whose header says it ends at `log_pos`:
    /// the position to give it, or an error if the payload's events stopped short. An event
    /// from inside the payload carries no position (0) or, were a server to write one, one at
    /// or before the payload's end; an event past the payload's end comes from after it.
    pub fn next(&mut self, log_pos: u64) -> Result<u64> {
        if log_pos > self.end {
            return Err(bad(format!(
                "it held {} events, the client library yielded {} before an event from outside it",
                self.total,
                self.total - self.remaining
            )));
        }
        self.remaining -= 1;
        Ok(self.end)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mysql_common::binlog::consts::TransactionPayloadCompressionType;
    use proptest::prelude::*;

    /// A fake event of `size` bytes: only the header's size field matters here.
    fn event(size: u32) -> Vec<u8> {
        let mut e = vec![0u8; size as usize];
        e[4] = 2;
        e[9..13].copy_from_slice(&size.to_le_bytes());
        e
    }

    fn payload(events: &[u32]) -> Vec<u8> {
        events.iter().flat_map(|s| event(*s)).collect()
    }

    #[test]
    fn a_compressed_payload_counts_its_events_and_a_damaged_one_is_an_error() {
        let plain = payload(&[60, 19, 300, 31]);
        let packed = zstd::encode_all(&plain[..], 3).unwrap();
        let tpe = TransactionPayloadEvent::new(
            packed.len() as u64,
            TransactionPayloadCompressionType::ZSTD,
            plain.len() as u64,
            packed.clone(),
        );
        assert_eq!(inner_events(&tpe).unwrap(), 4);
        let mut broken = packed.clone();
        let mid = broken.len() / 2;
        broken[mid] ^= 0xff;
        let tpe = TransactionPayloadEvent::new(
            broken.len() as u64,
            TransactionPayloadCompressionType::ZSTD,
            plain.len() as u64,
            broken,
        );
        assert!(inner_events(&tpe).is_err());
        let tpe = TransactionPayloadEvent::new(
            plain.len() as u64,
            TransactionPayloadCompressionType::NONE,
            0,
            plain.clone(),
        );
        assert_eq!(inner_events(&tpe).unwrap(), 4);
    }

    #[test]
    fn the_events_inside_take_the_payload_position_and_a_short_stream_is_an_error() {
        let mut p = Pending {
            end: 900,
            remaining: 2,
            total: 2,
        };
        assert_eq!(p.next(0).unwrap(), 900);
        let mut short = p;
        assert_eq!(p.next(0).unwrap(), 900);
        assert_eq!(p.remaining, 0);
        // An inner event that carries a position inside the payload is still one of its own.
        let mut carried = short;
        assert_eq!(carried.next(850).unwrap(), 900);
        let e = short.next(1200).unwrap_err();
        assert!(e.to_string().contains("held 2 events"), "{e}");
        assert!(count_events(&[]).is_err());
        assert!(count_events(&event(18)[..]).is_err());
        let mut cut = payload(&[40, 40]);
        cut.truncate(70);
        assert!(count_events(&cut).is_err());
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(b in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = count_events(&b);
        }
    }
}
