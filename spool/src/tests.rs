//! Spool behaviour on real files: order across segments, crash recovery at every byte of a torn
//! write, concurrent tailing readers, truncation and corruption.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns

use std::fs;
use std::path::Path;

use crate::segment::{self, SEGMENT_HEADER_LEN};
use crate::*;
use ferry_proto::{Event, RelationId, Value, samples};

fn opts(segment_bytes: u64) -> WriterOptions {
    WriterOptions { segment_bytes }
}

fn id_of(ev: &Event) -> Option<i64> {
    match ev {
        Event::Insert(i) => match i.new[0] {
            Value::Int(v) => Some(v),
            _ => None,
        },
        _ => None,
    }
}

fn ids(events: &[(Offset, Event)]) -> Vec<i64> {
    events.iter().filter_map(|(_, e)| id_of(e)).collect()
}

#[test]
fn events_come_back_in_order_across_segments() {
    let dir = tempfile::tempdir().unwrap();
    let (mut w, rec) = SpoolWriter::open(dir.path(), opts(4096)).unwrap();
    assert_eq!(rec.segments, 1);
    w.append(&Event::Relation(samples::relation(1))).unwrap();
    let mut offsets = Vec::new();
    for i in 0..1000 {
        offsets.push(w.append(&samples::insert(1, i, 200)).unwrap());
        if i % 10 == 9 {
            w.commit().unwrap();
        }
    }
    w.commit().unwrap();
    let segs = segment::list(dir.path()).unwrap();
    assert!(
        segs.len() > 40,
        "expected rotation, got {} segments",
        segs.len()
    );

    let all = read_all(dir.path(), Offset(0)).unwrap();
    assert_eq!(ids(&all), (0..1000).collect::<Vec<_>>());
    let insert_offsets: Vec<Offset> = all
        .iter()
        .filter(|(_, e)| id_of(e).is_some())
        .map(|(o, _)| *o)
        .collect();
    assert_eq!(insert_offsets, offsets);

    // Every segment opens with the relation catalog, so a reader starting in the middle of the
    // log knows relation 1 without having read its first announcement.
    let mut r = SpoolReader::open(dir.path(), offsets[700]).unwrap();
    let (first_off, first) = r.try_next().unwrap().unwrap();
    assert_eq!(first_off, offsets[700]);
    assert_eq!(id_of(&first), Some(700));
    assert_eq!(r.relation(RelationId(1)), Some(&samples::relation(1)));
    let rest = std::iter::from_fn(|| r.try_next().unwrap()).collect::<Vec<_>>();
    assert_eq!(ids(&rest), (701..1000).collect::<Vec<_>>());
}

#[test]
fn reopening_continues_after_the_last_event() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (mut w, _) = SpoolWriter::open(dir.path(), opts(1 << 20)).unwrap();
        for i in 0..10 {
            w.append(&samples::insert(1, i, 100)).unwrap();
        }
        w.commit().unwrap();
    }
    let (mut w, rec) = SpoolWriter::open(dir.path(), opts(1 << 20)).unwrap();
    assert_eq!(rec.truncated_bytes, 0);
    for i in 10..20 {
        w.append(&samples::insert(1, i, 100)).unwrap();
    }
    w.commit().unwrap();
    assert_eq!(
        ids(&read_all(dir.path(), Offset(0)).unwrap()),
        (0..20).collect::<Vec<_>>()
    );
}

#[test]
fn a_second_writer_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (_w, _) = SpoolWriter::open(dir.path(), WriterOptions::default()).unwrap();
    match SpoolWriter::open(dir.path(), WriterOptions::default()) {
        Err(SpoolError::Locked(_)) => {}
        other => panic!("expected Locked, got {other:?}"),
    }
}

fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for e in fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_file() {
            fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

/// A crash can leave any prefix of the last, not yet fsynced batch on disk. Cut the file at every
/// byte offset of that batch: recovery keeps exactly the durable events and every complete frame
/// of the torn batch that made it, never yields a damaged event, and the writer carries on.
#[test]
fn torn_tail_is_cut_at_every_byte_offset() {
    let src = tempfile::tempdir().unwrap();
    let (durable_end, full_len, last_seg) = {
        let (mut w, _) = SpoolWriter::open(src.path(), opts(1 << 20)).unwrap();
        w.append(&Event::Relation(samples::relation(1))).unwrap();
        for i in 0..5 {
            w.append(&samples::insert(1, i, 120)).unwrap();
        }
        let durable = w.commit().unwrap();
        // The torn batch: two events, the last one with a multi-byte varint length.
        w.append(&samples::insert(1, 5, 60)).unwrap();
        w.append(&samples::insert(1, 6, 300)).unwrap();
        let end = w.commit().unwrap();
        (
            durable,
            end,
            *segment::list(src.path()).unwrap().last().unwrap(),
        )
    };
    let seg_name = segment::segment_path(Path::new(""), last_seg);
    let bytes = fs::read(src.path().join(&seg_name)).unwrap();
    assert_eq!(bytes.len() as u64 + last_seg, full_len.0);
    // Offsets of frame boundaries inside the torn batch.
    let all = read_all(src.path(), Offset(0)).unwrap();
    let frame5 = all.iter().find(|(_, e)| id_of(e) == Some(5)).unwrap().0;
    let frame6 = all.iter().find(|(_, e)| id_of(e) == Some(6)).unwrap().0;
    assert_eq!(frame5, durable_end);

    for cut in durable_end.0..=full_len.0 {
        let dir = tempfile::tempdir().unwrap();
        copy_dir(src.path(), dir.path());
        let seg = dir.path().join(&seg_name);
        fs::write(&seg, &bytes[..(cut - last_seg) as usize]).unwrap();

        let expect: Vec<i64> = if cut == full_len.0 {
            (0..7).collect()
        } else if cut >= frame6.0 {
            (0..6).collect()
        } else {
            (0..5).collect()
        };
        // A reader before recovery stops at the torn frame without yielding it.
        assert_eq!(
            ids(&read_all(dir.path(), Offset(0)).unwrap()),
            expect,
            "cut {cut}"
        );

        let (mut w, rec) = SpoolWriter::open(dir.path(), opts(1 << 20)).unwrap();
        let kept_end = if cut == full_len.0 {
            full_len.0
        } else if cut >= frame6.0 {
            frame6.0
        } else {
            frame5.0
        };
        assert_eq!(rec.truncated_bytes, cut - kept_end, "cut {cut}");
        assert_eq!(fs::metadata(&seg).unwrap().len() + last_seg, kept_end);
        assert_eq!(w.relations().len(), 1);
        w.append(&samples::insert(1, 100, 50)).unwrap();
        w.commit().unwrap();
        let mut after = expect.clone();
        after.push(100);
        assert_eq!(
            ids(&read_all(dir.path(), Offset(0)).unwrap()),
            after,
            "cut {cut}"
        );
    }
}

#[test]
fn crash_during_rotation_keeps_the_relation_catalog() {
    let dir = tempfile::tempdir().unwrap();
    let next_base;
    {
        let (mut w, _) = SpoolWriter::open(dir.path(), opts(1000)).unwrap();
        w.append(&Event::Relation(samples::relation(9))).unwrap();
        for i in 0..20 {
            w.append(&samples::insert(9, i, 100)).unwrap();
            w.commit().unwrap();
        }
        next_base = w.end().0 + 1;
    }
    // A new segment whose header was only half written when the process died.
    let bases = segment::list(dir.path()).unwrap();
    let last = *bases.last().unwrap();
    let last_len = fs::metadata(segment::segment_path(dir.path(), last))
        .unwrap()
        .len();
    let torn_base = last + last_len;
    assert!(torn_base < next_base);
    fs::write(
        segment::segment_path(dir.path(), torn_base),
        &segment::header_bytes(torn_base)[..10],
    )
    .unwrap();
    // Readers treat a half-created segment as not there yet.
    assert_eq!(
        read_all(dir.path(), Offset(0)).unwrap().len(),
        21 + bases.len() - 1
    );

    let (mut w, _) = SpoolWriter::open(dir.path(), opts(1000)).unwrap();
    assert!(w.relations().contains_key(&RelationId(9)));
    w.append(&samples::insert(9, 20, 100)).unwrap();
    w.commit().unwrap();
    let mut r = SpoolReader::open(dir.path(), Offset(torn_base)).unwrap();
    let (_, first) = r.try_next().unwrap().unwrap();
    assert_eq!(first, Event::Relation(samples::relation(9)));
    assert_eq!(id_of(&r.try_next().unwrap().unwrap().1), Some(20));
}

#[test]
fn corruption_in_a_sealed_segment_is_an_error_not_a_skip() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (mut w, _) = SpoolWriter::open(dir.path(), opts(2000)).unwrap();
        for i in 0..50 {
            w.append(&samples::insert(1, i, 200)).unwrap();
        }
        w.commit().unwrap();
    }
    let first = segment::segment_path(dir.path(), 0);
    let mut bytes = fs::read(&first).unwrap();
    let i = SEGMENT_HEADER_LEN as usize + 300;
    bytes[i] ^= 0x01;
    fs::write(&first, bytes).unwrap();
    let mut r = SpoolReader::open(dir.path(), Offset(0)).unwrap();
    let mut seen = 0;
    let err = loop {
        match r.try_next() {
            Ok(Some(_)) => seen += 1,
            Ok(None) => panic!("corruption went unnoticed after {seen} events"),
            Err(e) => break e,
        }
    };
    assert!(matches!(err, SpoolError::Corrupt { .. }), "{err}");
    assert_eq!(seen, 1, "the first frame is intact, the second is damaged");
}

