//! Source positions: where in a source's change stream an event comes from.
//!
//! Each source emits one kind of position, and positions of one source are totally ordered in the
//! order the source produced them (`Ord`). Every position prints in a stable text form that
//! [`Position::from_str`](std::str::FromStr) parses back, so positions can be stored in checkpoints,
//! typed on a command line and shown in logs.
//!
//! # What a position means
//!
//! A position has one meaning wherever it appears (a Begin or Commit, a Heartbeat, a sink's
//! checkpoint, the source's acknowledgement, `--until`, `status`): **every transaction committed
//! at or before it is covered**. A transaction's own position is where its commit *ends* in the
//! source's log:
//!
//! - PostgreSQL: the end LSN of the commit record (pgoutput's Commit "end LSN"), which is also what
//!   PostgreSQL itself reports as a subscriber's progress and takes as the flush LSN of a standby
//!   status update. A heartbeat at the server's WAL end `p` covers every transaction whose commit
//!   record ends at or before `p`; one whose commit record *starts* at `p` ends after it, so it is
//!   not covered. Positions that ferry compares are always record boundaries, so "ends at or
//!   before `p`" is the same test as "starts before `p`".
//! - MySQL/MariaDB binlog: the offset just after the transaction's last event (the next event's
//!   start), as `SHOW MASTER STATUS` prints it.
//! - GTID sets: the set that includes the transaction.
//!
//! So every comparison is the same one, [`Position::covers`]: `p.covers(t)` exactly when `t <= p`.
//!
//! GTID sets are only partially ordered by inclusion. Within one source's stream each commit adds
//! exactly one transaction, so ordering by the number of transactions (then by the canonical text)
//! is a total order that agrees with both inclusion and stream order.

use std::cmp::Ordering;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A text position that could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {what} {input:?}: {reason}")]
pub struct ParsePositionError {
    what: &'static str,
    input: String,
    reason: &'static str,
}

impl ParsePositionError {
    fn new(what: &'static str, input: &str, reason: &'static str) -> Self {
        Self {
            what,
            input: input.to_owned(),
            reason,
        }
    }
}

/// A PostgreSQL write-ahead log position, printed as `XXXXXXXX/XXXXXXXX` like `pg_lsn`.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
pub struct Lsn(pub u64);

impl Lsn {
    /// Whether position `self` (a record boundary: a commit record's end, or the server's WAL
    /// end) covers the transaction whose commit record *starts* at `commit_start`, which is all
    /// that pgoutput's Begin and Stream Commit say before the end is known: the record ends at
    /// or before `self` exactly when it starts before it.
    pub fn covers_commit_at(self, commit_start: Lsn) -> bool {
        commit_start < self
    }
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

impl FromStr for Lsn {
    type Err = ParsePositionError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |reason| ParsePositionError::new("LSN", s, reason);
        let (hi, lo) = s
            .split_once('/')
            .ok_or_else(|| err("expected HI/LO in hex"))?;
        let part = |p: &str| {
            if p.is_empty() || p.len() > 8 {
                return Err(err("each half is 1 to 8 hex digits"));
            }
            u32::from_str_radix(p, 16).map_err(|_| err("not hexadecimal"))
        };
        Ok(Lsn((u64::from(part(hi)?) << 32) | u64::from(part(lo)?)))
    }
}

/// A MySQL/MariaDB binlog coordinate: file name and byte offset in it.
///
/// Ordered by the file's numeric suffix (so `mysql-bin.1000000` follows `mysql-bin.999999`), then
/// by offset.
/// A binlog position: the offset in a binlog file, which server's binlog it is (`epoch`), and
/// the GTIDs the server had executed up to it, when it has them.
///
/// `file:pos` orders positions within one server's binlog. After a failover, ferry resumes by
/// GTID on another server, whose binlog names and offsets have nothing to do with the first's:
/// `epoch` counts those switches (0 for the first server a spool read), so positions order in
/// the order ferry read them. The GTIDs say where the stream is on *any* server that has the
/// same transactions; they are not part of the order (one stream position has one GTID state).
#[derive(Debug, Clone)]
pub struct BinlogPos {
    pub file: String,
    pub pos: u64,
    pub epoch: u32,
    pub gtids: Option<Gtids>,
}

