//! The two lag figures, defined once and computed here for every source and sink pair, for
//! `/metrics`, `/status`, `/readyz` and `ferry status` alike:
//!
//! - **bytes**: how far a sink's applied position is behind the source's current position, in
//!   the source's own log: PostgreSQL WAL bytes; MySQL/MariaDB binlog bytes, counting the files
//!   in between by their sizes.
//! - **seconds**: 0 when the sink has applied every transaction in the spool; otherwise how long
//!   the oldest transaction it has not applied has waited since the source committed it. An idle
//!   source is never "behind" by the age of its last commit, and a sink that stops applying
//!   falls behind by the wall-clock time that change has waited.

use std::path::Path;

use ferry_proto::{Event, Position};
use ferry_spool::{Offset, SpoolReader};

/// Bytes of the source's log between `applied` and `now`; `None` when they cannot be compared
/// (different source kinds, or a binlog file missing from `binlog_sizes`).
pub fn bytes_behind(
    now: &Position,
    applied: &Position,
    binlog_sizes: &[(String, u64)],
) -> Option<u64> {
    match (now, applied) {
        (Position::Postgres(n), Position::Postgres(a)) => Some(n.0.saturating_sub(a.0)),
        (Position::Binlog(n), Position::Binlog(a)) if n.file == a.file => {
            Some(n.pos.saturating_sub(a.pos))
        }
        (Position::Binlog(n), Position::Binlog(a)) if n.file > a.file => {
            let size = |f: &str| binlog_sizes.iter().find(|(name, _)| name == f).map(|x| x.1);
            let mut total = size(&a.file)?.saturating_sub(a.pos);
            for (name, bytes) in binlog_sizes {
                if name.as_str() > a.file.as_str() && name.as_str() < n.file.as_str() {
                    total += bytes;
                }
            }
            Some(total + n.pos)
        }
        (Position::Binlog(_), Position::Binlog(_)) => Some(0),
        _ => None,
    }
}

/// Seconds the oldest transaction in the spool at or after `from` (a sink's offset) has waited
/// since its source commit; 0 when there is none (heartbeats aside). `None` when the spool cannot
/// be read there.
pub fn seconds_behind(dir: &Path, from: Offset, now_micros: i64) -> Option<f64> {
    let mut reader = SpoolReader::open(dir, from).ok()?;
    while let Some((_, event)) = reader.try_next().ok()? {
        if let Event::Begin(b) = event {
            return Some(((now_micros - b.commit_time) as f64 / 1e6).max(0.0));
        }
    }
    Some(0.0)
}

#[cfg(test)]
mod tests {
    use ferry_proto::{BinlogPos, Lsn};

    use super::*;

    fn binlog(file: &str, pos: u64) -> Position {
        Position::Binlog(BinlogPos::new(file, pos))
    }

    #[test]
    fn bytes_count_the_source_log_between_the_positions() {
        assert_eq!(
            bytes_behind(
                &Position::Postgres(Lsn(5000)),
                &Position::Postgres(Lsn(1200)),
                &[]
            ),
            Some(3800)
        );
        assert_eq!(
            bytes_behind(&binlog("b.000002", 900), &binlog("b.000002", 400), &[]),
            Some(500)
        );
        let sizes = [
            ("b.000001".to_owned(), 1000),
            ("b.000002".to_owned(), 2000),
            ("b.000003".to_owned(), 300),
        ];
        // 1000 - 400 left in the first file, all of the second, 300 into the third.
        assert_eq!(
            bytes_behind(&binlog("b.000003", 300), &binlog("b.000001", 400), &sizes),
            Some(600 + 2000 + 300)
        );
        assert_eq!(
            bytes_behind(&binlog("b.000003", 300), &binlog("b.000000", 4), &sizes),
            None
        );
        assert_eq!(
            bytes_behind(&binlog("b.000003", 3), &Position::Postgres(Lsn(1)), &sizes),
            None
        );
    }
}
