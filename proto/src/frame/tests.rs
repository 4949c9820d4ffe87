//! Frame format: round trips, never a panic on arbitrary or damaged bytes, and golden files that
//! catch any unintended change to the encoding.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns

use std::path::PathBuf;

use crate::frame::{self, FrameError, HEADER_LEN, MAX_PAYLOAD};
use crate::samples;
use crate::*;
use proptest::prelude::*;

fn arb_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        Just(Value::Unchanged),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::Int),
        any::<u64>().prop_map(Value::UInt),
        // NaN != NaN, so round-trip equality uses finite and infinite floats only.
        any::<f64>()
            .prop_filter("NaN", |f| !f.is_nan())
            .prop_map(Value::Float),
        "-?[0-9]{1,30}(\\.[0-9]{1,10})?".prop_map(Value::Numeric),
        any::<String>().prop_map(Value::Text),
        proptest::collection::vec(any::<u8>(), 0..64).prop_map(Value::Bytes),
        any::<i32>().prop_map(Value::Date),
        any::<i64>().prop_map(Value::Time),
        (any::<i64>(), any::<i32>()).prop_map(|(micros, offset_secs)| Value::TimeTz {
            micros,
            offset_secs
        }),
        any::<i64>().prop_map(Value::Timestamp),
        any::<i64>().prop_map(Value::TimestampTz),
        (any::<i32>(), any::<i32>(), any::<i64>()).prop_map(|(months, days, micros)| {
            Value::Interval {
                months,
                days,
                micros,
            }
        }),
        any::<[u8; 16]>().prop_map(Value::Uuid),
        any::<String>().prop_map(Value::Json),
        (any::<String>(), any::<String>())
            .prop_map(|(type_name, text)| Value::Other { type_name, text }),
    ];
    leaf.prop_recursive(2, 16, 4, |inner| {
        proptest::collection::vec(inner, 0..4).prop_map(Value::Array)
    })
}

fn arb_row() -> impl Strategy<Value = Row> {
    proptest::collection::vec(arb_value(), 0..6)
}