/// The GTIDs a server had executed at a binlog position: MariaDB's per-domain list
/// (`@@gtid_binlog_pos`) or MySQL's set (`@@gtid_executed`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Gtids {
    MariaDb(MariaGtidList),
    MySql(MysqlGtids),
}

impl fmt::Display for Gtids {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Gtids::MariaDb(l) => write!(f, "mariadb={l}"),
            Gtids::MySql(s) => write!(f, "gtid={s}"),
        }
    }
}

impl BinlogPos {
    /// A position on the first server, GTIDs unknown.
    pub fn new(file: impl Into<String>, pos: u64) -> BinlogPos {
        BinlogPos {
            file: file.into(),
            pos,
            epoch: 0,
            gtids: None,
        }
    }

    fn sort_key(&self) -> (u32, &str, u64, u64) {
        match self.file.rsplit_once('.') {
            Some((stem, n)) if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) => {
                (self.epoch, stem, n.parse().unwrap_or(u64::MAX), self.pos)
            }
            _ => (self.epoch, self.file.as_str(), 0, self.pos),
        }
    }

    /// `file:pos` alone, as the server prints it.
    pub fn file_pos(&self) -> String {
        format!("{}:{}", self.file, self.pos)
    }
}

impl PartialEq for BinlogPos {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for BinlogPos {}

impl std::hash::Hash for BinlogPos {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        (self.epoch, &self.file, self.pos).hash(state);
    }
}

impl Ord for BinlogPos {
    fn cmp(&self, other: &Self) -> Ordering {
        self.sort_key()
            .cmp(&other.sort_key())
            .then_with(|| self.file.cmp(&other.file))
    }
}

impl PartialOrd for BinlogPos {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// `file:pos`, then `;epoch=N` after a failover, then `;mariadb=…` or `;gtid=…`.
impl fmt::Display for BinlogPos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.file, self.pos)?;
        if self.epoch != 0 {
            write!(f, ";epoch={}", self.epoch)?;
        }
        if let Some(g) = &self.gtids {
            write!(f, ";{g}")?;
        }
        Ok(())
    }
}

impl FromStr for BinlogPos {
    type Err = ParsePositionError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |reason| ParsePositionError::new("binlog position", s, reason);
        let mut parts = s.split(';');
        let (file, pos) = parts
            .next()
            .unwrap_or_default()
            .rsplit_once(':')
            .ok_or_else(|| err("expected FILE:OFFSET"))?;
        if file.is_empty() {
            return Err(err("empty file name"));
        }
        let pos = pos.parse().map_err(|_| err("offset is not a number"))?;
        let mut out = BinlogPos::new(file, pos);
        for part in parts {
            let (key, value) = part
                .split_once('=')
                .ok_or_else(|| err("expected ;epoch=, ;mariadb= or ;gtid= after FILE:OFFSET"))?;
            match key {
                "epoch" => out.epoch = value.parse().map_err(|_| err("epoch is not a number"))?,
                "mariadb" if out.gtids.is_none() => {
                    out.gtids = Some(Gtids::MariaDb(value.parse()?));
                }
                "gtid" if out.gtids.is_none() => out.gtids = Some(Gtids::MySql(value.parse()?)),
                _ => return Err(err("unknown or repeated part after FILE:OFFSET")),
            }
        }
        Ok(out)
    }
}

/// A MySQL server UUID (source id of a GTID).
pub type ServerUuid = [u8; 16];
/// Inclusive transaction-number ranges of one server.
type GnoRanges = Vec<(u64, u64)>;

/// A MySQL GTID set: per server UUID, a sorted list of disjoint, non-adjacent inclusive ranges.
/// Printed as MySQL prints `gtid_executed`: `uuid:1-5:7,uuid2:1-3` (UUIDs lower case, sorted).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub struct GtidSet {
    /// Sorted by UUID; each range list sorted, merged, never empty.
    sids: Vec<(ServerUuid, GnoRanges)>,
}

impl GtidSet {
    /// Adds transaction `gno` of server `sid`.
    pub fn add(&mut self, sid: [u8; 16], gno: u64) {
        self.add_range(sid, gno, gno);
    }

