//! What the source server keeps for ferry, and how close it is to dropping it: a PostgreSQL
//! slot's `wal_status` and `safe_wal_size`, or how soon the binlog ferry would resume from may be
//! purged. Each source fills in its half; `/metrics`, `/readyz` and `/status` read it, and the one
//! warning it gives is the same everywhere.

/// The server's retention of what ferry still needs, as last read.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Retention {
    /// PostgreSQL 13+: the slot's `wal_status` (`reserved`, `extended`, `unreserved`, `lost`).
    pub wal_status: Option<String>,
    /// PostgreSQL 13+: WAL that may still be written before the slot is at risk of losing what
    /// ferry needs (negative once it is); `None` while `max_slot_wal_keep_size = -1`.
    pub safe_wal_bytes: Option<i64>,
    /// Warn when `safe_wal_bytes` falls below this.
    pub min_safe_wal_bytes: i64,
    /// MySQL/MariaDB: the server's binlog expiry in seconds (0: binlogs are never purged by age).
    pub binlog_expire_seconds: Option<u64>,
    /// MySQL/MariaDB: when (µs since the epoch) the event at ferry's resume position was written.
    /// The binlog file holding it was last written no earlier, so it is purged no sooner than
    /// `binlog_expire_seconds` after this.
    pub binlog_needed_since: Option<i64>,
    /// Warn when the binlog margin falls below this many seconds.
    pub min_binlog_margin_seconds: u64,
}

impl Retention {
    /// Seconds until the binlog holding ferry's resume position may be purged, at the earliest;
    /// `None` when the server purges nothing by age or the position is not known yet.
    pub fn binlog_margin_seconds(&self, now_micros: i64) -> Option<f64> {
        let expire = self.binlog_expire_seconds.filter(|e| *e > 0)?;
        let since = self.binlog_needed_since?;
        Some(expire as f64 - ((now_micros - since).max(0) as f64 / 1e6))
    }

    /// Why what ferry still needs is at risk on the server, or `None`.
    pub fn warning(&self, now_micros: i64) -> Option<String> {
        match self.wal_status.as_deref() {
            Some("lost") => {
                return Some(
                    "the replication slot is lost: the server removed WAL ferry had not consumed"
                        .into(),
                );
            }
            Some("unreserved") => {
                return Some(
                    "the replication slot is unreserved: the server will remove WAL ferry has not \
                     consumed at its next checkpoint unless ferry catches up \
                     (max_slot_wal_keep_size)"
                        .into(),
                );
            }
            _ => {}
        }
        if let Some(safe) = self.safe_wal_bytes
            && safe < self.min_safe_wal_bytes
        {
            return Some(format!(
                "the replication slot's safe_wal_size is {} MiB, below the margin of {} MiB: \
                 ferry is close to losing WAL it still needs (max_slot_wal_keep_size)",
                safe >> 20,
                self.min_safe_wal_bytes >> 20
            ));
        }
        if let Some(margin) = self.binlog_margin_seconds(now_micros)
            && margin < self.min_binlog_margin_seconds as f64
        {
            return Some(format!(
                "the binlog ferry would resume from may be purged in {margin:.0} s, below the \
                 margin of {} s (binlog_expire_logs_seconds = {})",
                self.min_binlog_margin_seconds,
                self.binlog_expire_seconds.unwrap_or(0)
            ));
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_slot_is_at_risk_when_unreserved_lost_or_below_the_margin() {
        let mut r = Retention {
            wal_status: Some("reserved".into()),
            safe_wal_bytes: Some(100 << 20),
            min_safe_wal_bytes: 16 << 20,
            ..Retention::default()
        };
        assert_eq!(r.warning(0), None);
        r.safe_wal_bytes = Some(8 << 20);
        assert!(r.warning(0).unwrap().contains("safe_wal_size is 8 MiB"));
        r.wal_status = Some("unreserved".into());
        assert!(r.warning(0).unwrap().contains("unreserved"));
        r.wal_status = Some("lost".into());
        assert!(r.warning(0).unwrap().contains("lost"));
        r.wal_status = Some("extended".into());
        r.safe_wal_bytes = None;
        assert_eq!(r.warning(0), None);
    }

    #[test]
    fn the_binlog_margin_counts_down_from_the_resume_position_s_time() {
        let r = Retention {
            binlog_expire_seconds: Some(3600),
            binlog_needed_since: Some(1_000_000_000),
            min_binlog_margin_seconds: 900,
            ..Retention::default()
        };
        assert_eq!(r.binlog_margin_seconds(1_000_000_000), Some(3600.0));
        assert_eq!(r.warning(1_000_000_000 + 2_000_000_000), None);
        let late = 1_000_000_000 + 3_000_000_000;
        assert_eq!(r.binlog_margin_seconds(late), Some(600.0));
        assert!(r.warning(late).unwrap().contains("purged in 600 s"));
        let never = Retention {
            binlog_expire_seconds: Some(0),
            ..r
        };
        assert_eq!(never.binlog_margin_seconds(late), None);
    }
}
