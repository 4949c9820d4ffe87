//! MariaDB's compressed binlog events (`log_bin_compress = ON`): turned back into the plain events
//! they compress, so rows and statements are read by the one path every other event takes.
//!
//! MariaDB writes `QUERY_COMPRESSED_EVENT` (165) and `WRITE/UPDATE/DELETE_ROWS_COMPRESSED_EVENT`
//! (166–168 for version 1 rows events, 169–171 for version 2). The event's fixed head stays plain:
//! for a query, the post-header, status variables and database name; for rows, the table id,
//! flags, (version 2) extra data, column count and column bitmaps. The rest (the statement text, or
//! the row images) is compressed, as MariaDB's `binlog_buf_compress` writes it: one byte
//! `0x80 | algorithm << 4 | width` (algorithm 0 is zlib, the only one defined; width 1 to 4), the
//! uncompressed length in `width` bytes, big-endian, then a zlib stream. mysql_common does not
//! know these event types, so without this they would be dropped.
//!
//! [`plain_body`] works on bytes alone (and is property-tested); [`plain_event`] rebuilds a whole
//! event that mysql_common parses as the plain twin.

use std::io::Read;

use mysql_async::binlog::events::Event;

use crate::error::{Error, Result};

/// `QUERY_COMPRESSED_EVENT`.
pub const QUERY_COMPRESSED: u8 = 165;
/// The last of MariaDB's compressed event types (`DELETE_ROWS_COMPRESSED_EVENT`).
pub const LAST_COMPRESSED: u8 = 171;
/// The common binlog event header: timestamp, type, server id, size, end position, flags.
const EVENT_HEADER_LEN: usize = 19;
/// A binlog event is at most `max_allowed_packet`, 1 GiB.
const MAX_EVENT: usize = 1 << 30;

/// Whether `event_type` is one of MariaDB's compressed events.
pub fn is_compressed(event_type: u8) -> bool {
    (QUERY_COMPRESSED..=LAST_COMPRESSED).contains(&event_type)
}

fn bad(event_type: u8, what: &str) -> Error {
    Error::Protocol(format!(
        "a MariaDB compressed binlog event (type {event_type}) that does not decode: {what}"
    ))
}

/// The plain event type and body of a compressed event's `body` (the bytes after the common
/// header, without the checksum). `post_header_len` is the format description's table of
/// post-header lengths, indexed by event type minus one.
pub fn plain_body(event_type: u8, body: &[u8], post_header_len: &[u8]) -> Result<(u8, Vec<u8>)> {
    let err = |what: &str| bad(event_type, what);
    let post = |t: u8| {
        post_header_len
            .get(usize::from(t) - 1)
            .copied()
            .map(usize::from)
            .ok_or_else(|| err("the format description has no post-header length for it"))
    };
    let (plain, head) = match event_type {
        QUERY_COMPRESSED => {
            // thread id 4, exec time 4, database name length 1, error code 2, status length 2.
            let post_len = post(QUERY_COMPRESSED)?;
            if post_len < 13 || body.len() < post_len {
                return Err(err("shorter than its post-header"));
            }
            let db_len = usize::from(body[8]);
            let status_len = usize::from(u16::from_le_bytes([body[11], body[12]]));
            (2, post_len + status_len + db_len + 1)
        }
        166..=LAST_COMPRESSED => {
            let post_len = post(event_type)?;
            if post_len < 8 || body.len() < post_len {
                return Err(err("shorter than its post-header"));
            }
            let mut p = 8; // table id 6, flags 2
            if post_len == 10 {
                // Version 2's extra data, as MariaDB reads it: a length that counts its own two
                // bytes.
                p += usize::from(u16::from_le_bytes([body[8], body[9]]));
            }
            let v2 = event_type >= 169;
            let (columns, n) =
                lenenc(body.get(p..).unwrap_or_default()).ok_or_else(|| err("no column count"))?;
            let columns = usize::try_from(columns)
                .ok()
                .filter(|c| *c <= 4096)
                .ok_or_else(|| err("an impossible column count"))?;
            let bitmaps = if matches!(event_type, 167 | 170) {
                2
            } else {
                1
            };
            p += n + bitmaps * columns.div_ceil(8);
            let plain = if v2 {
                event_type - 169 + 30
            } else {
                event_type - 166 + 23
            };
            (plain, p)
        }
        _ => return Err(err("not a compressed event type")),
    };
    let (plain_head, packed) = (
        body.get(..head)
            .ok_or_else(|| err("shorter than its head"))?,
        &body[head..],
    );
    let mut out = plain_head.to_vec();
    uncompress(packed, &mut out).map_err(|e| err(&e))?;
    Ok((plain, out))
}