    /// Adds the inclusive range `start..=end` of server `sid`.
    pub fn add_range(&mut self, sid: [u8; 16], start: u64, end: u64) {
        let (start, end) = (start.min(end), start.max(end));
        let idx = match self.sids.binary_search_by(|(s, _)| s.cmp(&sid)) {
            Ok(i) => i,
            Err(i) => {
                self.sids.insert(i, (sid, Vec::new()));
                i
            }
        };
        merge_range(&mut self.sids[idx].1, start, end);
    }

    /// Whether transaction `gno` of server `sid` is in the set.
    pub fn contains(&self, sid: &[u8; 16], gno: u64) -> bool {
        self.sids
            .binary_search_by(|(s, _)| s.cmp(sid))
            .ok()
            .is_some_and(|i| self.sids[i].1.iter().any(|&(s, e)| s <= gno && gno <= e))
    }

    /// Number of transactions in the set (saturating).
    pub fn count(&self) -> u64 {
        self.sids
            .iter()
            .flat_map(|(_, r)| r.iter())
            .fold(0u64, |acc, &(s, e)| acc.saturating_add(e - s + 1))
    }

    pub fn is_empty(&self) -> bool {
        self.sids.is_empty()
    }

    /// Each server's UUID with its inclusive ranges, in order.
    pub fn ranges(&self) -> impl Iterator<Item = (&ServerUuid, &[(u64, u64)])> {
        self.sids.iter().map(|(u, r)| (u, r.as_slice()))
    }
}

/// A UUID in its 8-4-4-4-12 lower-case hex form.
pub fn uuid_text(u: &[u8; 16]) -> String {
    struct U<'a>(&'a [u8; 16]);
    impl fmt::Display for U<'_> {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            fmt_uuid(self.0, f)
        }
    }
    U(u).to_string()
}

/// Adds `start..=end` to sorted, merged ranges, keeping them so.
fn merge_range(ranges: &mut GnoRanges, start: u64, end: u64) {
    ranges.push((start, end));
    ranges.sort_unstable();
    let mut merged: Vec<(u64, u64)> = Vec::with_capacity(ranges.len());
    for &(s, e) in ranges.iter() {
        match merged.last_mut() {
            Some(last) if s <= last.1.saturating_add(1) => last.1 = last.1.max(e),
            _ => merged.push((s, e)),
        }
    }
    *ranges = merged;
}

/// A MySQL GTID set as a server's binlog has it, tags included (MySQL 8.3+:
/// `uuid:1-5:tag_a:1-3`): per (server UUID, tag), sorted merged inclusive ranges; the tag is
/// empty for untagged GTIDs. Printed as MySQL prints `gtid_executed`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub struct MysqlGtids {
    /// Sorted by (UUID, tag); range lists never empty.
    sids: Vec<(ServerUuid, String, GnoRanges)>,
}

impl MysqlGtids {
    /// Adds transaction `gno` of server `sid` with `tag` ("" for none).
    pub fn add(&mut self, sid: ServerUuid, tag: &str, gno: u64) {
        self.add_range(sid, tag, gno, gno);
    }

    pub fn add_range(&mut self, sid: ServerUuid, tag: &str, start: u64, end: u64) {
        let (start, end) = (start.min(end), start.max(end));
        let idx = match self
            .sids
            .binary_search_by(|(s, t, _)| (s, t.as_str()).cmp(&(&sid, tag)))
        {
            Ok(i) => i,
            Err(i) => {
                self.sids.insert(i, (sid, tag.to_owned(), Vec::new()));
                i
            }
        };
        merge_range(&mut self.sids[idx].2, start, end);
    }

    pub fn contains(&self, sid: &ServerUuid, tag: &str, gno: u64) -> bool {
        self.contains_range(sid, tag, gno, gno)
    }

    /// Whether every transaction `start..=end` of (`sid`, `tag`) is in the set: ranges are
    /// merged, so one of them holds it all.
    pub fn contains_range(&self, sid: &ServerUuid, tag: &str, start: u64, end: u64) -> bool {
        self.sids
            .binary_search_by(|(s, t, _)| (s, t.as_str()).cmp(&(sid, tag)))
            .ok()
            .is_some_and(|i| self.sids[i].2.iter().any(|&(s, e)| s <= start && end <= e))
    }