#[test]
fn truncation_keeps_what_cursors_need() {
    let dir = tempfile::tempdir().unwrap();
    let (mut w, _) = SpoolWriter::open(dir.path(), opts(2048)).unwrap();
    let mut offsets = Vec::new();
    for i in 0..200 {
        offsets.push(w.append(&samples::insert(1, i, 200)).unwrap());
    }
    w.commit().unwrap();
    let cursors = Cursors::new(dir.path());
    cursors.save("replica", offsets[150]).unwrap();
    cursors.save("events", offsets[120]).unwrap();
    assert_eq!(cursors.load("events").unwrap(), Some(offsets[120]));
    assert!(cursors.save("../evil", Offset(1)).is_err());
    let min = cursors.min().unwrap().unwrap();
    assert_eq!(min, offsets[120]);
    let before = segment::list(dir.path()).unwrap().len();
    let removed = w.truncate_before(min).unwrap();
    assert!(removed > 0);
    assert_eq!(segment::list(dir.path()).unwrap().len(), before - removed);
    // Everything from the slowest cursor on is still there.
    let rest = read_all(dir.path(), offsets[120]).unwrap();
    assert_eq!(ids(&rest), (120..200).collect::<Vec<_>>());
    // Asking for what was deleted is a gap, reported as such.
    match SpoolReader::open(dir.path(), Offset(0)) {
        Err(SpoolError::Gap { .. }) => {}
        other => panic!("expected Gap, got {other:?}"),
    }
    // A cursor in the middle of a frame is refused.
    let mut r = SpoolReader::open(dir.path(), Offset(offsets[130].0 + 1)).unwrap();
    assert!(matches!(r.try_next(), Err(SpoolError::InvalidCursor(_))));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_readers_tail_the_writer_and_see_every_event_in_order() {
    const N: i64 = 20_000;
    let dir = tempfile::tempdir().unwrap();
    let (mut w, _) = SpoolWriter::open(dir.path(), opts(64 << 10)).unwrap();
    w.append(&Event::Relation(samples::relation(1))).unwrap();
    w.commit().unwrap();

    // An in-process reader that waits on the writer's durable end.
    let mut tail = SpoolReader::open_tailing(dir.path(), Offset(0), w.subscribe()).unwrap();
    let tailing = tokio::spawn(async move {
        let mut seen = Vec::new();
        while let Some((_, ev)) = tail.next_wait().await.unwrap() {
            if let Some(id) = id_of(&ev) {
                seen.push(id);
            }
        }
        seen
    });
    // A reader that only looks at the files, as another process would.
    let path = dir.path().to_owned();
    let polling = std::thread::spawn(move || {
        let mut r = SpoolReader::open(&path, Offset(0)).unwrap();
        let mut seen = Vec::new();
        while seen.len() < N as usize {
            match r.try_next().unwrap() {
                Some((_, ev)) => seen.extend(id_of(&ev)),
                None => std::thread::yield_now(),
            }
        }
        seen
    });

    let writer = std::thread::spawn(move || {
        for i in 0..N {
            w.append(&samples::insert(1, i, 200)).unwrap();
            if i % 97 == 0 {
                w.commit().unwrap();
            }
        }
        w.commit().unwrap();
        // Dropping the writer closes the durable-end channel: the tailing reader drains and stops.
    });
    writer.join().unwrap();
    let expected: Vec<i64> = (0..N).collect();
    assert_eq!(tailing.await.unwrap(), expected);
    assert_eq!(polling.join().unwrap(), expected);
}

#[test]
fn truncate_from_cuts_an_incomplete_tail_across_segments() {
    let dir = tempfile::tempdir().unwrap();
    let (mut w, _) = SpoolWriter::open(dir.path(), opts(2048)).unwrap();
    w.append(&Event::Relation(samples::relation(1))).unwrap();
    let mut offsets = Vec::new();
    for i in 0..100 {
        offsets.push(w.append(&samples::insert(1, i, 200)).unwrap());
    }
    w.commit().unwrap();
    let before = segment::list(dir.path()).unwrap().len();
    w.truncate_from(offsets[40]).unwrap();
    assert!(segment::list(dir.path()).unwrap().len() < before);
    assert_eq!(w.end(), offsets[40]);
    w.append(&samples::insert(1, 1000, 200)).unwrap();
    w.commit().unwrap();
    let mut expect: Vec<i64> = (0..40).collect();
    expect.push(1000);
    assert_eq!(ids(&read_all(dir.path(), Offset(0)).unwrap()), expect);
    assert!(w.relations().contains_key(&RelationId(1)));
}

#[test]
fn an_encoded_frame_is_copied_as_it_is_and_a_bad_one_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (mut w, _) = SpoolWriter::open(dir.path(), WriterOptions::default()).unwrap();
    let ev = ferry_proto::samples::insert(1, 7, 40);
    let bytes = ferry_proto::frame::encode_to_vec(&ev).unwrap();
    let at = w.append_frame(&bytes).unwrap();
    assert!(w.append_frame(&bytes[..bytes.len() - 1]).is_err());
    let mut longer = bytes.clone();
    longer.push(0);
    assert!(w.append_frame(&longer).is_err());
    w.commit().unwrap();
    let all = crate::read_all(dir.path(), at).unwrap();
    assert_eq!(all, vec![(at, ev)]);
}