fn arb_event() -> impl Strategy<Value = Event> {
    let pos = any::<u64>().prop_map(|l| Position::Postgres(Lsn(l)));
    prop_oneof![
        (pos.clone(), any::<u64>(), any::<i64>()).prop_map(|(position, xid, commit_time)| {
            Event::Begin(Begin {
                position,
                xid,
                commit_time,
            })
        }),
        (pos.clone(), any::<u64>(), any::<i64>()).prop_map(|(position, xid, commit_time)| {
            Event::Commit(Commit {
                position,
                xid,
                commit_time,
            })
        }),
        any::<u64>().prop_map(|id| Event::Relation(samples::relation(id))),
        (any::<u64>(), arb_row()).prop_map(|(r, new)| Event::Insert(Insert {
            relation: RelationId(r),
            new
        })),
        (any::<u64>(), proptest::option::of(arb_row()), arb_row()).prop_map(|(r, old, new)| {
            Event::Update(Update {
                relation: RelationId(r),
                old: old.map(OldRow::Key),
                new,
            })
        }),
        (any::<u64>(), arb_row()).prop_map(|(r, old)| Event::Delete(Delete {
            relation: RelationId(r),
            old: OldRow::Full(old)
        })),
        (
            proptest::collection::vec(any::<u64>(), 0..4),
            any::<bool>(),
            any::<bool>()
        )
            .prop_map(
                |(ids, cascade, restart_identity)| Event::Truncate(Truncate {
                    relations: ids.into_iter().map(RelationId).collect(),
                    cascade,
                    restart_identity
                })
            ),
        (
            any::<bool>(),
            pos.clone(),
            any::<String>(),
            proptest::collection::vec(any::<u8>(), 0..32)
        )
            .prop_map(|(transactional, position, prefix, content)| {
                Event::Message(Message {
                    transactional,
                    position,
                    prefix,
                    content,
                })
            }),
        (pos, any::<i64>())
            .prop_map(|(position, time)| Event::Heartbeat(Heartbeat { position, time })),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn round_trip(event in arb_event()) {
        let bytes = frame::encode_to_vec(&event).unwrap();
        let (back, used) = frame::decode(&bytes).unwrap();
        prop_assert_eq!(used, bytes.len());
        prop_assert_eq!(back, event);
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = frame::decode(&bytes);
    }

    #[test]
    fn arbitrary_payload_behind_valid_header_never_panics(
        payload in proptest::collection::vec(any::<u8>(), 0..512)
    ) {
        // A valid header and checksum around random bytes reaches the bincode decoder itself.
        let mut buf = vec![b'F', b'y', frame::FORMAT_VERSION, 0];
        buf.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        let crc = crc32c_of(&buf, &payload);
        buf.extend_from_slice(&crc.to_le_bytes());
        buf.extend_from_slice(&payload);
        match frame::decode(&buf) {
            Ok((_, used)) => prop_assert_eq!(used, buf.len()),
            Err(FrameError::Payload(_) | FrameError::TrailingBytes(_)) => {}
            Err(e) => prop_assert!(false, "unexpected error {e}"),
        }
    }

    #[test]
    fn any_single_bit_flip_is_detected(event in arb_event(), bit in any::<prop::sample::Index>()) {
        let mut bytes = frame::encode_to_vec(&event).unwrap();
        let i = bit.index(bytes.len() * 8);
        bytes[i / 8] ^= 1 << (i % 8);
        prop_assert!(frame::decode(&bytes).is_err(), "flip of bit {} undetected", i);
    }

    #[test]
    fn every_truncation_is_incomplete(event in arb_event()) {
        let bytes = frame::encode_to_vec(&event).unwrap();
        for cut in 0..bytes.len() {
            match frame::decode(&bytes[..cut]) {
                Err(FrameError::Incomplete { needed }) => prop_assert!(needed > 0),
                other => prop_assert!(false, "cut at {}: {:?}", cut, other.map(|(_, n)| n)),
            }
        }
    }
}

fn crc32c_of(header: &[u8], payload: &[u8]) -> u32 {
    // Independent bitwise CRC-32C, so the test does not just repeat the implementation.
    let mut crc = !0u32;
    for &b in header.iter().chain(payload) {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0x82F6_3B78
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

#[test]
fn typed_errors_for_bad_headers() {
    let good = frame::encode_to_vec(&samples::insert(1, 1, 50)).unwrap();

    let mut b = good.clone();
    b[0] = b'X';
    assert!(matches!(
        frame::decode(&b),
        Err(FrameError::BadMagic { .. })
    ));

    let mut b = good.clone();
    b[2] = 99;
    assert!(matches!(
        frame::decode(&b),
        Err(FrameError::UnsupportedVersion { found: 99 })
    ));

    let mut b = good.clone();
    b[3] = 1;
    assert!(matches!(
        frame::decode(&b),
        Err(FrameError::UnknownFlags { .. })
    ));

    let mut b = good.clone();
    b[4..8].copy_from_slice(&((MAX_PAYLOAD as u32) + 1).to_le_bytes());
    assert!(matches!(
        frame::decode(&b),
        Err(FrameError::Oversized { .. })
    ));

    let mut b = good.clone();
    let last = b.len() - 1;
    b[last] ^= 0x40;
    assert!(matches!(
        frame::decode(&b),
        Err(FrameError::Checksum { .. })
    ));

    assert!(matches!(
        frame::decode(&good[..HEADER_LEN - 3]),
        Err(FrameError::Incomplete { needed: 3 })
    ));
    // Independent CRC agrees with the implementation's.
    let payload_len = u32::from_le_bytes([good[4], good[5], good[6], good[7]]) as usize;
    assert_eq!(payload_len + HEADER_LEN, good.len());
    assert_eq!(
        crc32c_of(&good[..8], &good[HEADER_LEN..]),
        u32::from_le_bytes([good[8], good[9], good[10], good[11]])
    );
}

fn golden_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

/// The golden file of the current version holds the frames of `samples::all_kinds()`, back to
/// back. Regenerate it only for an intended format change (with a new FORMAT_VERSION):
/// `FERRY_BLESS=1 cargo test -p ferry-proto --lib golden`.
#[test]
fn golden_v2() {
    let mut events = samples::all_kinds();
    events.extend(samples::appended_to_v2());
    let mut encoded = Vec::new();
    for e in &events {
        frame::encode(e, &mut encoded).unwrap();
    }
    let path = golden_dir().join("v2-all-kinds.bin");
    if std::env::var_os("FERRY_BLESS").is_some() {
        std::fs::write(&path, &encoded).unwrap();
    }
    let golden = std::fs::read(&path).expect("golden file present (FERRY_BLESS=1 to create)");
    assert_eq!(
        encoded, golden,
        "encoding changed: a format change needs a new FORMAT_VERSION and docs/format.md"
    );
    // Debug, not ==: a binlog position's GTIDs are not part of its equality.
    assert_eq!(format!("{:?}", decode_all(&golden)), format!("{events:?}"));
}

/// Version 1 frames (written by ferry before the format had version 2) are still read: the
/// same events, a PostgreSQL transaction's position moved from its commit record's start to the
/// LSN after it, everything else as it was.
#[test]
fn golden_v1_still_read() {
    let golden = std::fs::read(golden_dir().join("v1-all-kinds.bin")).unwrap();
    let expected: Vec<Event> = samples::all_kinds()
        .into_iter()
        .map(|mut e| {
            if let Event::Begin(Begin { position, .. }) | Event::Commit(Commit { position, .. }) =
                &mut e
                && let Position::Postgres(Lsn(l)) = position
            {
                *l += 1;
            }
            e
        })
        .collect();
    assert_ne!(
        expected,
        samples::all_kinds(),
        "the samples hold a PostgreSQL transaction"
    );
    assert_eq!(decode_all(&golden), expected);
}

fn decode_all(mut rest: &[u8]) -> Vec<Event> {
    let mut decoded = Vec::new();
    while !rest.is_empty() {
        let (e, n) = frame::decode(rest).unwrap();
        decoded.push(e);
        rest = &rest[n..];
    }
    decoded
}