    /// Each (UUID, tag) with its inclusive ranges, in order.
    pub fn ranges(&self) -> impl Iterator<Item = (&ServerUuid, &str, &[(u64, u64)])> {
        self.sids
            .iter()
            .map(|(u, t, r)| (u, t.as_str(), r.as_slice()))
    }
}

impl fmt::Display for MysqlGtids {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut last: Option<&ServerUuid> = None;
        for (uuid, tag, ranges) in &self.sids {
            if last != Some(uuid) {
                if last.is_some() {
                    f.write_str(",")?;
                }
                fmt_uuid(uuid, f)?;
                last = Some(uuid);
            }
            if !tag.is_empty() {
                write!(f, ":{tag}")?;
            }
            for &(a, b) in ranges {
                if a == b {
                    write!(f, ":{a}")?;
                } else {
                    write!(f, ":{a}-{b}")?;
                }
            }
        }
        Ok(())
    }
}

/// A MySQL GTID tag: a letter or underscore, then up to 31 letters, digits or underscores
/// (MySQL compares them case-insensitively and prints them in lower case).
fn valid_tag(t: &str) -> bool {
    let mut chars = t.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && t.len() <= 32
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

impl FromStr for MysqlGtids {
    type Err = ParsePositionError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |reason| ParsePositionError::new("MySQL GTID set", s, reason);
        let mut set = MysqlGtids::default();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let mut fields = part.split(':');
            let sid = fields
                .next()
                .and_then(parse_uuid)
                .ok_or_else(|| err("bad server UUID"))?;
            let mut tag = String::new();
            let mut any = false;
            for field in fields {
                if field.starts_with(|c: char| c.is_ascii_digit()) {
                    let (a, b) = field.split_once('-').unwrap_or((field, field));
                    let a: u64 = a.parse().map_err(|_| err("bad transaction number"))?;
                    let b: u64 = b.parse().map_err(|_| err("bad transaction number"))?;
                    if a == 0 || b < a {
                        return Err(err("ranges start at 1 and are increasing"));
                    }
                    set.add_range(sid, &tag, a, b);
                    any = true;
                } else if valid_tag(field) {
                    tag = field.to_ascii_lowercase();
                } else {
                    return Err(err("bad tag"));
                }
            }
            if !any {
                return Err(err("a server UUID needs at least one range"));
            }
        }
        Ok(set)
    }
}

fn fmt_uuid(u: &[u8; 16], f: &mut fmt::Formatter<'_>) -> fmt::Result {
    for (i, b) in u.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            f.write_str("-")?;
        }
        write!(f, "{b:02x}")?;
    }
    Ok(())
}

/// Parses a UUID in its 8-4-4-4-12 hex form (or 32 bare hex digits).
pub fn parse_uuid(s: &str) -> Option<[u8; 16]> {
    let hex: Vec<u8> = s.bytes().filter(|&b| b != b'-').collect();
    if hex.len() != 32 || s.len() > 36 {
        return None;
    }
    let mut out = [0u8; 16];
    for (i, pair) in hex.chunks(2).enumerate() {
        let txt = std::str::from_utf8(pair).ok()?;
        out[i] = u8::from_str_radix(txt, 16).ok()?;
    }
    Some(out)
}

impl fmt::Display for GtidSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (sid, ranges)) in self.sids.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            fmt_uuid(sid, f)?;
            for &(s, e) in ranges {
                if s == e {
                    write!(f, ":{s}")?;
                } else {
                    write!(f, ":{s}-{e}")?;
                }
            }
        }
        Ok(())
    }
}

impl FromStr for GtidSet {
    type Err = ParsePositionError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |reason| ParsePositionError::new("GTID set", s, reason);
        let mut set = GtidSet::default();
        // MySQL prints gtid_executed with newlines after commas.
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let mut fields = part.split(':');
            let sid = fields
                .next()
                .and_then(parse_uuid)
                .ok_or_else(|| err("bad server UUID"))?;
            let mut any = false;
            for range in fields {
                any = true;
                let (a, b) = range.split_once('-').unwrap_or((range, range));
                let a: u64 = a.parse().map_err(|_| err("bad transaction number"))?;
                let b: u64 = b.parse().map_err(|_| err("bad transaction number"))?;
                if a == 0 || b < a {
                    return Err(err("ranges start at 1 and are increasing"));
                }
                set.add_range(sid, a, b);
            }
            if !any {
                return Err(err("a server UUID needs at least one range"));
            }
        }
        Ok(set)
    }
}