/// A checksum mismatch with valid frames after it is damage, not a torn write: the writer
/// refuses to open, names the segment, the offset and the positions around it, and deletes
/// nothing. Garbage with nothing valid after it is still a torn write, and cut.
#[test]
fn damage_in_the_active_segment_stops_the_writer_and_deletes_nothing() {
    use ferry_proto::{Begin, Commit, Lsn, Position};
    let dir = tempfile::tempdir().unwrap();
    let mut txn_offsets = Vec::new();
    {
        let (mut w, _) = SpoolWriter::open(dir.path(), opts(1 << 20)).unwrap();
        w.append(&Event::Relation(samples::relation(1))).unwrap();
        for t in 0..20u64 {
            let position = Position::Postgres(Lsn(1000 + t * 100));
            let begin = w
                .append(&Event::Begin(Begin {
                    position: position.clone(),
                    xid: t,
                    commit_time: 0,
                }))
                .unwrap();
            txn_offsets.push(begin);
            w.append(&samples::insert(1, t as i64, 200)).unwrap();
            w.append(&Event::Commit(Commit {
                position,
                xid: t,
                commit_time: 0,
            }))
            .unwrap();
            w.commit().unwrap();
        }
    }
    let seg = segment::segment_path(dir.path(), 0);
    let mut bytes = fs::read(&seg).unwrap();
    let original_len = bytes.len();
    // The insert of transaction 10: one byte in the middle of its payload.
    let insert = txn_offsets[10].0 as usize + 40;
    bytes[insert] ^= 0x10;
    fs::write(&seg, &bytes).unwrap();
    let err = SpoolWriter::open(dir.path(), opts(1 << 20)).unwrap_err();
    let SpoolError::Damaged {
        offset,
        valid_from,
        last_before,
        first_after,
        ..
    } = &err
    else {
        panic!("expected damage, got {err}");
    };
    assert!(
        offset.0 > txn_offsets[10].0 && offset.0 < txn_offsets[11].0,
        "{err}"
    );
    assert!(
        *valid_from > *offset && *valid_from < txn_offsets[11],
        "{err}"
    );
    assert_eq!(last_before, "pg:0/76C", "transaction 9's commit: {err}");
    assert_eq!(
        first_after, "pg:0/7D0",
        "the Commit after the damaged row: {err}"
    );
    let text = err.to_string();
    assert!(
        text.contains(&seg.display().to_string()) && text.contains("deleted nothing"),
        "{text}"
    );
    assert_eq!(fs::read(&seg).unwrap(), bytes, "the segment is untouched");
    assert_eq!(bytes.len(), original_len);

    // Zeros after the last frame (a write the crash cut, the file already extended): a torn
    // tail, cut as before.
    bytes[insert] ^= 0x10;
    bytes.extend_from_slice(&[0u8; 300]);
    fs::write(&seg, &bytes).unwrap();
    let (_, rec) = SpoolWriter::open(dir.path(), opts(1 << 20)).unwrap();
    assert_eq!(rec.truncated_bytes, 300);
    assert_eq!(fs::metadata(&seg).unwrap().len() as usize, original_len);
}