/// Appends the data of MariaDB's compressed format to `out`.
fn uncompress(packed: &[u8], out: &mut Vec<u8>) -> std::result::Result<(), String> {
    let (&flags, rest) = packed.split_first().ok_or("no compressed data")?;
    if flags & 0x80 == 0 {
        return Err("the compressed-data flag is not set".into());
    }
    let algorithm = (flags >> 4) & 0x07;
    if algorithm != 0 {
        return Err(format!(
            "compression algorithm {algorithm} (only zlib, 0, is defined)"
        ));
    }
    let width = usize::from(flags & 0x07);
    if !(1..=4).contains(&width) || rest.len() < width {
        return Err(format!("a length of {width} bytes"));
    }
    let len = rest[..width]
        .iter()
        .fold(0usize, |acc, b| acc << 8 | usize::from(*b));
    if len > MAX_EVENT {
        return Err(format!("an uncompressed length of {len} bytes"));
    }
    let start = out.len();
    out.reserve(len);
    // One byte more than announced is read, so a stream that inflates past it is caught.
    flate2::read::ZlibDecoder::new(&rest[width..])
        .take(len as u64 + 1)
        .read_to_end(out)
        .map_err(|e| format!("zlib: {e}"))?;
    let got = out.len() - start;
    if got != len {
        return Err(format!(
            "{got} bytes after decompression, the event says {len}"
        ));
    }
    Ok(())
}

/// A length-encoded integer: its value and its size in bytes.
fn lenenc(b: &[u8]) -> Option<(u64, usize)> {
    Some(match *b.first()? {
        x @ 0..=0xfa => (u64::from(x), 1),
        0xfc => (u64::from(u16::from_le_bytes([*b.get(1)?, *b.get(2)?])), 3),
        0xfd => (
            u64::from(u32::from_le_bytes([*b.get(1)?, *b.get(2)?, *b.get(3)?, 0])),
            4,
        ),
        0xfe => (u64::from_le_bytes(b.get(1..9)?.try_into().ok()?), 9),
        _ => return None,
    })
}