impl Ord for GtidSet {
    fn cmp(&self, other: &Self) -> Ordering {
        self.count()
            .cmp(&other.count())
            .then_with(|| self.sids.cmp(&other.sids))
    }
}

impl PartialOrd for GtidSet {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// One MariaDB GTID: `domain-server-sequence`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct MariaGtid {
    pub domain: u32,
    pub server: u32,
    pub seq: u64,
}

/// A MariaDB replication position: the last GTID applied in each replication domain, as in
/// `gtid_slave_pos` (`0-1-100,1-2-7`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub struct MariaGtidList {
    /// One entry per domain, sorted by domain.
    gtids: Vec<MariaGtid>,
}

impl MariaGtidList {
    /// Records `gtid` as the latest of its domain.
    pub fn advance(&mut self, gtid: MariaGtid) {
        match self.gtids.binary_search_by_key(&gtid.domain, |g| g.domain) {
            Ok(i) => self.gtids[i] = gtid,
            Err(i) => self.gtids.insert(i, gtid),
        }
    }

    pub fn gtids(&self) -> &[MariaGtid] {
        &self.gtids
    }

    fn seq_total(&self) -> u128 {
        self.gtids.iter().map(|g| u128::from(g.seq)).sum()
    }
}

impl fmt::Display for MariaGtidList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, g) in self.gtids.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{}-{}-{}", g.domain, g.server, g.seq)?;
        }
        Ok(())
    }
}

impl FromStr for MariaGtidList {
    type Err = ParsePositionError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |reason| ParsePositionError::new("MariaDB GTID list", s, reason);
        let mut list = MariaGtidList::default();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let mut f = part.split('-');
            let (Some(d), Some(sv), Some(q), None) = (f.next(), f.next(), f.next(), f.next())
            else {
                return Err(err("expected DOMAIN-SERVER-SEQ"));
            };
            let gtid = MariaGtid {
                domain: d.parse().map_err(|_| err("bad domain id"))?,
                server: sv.parse().map_err(|_| err("bad server id"))?,
                seq: q.parse().map_err(|_| err("bad sequence number"))?,
            };
            if list.gtids.iter().any(|g| g.domain == gtid.domain) {
                return Err(err("a domain appears twice"));
            }
            list.advance(gtid);
        }
        Ok(list)
    }
}

impl Ord for MariaGtidList {
    fn cmp(&self, other: &Self) -> Ordering {
        self.seq_total()
            .cmp(&other.seq_total())
            .then_with(|| self.gtids.cmp(&other.gtids))
    }
}

