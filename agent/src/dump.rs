//! `ferry log dump`: the spool's events as JSON lines, for debugging and for piping into tools.

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use ferry_proto::Event;
use ferry_spool::{Offset, SpoolReader, segment};
use serde::Serialize;

/// One output line. `position` and `xid` are the event's own, or for a row or relation event
/// those of the transaction it belongs to, so `jq 'select(.xid == 742)'` finds a whole transaction.
#[derive(Serialize)]
struct Line<'a> {
    offset: u64,
    kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    position: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    xid: Option<u64>,
    event: &'a Event,
}

/// Writes every event from `from` (or the oldest) to `out`; with `follow`, keeps polling for new
/// events until `stop` says so. Returns how many events were written.
pub fn dump(
    dir: &Path,
    from: Option<u64>,
    follow: bool,
    out: &mut impl Write,
    stop: impl Fn() -> bool,
) -> anyhow::Result<u64> {
    if !dir.exists() {
        anyhow::bail!(
            "spool directory {} does not exist (has `ferry run` written anything yet?)",
            dir.display()
        );
    }
    let oldest = segment::list(dir)?.first().copied().unwrap_or(0);
    let mut reader = SpoolReader::open(dir, Offset(from.unwrap_or(oldest)))?;
    let mut n = 0u64;
    let mut txn: Option<(String, u64)> = None;
    let mut damage: Vec<String> = Vec::new();
    loop {
        let next = match reader.try_next() {
            Err(ferry_spool::SpoolError::Corrupt {
                path,
                offset,
                reason,
            }) => {
                // Show the damage as a line of its own, then what follows it.
                let resumes = reader.skip_damage()?;
                serde_json::to_writer(
                    &mut *out,
                    &serde_json::json!({
                        "offset": offset,
                        "kind": "damaged",
                        "segment": path.display().to_string(),
                        "reason": reason,
                        "valid_frames_resume_at": resumes.map(|o| o.0),
                    }),
                )?;
                out.write_all(b"\n")?;
                damage.push(format!("offset {offset} of {}: {reason}", path.display()));
                if resumes.is_none() {
                    break;
                }
                txn = None;
                continue;
            }
            other => other?,
        };
        match next {
            Some((offset, event)) => {
                if let Event::Begin(b) = &event {
                    txn = Some((b.position.to_string(), b.xid));
                }
                let (position, xid) = match (&event, &txn) {
                    (Event::Heartbeat(h), _) => (Some(h.position.to_string()), None),
                    (Event::Message(m), t) if !m.transactional || t.is_none() => {
                        (Some(m.position.to_string()), None)
                    }
                    (_, Some((p, x))) => (Some(p.clone()), Some(*x)),
                    (_, None) => (None, None),
                };
                serde_json::to_writer(
                    &mut *out,
                    &Line {
                        offset: offset.0,
                        kind: event.kind(),
                        position,
                        xid,
                        event: &event,
                    },
                )?;
                if let Event::Commit(_) = &event {
                    txn = None;
                }
                out.write_all(b"\n")?;
                n += 1;
            }
            None if follow && !stop() => {
                out.flush()?;
                std::thread::sleep(Duration::from_millis(200));
            }
            None => break,
        }
    }
    out.flush()?;
    if !damage.is_empty() {
        anyhow::bail!("the spool is damaged at {}", damage.join("; "));
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_proto::samples;
    use ferry_spool::{SpoolWriter, WriterOptions};

    #[test]
    fn dumps_every_event_as_one_json_line() {
        let dir = tempfile::tempdir().unwrap();
        let (mut w, _) = SpoolWriter::open(dir.path(), WriterOptions::default()).unwrap();
        let events = samples::all_kinds();
        let mut offsets = Vec::new();
        for e in &events {
            offsets.push(w.append(e).unwrap().0);
        }
        w.commit().unwrap();
        let mut out = Vec::new();
        let n = dump(dir.path(), None, false, &mut out, || true).unwrap();
        assert_eq!(n, events.len() as u64);
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), events.len());
        for ((line, off), ev) in lines.iter().zip(&offsets).zip(&events) {
            assert_eq!(line["offset"], *off);
            assert_eq!(line["event"], serde_json::to_value(ev).unwrap());
        }
        assert_eq!(lines[2]["event"]["Insert"]["relation"], 16384);
        for (line, ev) in lines.iter().zip(&events) {
            assert_eq!(line["kind"], ev.kind());
        }
        // A row event carries its transaction's position and xid.
        let begin = events
            .iter()
            .position(|e| matches!(e, Event::Begin(_)))
            .unwrap();
        let Event::Begin(b) = &events[begin] else {
            unreachable!()
        };
        assert_eq!(lines[begin + 1]["position"], b.position.to_string());
        assert_eq!(lines[begin + 1]["xid"], b.xid);

        let mut out = Vec::new();
        let n = dump(dir.path(), Some(offsets[5]), false, &mut out, || true).unwrap();
        assert_eq!(n, (events.len() - 5) as u64);
    }

    #[test]
    fn damage_is_shown_and_the_frames_after_it_too() {
        let dir = tempfile::tempdir().unwrap();
        let (mut w, _) = SpoolWriter::open(dir.path(), WriterOptions::default()).unwrap();
        let mut offsets = Vec::new();
        for i in 0..10 {
            offsets.push(w.append(&samples::insert(1, i, 50)).unwrap().0);
        }
        w.commit().unwrap();
        drop(w);
        let seg = ferry_spool::segment::segment_path(dir.path(), 0);
        let mut bytes = std::fs::read(&seg).unwrap();
        bytes[offsets[4] as usize + 20] ^= 0x40;
        std::fs::write(&seg, bytes).unwrap();
        let mut out = Vec::new();
        let e = dump(dir.path(), None, false, &mut out, || true).unwrap_err();
        assert!(
            e.to_string().contains(&format!("offset {}", offsets[4])),
            "{e}"
        );
        let lines: Vec<serde_json::Value> = String::from_utf8(out)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 10, "nine events and the damage");
        assert_eq!(lines[4]["kind"], "damaged");
        assert_eq!(lines[4]["offset"], offsets[4]);
        assert_eq!(lines[4]["valid_frames_resume_at"], offsets[5]);
        assert_eq!(lines[5]["offset"], offsets[5]);
        assert_eq!(lines[9]["offset"], offsets[9]);
    }

    #[test]
    fn missing_directory_is_a_clear_error() {
        let e = dump(
            Path::new("/nonexistent/ferry"),
            None,
            false,
            &mut Vec::new(),
            || true,
        )
        .unwrap_err();
        assert!(e.to_string().contains("does not exist"), "{e}");
    }
}