/// The plain event a compressed one stands for, parsed by mysql_common as if the server had sent
/// it: same timestamp, server id, end position, flags and checksum bytes.
pub fn plain_event(event: &Event) -> Result<Event> {
    let header = event.header();
    let event_type = header.event_type_raw();
    let fde = event.fde();
    let (plain, body) = plain_body(event_type, event.data(), fde.event_type_header_lengths())?;
    let checksum = event
        .checksum()
        .filter(|_| event.footer().get_checksum_enabled());
    let size = EVENT_HEADER_LEN + body.len() + checksum.map_or(0, |c| c.len());
    let size32 = u32::try_from(size).map_err(|_| bad(event_type, "larger than 4 GiB"))?;
    let mut raw = Vec::with_capacity(size);
    raw.extend(header.timestamp().to_le_bytes());
    raw.push(plain);
    raw.extend(header.server_id().to_le_bytes());
    raw.extend(size32.to_le_bytes());
    raw.extend(header.log_pos().to_le_bytes());
    raw.extend(header.flags_raw().to_le_bytes());
    raw.extend(body);
    if let Some(c) = checksum {
        raw.extend(c);
    }
    // `Event::read` reads exactly the size the header gives, which is the length of `raw`.
    Event::read(fde, &raw[..]).map_err(|e| bad(event_type, &e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::io::Write;

    /// MariaDB's `binlog_buf_compress`.
    fn compress(data: &[u8]) -> Vec<u8> {
        let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        z.write_all(data).unwrap();
        let packed = z.finish().unwrap();
        let width = match data.len() {
            0..=0xff => 1,
            0x100..=0xffff => 2,
            0x1_0000..=0xff_ffff => 3,
            _ => 4,
        };
        let mut out = vec![0x80 | width as u8];
        out.extend(&(data.len() as u32).to_be_bytes()[4 - width..]);
        out.extend(packed);
        out
    }

    /// MariaDB 10.11's post-header lengths for the types these tests use.
    fn post_headers() -> Vec<u8> {
        let mut p = vec![0u8; 171];
        p[1] = 13; // query
        p[164] = 13;
        for t in 166..=168 {
            p[t - 1] = 8;
        }
        for t in 169..=171 {
            p[t - 1] = 10;
        }
        p
    }

    #[test]
    fn a_compressed_query_becomes_a_query_event() {
        let mut body = vec![1, 0, 0, 0, 0, 0, 0, 0, 3, 0, 0, 2, 0];
        body.extend([0xaa, 0xbb]); // status variables
        body.extend(b"app\0");
        let sql = b"ALTER TABLE t RENAME COLUMN a TO b";
        let plain_head = body.clone();
        body.extend(compress(sql));
        let (t, out) = plain_body(165, &body, &post_headers()).unwrap();
        assert_eq!(t, 2);
        assert_eq!(&out[..plain_head.len()], &plain_head[..]);
        assert_eq!(&out[plain_head.len()..], sql);
    }

    #[test]
    fn compressed_rows_become_rows_events_of_their_version() {
        for (t, plain, extra, bitmaps) in [
            (166u8, 23u8, 0usize, 1usize),
            (167, 24, 0, 2),
            (168, 25, 0, 1),
            (169, 30, 2, 1),
            (170, 31, 2, 2),
            (171, 32, 2, 1),
        ] {
            let mut body = vec![7, 0, 0, 0, 0, 0, 1, 0];
            if extra > 0 {
                body.extend([2, 0]);
            }
            body.push(10); // ten columns: two bytes per bitmap
            body.extend(std::iter::repeat_n(0xff, 2 * bitmaps));
            let head = body.clone();
            let rows: Vec<u8> = (0..=255).cycle().take(70_000).collect();
            body.extend(compress(&rows));
            let (pt, out) = plain_body(t, &body, &post_headers()).unwrap();
            assert_eq!(pt, plain, "type {t}");
            assert_eq!(&out[..head.len()], &head[..]);
            assert_eq!(&out[head.len()..], &rows[..]);
        }
    }

    #[test]
    fn a_length_that_does_not_match_is_an_error() {
        let mut packed = compress(b"hello world");
        packed[1] = 12; // says 12, holds 11
        let mut body = vec![7, 0, 0, 0, 0, 0, 1, 0, 1, 0xff];
        body.extend(packed);
        assert!(plain_body(166, &body, &post_headers()).is_err());
        let mut body = vec![7, 0, 0, 0, 0, 0, 1, 0, 1, 0xff, 0x90, 1, 0];
        body.extend(b"x");
        let e = plain_body(166, &body, &post_headers()).unwrap_err();
        assert!(e.to_string().contains("algorithm 1"), "{e}");
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(t in 160u8..175, body in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = plain_body(t, &body, &post_headers());
        }

        #[test]
        fn any_payload_round_trips(t in 166u8..=171, rows in proptest::collection::vec(any::<u8>(), 0..3000)) {
            let mut body = vec![1, 2, 3, 4, 5, 6, 0, 0];
            if t >= 169 {
                body.extend([2, 0]);
            }
            body.push(3);
            body.extend(std::iter::repeat_n(0x07, if matches!(t, 167 | 170) { 2 } else { 1 }));
            let head = body.len();
            body.extend(compress(&rows));
            let (_, out) = plain_body(t, &body, &post_headers()).unwrap();
            prop_assert_eq!(&out[head..], &rows[..]);
        }
    }
}