impl PartialOrd for MariaGtidList {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// A position in one source's change stream.
///
/// Text form: `pg:0/16B3748`, `binlog:mysql-bin.000003:1234`, `gtid:<MySQL GTID set>`,
/// `mariadb:0-1-100,1-2-7`. Positions of different kinds never come from the same source; across
/// kinds the order is by kind, which only matters for sorting mixed collections.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(from = "WirePosition", into = "WirePosition")]
pub enum Position {
    Postgres(Lsn),
    Binlog(BinlogPos),
    MySqlGtid(GtidSet),
    MariaDbGtid(MariaGtidList),
}

/// A position as frames and JSON hold it. A binlog position on the first server without GTIDs
/// keeps the shape it always had (variant 1); one with an epoch or GTIDs is the appended
/// variant 4, which an older ferry rejects as a payload error instead of misreading it.
#[derive(Serialize, Deserialize)]
#[serde(rename = "Position")]
enum WirePosition {
    Postgres(Lsn),
    Binlog(WireFilePos),
    MySqlGtid(GtidSet),
    MariaDbGtid(MariaGtidList),
    BinlogAt(WireBinlogAt),
}

#[derive(Serialize, Deserialize)]
#[serde(rename = "BinlogPos")]
struct WireFilePos {
    file: String,
    pos: u64,
}

#[derive(Serialize, Deserialize)]
#[serde(rename = "BinlogAt")]
struct WireBinlogAt {
    file: String,
    pos: u64,
    epoch: u32,
    gtids: Option<Gtids>,
}

impl From<WirePosition> for Position {
    fn from(w: WirePosition) -> Position {
        match w {
            WirePosition::Postgres(l) => Position::Postgres(l),
            WirePosition::Binlog(b) => Position::Binlog(BinlogPos::new(b.file, b.pos)),
            WirePosition::MySqlGtid(g) => Position::MySqlGtid(g),
            WirePosition::MariaDbGtid(g) => Position::MariaDbGtid(g),
            WirePosition::BinlogAt(b) => Position::Binlog(BinlogPos {
                file: b.file,
                pos: b.pos,
                epoch: b.epoch,
                gtids: b.gtids,
            }),
        }
    }
}

impl From<Position> for WirePosition {
    fn from(p: Position) -> WirePosition {
        match p {
            Position::Postgres(l) => WirePosition::Postgres(l),
            Position::Binlog(b) if b.epoch == 0 && b.gtids.is_none() => {
                WirePosition::Binlog(WireFilePos {
                    file: b.file,
                    pos: b.pos,
                })
            }
            Position::Binlog(b) => WirePosition::BinlogAt(WireBinlogAt {
                file: b.file,
                pos: b.pos,
                epoch: b.epoch,
                gtids: b.gtids,
            }),
            Position::MySqlGtid(g) => WirePosition::MySqlGtid(g),
            Position::MariaDbGtid(g) => WirePosition::MariaDbGtid(g),
        }
    }
}

impl Position {
    /// Whether this position covers `txn`, the position of a transaction (or another position of
    /// the same source): every transaction committed at or before `self` is covered, and `txn`
    /// is covered when it is one of them. The one comparison of positions ferry makes.
    pub fn covers(&self, txn: &Position) -> bool {
        txn <= self
    }
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Position::Postgres(l) => write!(f, "pg:{l}"),
            Position::Binlog(b) => write!(f, "binlog:{b}"),
            Position::MySqlGtid(g) => write!(f, "gtid:{g}"),
            Position::MariaDbGtid(g) => write!(f, "mariadb:{g}"),
        }
    }
}

impl FromStr for Position {
    type Err = ParsePositionError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (kind, rest) = s.split_once(':').ok_or_else(|| {
            ParsePositionError::new(
                "position",
                s,
                "expected pg:, binlog:, gtid: or mariadb: prefix",
            )
        })?;
        match kind {
            "pg" => rest.parse().map(Position::Postgres),
            "binlog" => rest.parse().map(Position::Binlog),
            "gtid" => rest.parse().map(Position::MySqlGtid),
            "mariadb" => rest.parse().map(Position::MariaDbGtid),
            _ => Err(ParsePositionError::new(
                "position",
                s,
                "unknown kind: expected pg, binlog, gtid or mariadb",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn lsn_text() {
        let l: Lsn = "16/B374D848".parse().unwrap();
        assert_eq!(l.0, 0x16_B374_D848);
        assert_eq!(l.to_string(), "16/B374D848");
        assert!("16B374D848".parse::<Lsn>().is_err());
        assert!("1/123456789".parse::<Lsn>().is_err());
        assert!("x/1".parse::<Lsn>().is_err());
    }

    #[test]
    fn binlog_order_uses_numeric_suffix() {
        let a: BinlogPos = "mysql-bin.999999:900".parse().unwrap();
        let b: BinlogPos = "mysql-bin.1000000:4".parse().unwrap();
        assert!(a < b);
        let c: BinlogPos = "mysql-bin.999999:901".parse().unwrap();
        assert!(a < c);
    }

    #[test]
    fn gtid_set_text_and_order() {
        let s: GtidSet = "3E11FA47-71CA-11E1-9E33-C80AA9429562:1-5:7,\n\
                          4e11fa47-71ca-11e1-9e33-c80aa9429562:1"
            .parse()
            .unwrap();
        assert_eq!(
            s.to_string(),
            "3e11fa47-71ca-11e1-9e33-c80aa9429562:1-5:7,4e11fa47-71ca-11e1-9e33-c80aa9429562:1"
        );
        assert_eq!(s.count(), 7);
        let mut t = s.clone();
        t.add(
            parse_uuid("3e11fa47-71ca-11e1-9e33-c80aa9429562").unwrap(),
            6,
        );
        assert!(s < t);
        assert_eq!(
            t.to_string(),
            "3e11fa47-71ca-11e1-9e33-c80aa9429562:1-7,4e11fa47-71ca-11e1-9e33-c80aa9429562:1"
        );
        assert!("uuid:1".parse::<GtidSet>().is_err());
        assert!(
            "3e11fa47-71ca-11e1-9e33-c80aa9429562"
                .parse::<GtidSet>()
                .is_err()
        );
        assert!(
            "3e11fa47-71ca-11e1-9e33-c80aa9429562:5-2"
                .parse::<GtidSet>()
                .is_err()
        );
    }

    #[test]
    fn binlog_text_with_epoch_and_gtids() {
        let p: BinlogPos = "mariadb-bin.000003:4321;epoch=2;mariadb=0-1-100,1-2-7"
            .parse()
            .unwrap();
        assert_eq!(
            (p.file.as_str(), p.pos, p.epoch),
            ("mariadb-bin.000003", 4321, 2)
        );
        assert_eq!(
            p.gtids,
            Some(Gtids::MariaDb("1-2-7,0-1-100".parse().unwrap()))
        );
        assert_eq!(
            p.to_string(),
            "mariadb-bin.000003:4321;epoch=2;mariadb=0-1-100,1-2-7"
        );
        let m: BinlogPos = "mysql-bin.000001:157;gtid=3e11fa47-71ca-11e1-9e33-c80aa9429562:1-5"
            .parse()
            .unwrap();
        assert!(matches!(m.gtids, Some(Gtids::MySql(_))));
        assert_eq!(m.epoch, 0);
        // A later server's positions come after every position of an earlier one, whatever
        // their file names and offsets; the GTIDs do not take part in the order.
        let old = BinlogPos::new("mariadb-bin.000099", 900_000);
        let mut new = BinlogPos::new("mariadb-bin.000001", 4);
        new.epoch = 1;
        assert!(old < new);
        assert_eq!(
            p,
            BinlogPos {
                gtids: None,
                ..p.clone()
            }
        );
        for bad in [
            "f.1:4;epoch=x",
            "f.1:4;mariadb=0-1",
            "f.1:4;mariadb=0-1-1;gtid=3e11fa47-71ca-11e1-9e33-c80aa9429562:1",
            "f.1:4;color=red",
            "f.1:4;",
        ] {
            assert!(bad.parse::<BinlogPos>().is_err(), "{bad}");
        }
    }

    #[test]
    fn mysql_gtid_sets_with_tags() {
        let u = "3e11fa47-71ca-11e1-9e33-c80aa9429562";
        let text = format!("{u}:1-5:7:Tag_B:3:tag_a:1-2,4e11fa47-71ca-11e1-9e33-c80aa9429562:9");
        let s: MysqlGtids = text.parse().unwrap();
        assert_eq!(
            s.to_string(),
            format!("{u}:1-5:7:tag_a:1-2:tag_b:3,4e11fa47-71ca-11e1-9e33-c80aa9429562:9")
        );
        let sid = parse_uuid(u).unwrap();
        assert!(s.contains(&sid, "tag_a", 2));
        assert!(!s.contains(&sid, "tag_a", 3));
        assert!(s.contains(&sid, "", 4));
        assert!(!s.contains(&sid, "tag_b", 4));
        let mut t = s.clone();
        t.add(sid, "tag_a", 3);
        assert!(t.to_string().contains("tag_a:1-3"), "{t}");
        assert_eq!(t.to_string().parse::<MysqlGtids>().unwrap(), t);
        for bad in [
            u.to_string(),
            format!("{u}:tag"),
            format!("{u}:1x"),
            format!("{u}:-tag:1"),
            format!("{u}:0-3"),
            format!("{u}:{}:1", "t".repeat(33)),
        ] {
            assert!(bad.parse::<MysqlGtids>().is_err(), "{bad}");
        }
        // What an untagged server prints parses the same as before.
        assert_eq!(
            "3E11FA47-71CA-11E1-9E33-C80AA9429562:1-5:7,\n4e11fa47-71ca-11e1-9e33-c80aa9429562:1"
                .parse::<MysqlGtids>()
                .unwrap()
                .to_string(),
            format!("{u}:1-5:7,4e11fa47-71ca-11e1-9e33-c80aa9429562:1")
        );
    }

    #[test]
    fn a_binlog_position_without_epoch_or_gtids_keeps_its_old_encoding() {
        let config = bincode::config::standard();
        let old = Position::Binlog(BinlogPos::new("mysql-bin.000042", 1234));
        let bytes = bincode::serde::encode_to_vec(&old, config).unwrap();
        assert_eq!(bytes[0], 1, "variant 1, as before epochs and GTIDs");
        let mut new = BinlogPos::new("mysql-bin.000042", 1234);
        new.gtids = Some(Gtids::MariaDb("0-1-5".parse().unwrap()));
        let bytes = bincode::serde::encode_to_vec(Position::Binlog(new.clone()), config).unwrap();
        assert_eq!(bytes[0], 4, "the appended variant");
        let (back, _): (Position, usize) =
            bincode::serde::decode_from_slice(&bytes, config).unwrap();
        assert_eq!(format!("{back:?}"), format!("{:?}", Position::Binlog(new)));
    }

    #[test]
    fn mariadb_list() {
        let l: MariaGtidList = "1-2-7,0-1-100".parse().unwrap();
        assert_eq!(l.to_string(), "0-1-100,1-2-7");
        let mut m = l.clone();
        m.advance(MariaGtid {
            domain: 0,
            server: 1,
            seq: 101,
        });
        assert!(l < m);
        assert!("0-1".parse::<MariaGtidList>().is_err());
        assert!("0-1-1,0-2-2".parse::<MariaGtidList>().is_err());
    }

    fn arb_position() -> impl Strategy<Value = Position> {
        prop_oneof![
            any::<u64>().prop_map(|v| Position::Postgres(Lsn(v))),
            (
                "[a-z]{1,8}-bin\\.[0-9]{6}",
                any::<u64>(),
                0u32..3,
                proptest::option::of(proptest::collection::vec(
                    (0u32..4, any::<u32>(), any::<u64>()),
                    0..3
                ))
            )
                .prop_map(|(file, pos, epoch, gtids)| Position::Binlog(BinlogPos {
                    file,
                    pos,
                    epoch,
                    gtids: gtids.map(|v| {
                        let mut l = MariaGtidList::default();
                        for (domain, server, seq) in v {
                            l.advance(MariaGtid {
                                domain,
                                server,
                                seq,
                            });
                        }
                        Gtids::MariaDb(l)
                    }),
                })),
            proptest::collection::vec((any::<[u8; 16]>(), 1u64..1000, 0u64..1000), 0..4).prop_map(
                |v| {
                    let mut s = GtidSet::default();
                    for (sid, a, n) in v {
                        s.add_range(sid, a, a + n);
                    }
                    Position::MySqlGtid(s)
                }
            ),
            proptest::collection::vec((any::<u32>(), any::<u32>(), any::<u64>()), 0..4).prop_map(
                |v| {
                    let mut l = MariaGtidList::default();
                    for (domain, server, seq) in v {
                        l.advance(MariaGtid {
                            domain,
                            server,
                            seq,
                        });
                    }
                    Position::MariaDbGtid(l)
                }
            ),
        ]
    }

    proptest! {
        #[test]
        fn position_text_round_trips(p in arb_position()) {
            let text = p.to_string();
            let back = text.parse::<Position>().unwrap();
            prop_assert_eq!(back.to_string(), text);
            prop_assert_eq!(back, p);
        }

        #[test]
        fn position_parse_never_panics(s in "\\PC{0,64}") {
            let _ = s.parse::<Position>();
        }

        #[test]
        fn gtid_stream_order_is_monotonic(sids in proptest::collection::vec(0u8..3, 1..50)) {
            // Each commit adds the next transaction of some server: positions must increase.
            let mut set = GtidSet::default();
            let mut next = [1u64; 3];
            let mut prev = set.clone();
            for s in sids {
                set.add([s; 16], next[s as usize]);
                next[s as usize] += 1;
                prop_assert!(prev < set);
                prev = set.clone();
            }
        }
    }
}
