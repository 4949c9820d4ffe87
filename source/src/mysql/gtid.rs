//! The GTIDs of the binlog stream: which transactions the server had executed at each position
//! ferry records, so that after a failover the stream can be resumed on another server that has
//! the same transactions (MariaDB's `@slave_connect_state`, MySQL's `COM_BINLOG_DUMP_GTID`).
//!
//! The state starts from what the server says at a position (`BINLOG_GTID_POS` on MariaDB, the
//! executed set on MySQL), is advanced by each transaction's GTID event, and is set again by the
//! list each binlog file opens with (MariaDB's Gtid_list, MySQL's Previous_gtids). Where it is
//! not known it is `None`, and a failover is "position lost", never a guess.

use ferry_proto::{Gtids, MariaGtid, MariaGtidList, MysqlGtids};
use mysql_async::binlog::events::{GtidEvent, PreviousGtidsEvent};
use mysql_async::prelude::Queryable;
use mysql_async::{BinlogStreamRequest, Conn, Sid};

use crate::error::{Error, Result};

/// MariaDB's GTID event (mysql_common does not decode it).
pub(crate) const MARIADB_GTID_EVENT: u8 = 162;
/// MariaDB's GTID list event: the GTIDs before the binlog file it opens.
pub(crate) const MARIADB_GTID_LIST_EVENT: u8 = 163;

/// A MariaDB GTID event's body: the transaction's domain and sequence number, and whether it
/// is a statement logged on its own (DDL) rather than a transaction.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct MariaGtidEvent {
    pub domain: u32,
    pub seq: u64,
    pub standalone: bool,
}

/// MariaDB's GTID event body: sequence number, domain id, flags.
pub(crate) fn parse_maria_gtid(data: &[u8]) -> Option<MariaGtidEvent> {
    let seq = u64::from_le_bytes(data.get(0..8)?.try_into().ok()?);
    let domain = u32::from_le_bytes(data.get(8..12)?.try_into().ok()?);
    let flags = *data.get(12)?;
    Some(MariaGtidEvent {
        domain,
        seq,
        standalone: flags & 1 != 0,
    })
}

/// MariaDB's GTID list body: a count (its low 28 bits; the high 4 are flags), then per entry
/// domain (u32), server (u32), sequence (u64), little-endian. The checksum, if any, follows.
/// Returns the position it means: per domain, its last entry.
pub(crate) fn parse_maria_gtid_list(data: &[u8]) -> Option<MariaGtidList> {
    let count = u32::from_le_bytes(data.get(0..4)?.try_into().ok()?) & 0x0FFF_FFFF;
    let mut list = MariaGtidList::default();
    for i in 0..count as usize {
        let at = 4 + i * 16;
        let entry = data.get(at..at + 16)?;
        let gtid = MariaGtid {
            domain: u32::from_le_bytes(entry[0..4].try_into().ok()?),
            server: u32::from_le_bytes(entry[4..8].try_into().ok()?),
            seq: u64::from_le_bytes(entry[8..16].try_into().ok()?),
        };
        // The list is the binlog state: the last GTID of each (domain, server), with each
        // domain's latest last among its entries, so the last one of a domain is its position.
        list.advance(gtid);
    }
    Some(list)
}

/// A MariaDB transaction's GTID (from server `server`) joins the executed state.
pub(crate) fn advance_maria(state: &mut Option<Gtids>, server: u32, g: &MariaGtidEvent) {
    if let Some(Gtids::MariaDb(list)) = state {
        list.advance(MariaGtid {
            domain: g.domain,
            server,
            seq: g.seq,
        });
    }
}

/// A MySQL transaction's GTID (tagged or not) joins the executed set.
pub(crate) fn advance_mysql(state: &mut Option<Gtids>, e: &GtidEvent) {
    // A GTID on a server that had none before (or where ferry did not know the set) leaves
    // the set unknown until the next binlog file says it.
    if let Some(Gtids::MySql(set)) = state {
        let tag = e.tag().map(|t| t.to_ascii_lowercase()).unwrap_or_default();
        set.add(e.sid(), &tag, e.gno());
    }
}

/// MySQL's Previous_gtids event opens each binlog file with the set executed before it.
pub(crate) fn mysql_previous(state: &mut Option<Gtids>, e: &PreviousGtidsEvent<'_>) {
    let mut set = MysqlGtids::default();
    for sid in e.sids() {
        let tag = sid
            .tag()
            .map(|t| t.to_ascii_lowercase())
            .unwrap_or_default();
        for i in sid.intervals() {
            // Intervals are [start, end).
            if i.end() > i.start() {
                set.add_range(sid.uuid(), &tag, i.start(), i.end() - 1);
            }
        }
    }
    *state = Some(Gtids::MySql(set));
}

/// A binlog dump request that starts after `gtids` on whatever server `conn` is: MariaDB is told
/// the state in `@slave_connect_state` (with strict mode, so a server that lacks a transaction
/// ferry read, or has diverged, refuses instead of skipping); MySQL gets `COM_BINLOG_DUMP_GTID`.
pub(crate) async fn resume_request<'a>(
    conn: &mut Conn,
    server_id: u32,
    gtids: &'a Gtids,
    sids: &'a mut Vec<Sid<'static>>,
) -> Result<BinlogStreamRequest<'a>> {
    match gtids {
        Gtids::MariaDb(list) => {
            conn.exec_drop("SET @slave_connect_state = ?", (list.to_string(),))
                .await?;
            conn.query_drop("SET @slave_gtid_strict_mode = 1, @slave_gtid_ignore_duplicates = 0")
                .await?;
            Ok(BinlogStreamRequest::new(server_id))
        }
        Gtids::MySql(set) => {
            *sids = sid_blocks(set)?;
            Ok(BinlogStreamRequest::new(server_id)
                .with_gtid()
                .with_gtid_set(sids.iter().cloned()))
        }
    }
}

/// The set as `COM_BINLOG_DUMP_GTID` blocks: one per (UUID, tag), written as MySQL prints it
/// for mysql_common's parser.
fn sid_blocks(set: &MysqlGtids) -> Result<Vec<Sid<'static>>> {
    let mut sids = Vec::new();
    for (uuid, tag, ranges) in set.ranges() {
        let mut text = ferry_proto::position::uuid_text(uuid);
        if !tag.is_empty() {
            text.push(':');
            text.push_str(tag);
        }
        for &(start, end) in ranges {
            text.push_str(&format!(":{start}-{end}"));
        }
        sids.push(
            text.parse()
                .map_err(|e| Error::Protocol(format!("GTID block {text}: {e}")))?,
        );
    }
    Ok(sids)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn maria_gtid() {
        let mut d = 77u64.to_le_bytes().to_vec();
        d.extend(3u32.to_le_bytes());
        d.push(1);
        let g = parse_maria_gtid(&d).unwrap();
        assert_eq!((g.domain, g.seq, g.standalone), (3, 77, true));
        assert!(parse_maria_gtid(&d[..12]).is_none());
    }

    fn list_bytes(entries: &[(u32, u32, u64)], flags: u32) -> Vec<u8> {
        let mut d = (entries.len() as u32 | flags << 28).to_le_bytes().to_vec();
        for &(domain, server, seq) in entries {
            d.extend(domain.to_le_bytes());
            d.extend(server.to_le_bytes());
            d.extend(seq.to_le_bytes());
        }
        d
    }

    #[test]
    fn maria_gtid_list() {
        let d = list_bytes(&[(1, 7, 12), (0, 1, 100)], 0x1);
        let l = parse_maria_gtid_list(&d).unwrap();
        assert_eq!(l.to_string(), "0-1-100,1-7-12");
        // With a checksum after it.
        let mut c = d.clone();
        c.extend([1, 2, 3, 4]);
        assert_eq!(parse_maria_gtid_list(&c).unwrap(), l);
        assert!(parse_maria_gtid_list(&d[..d.len() - 1]).is_none());
        // Several servers of one domain: the last entry is the domain's position.
        assert_eq!(
            parse_maria_gtid_list(&list_bytes(&[(1, 9, 30), (1, 2, 31)], 0))
                .unwrap()
                .to_string(),
            "1-2-31"
        );
        assert_eq!(
            parse_maria_gtid_list(&list_bytes(&[], 0)).unwrap(),
            MariaGtidList::default()
        );
    }

    #[test]
    fn the_state_follows_each_transaction() {
        let mut state = Some(Gtids::MariaDb("0-1-5".parse().unwrap()));
        // The server id comes from the event's header: the transaction's origin.
        advance_maria(
            &mut state,
            2,
            &MariaGtidEvent {
                domain: 0,
                seq: 6,
                standalone: false,
            },
        );
        advance_maria(
            &mut state,
            2,
            &MariaGtidEvent {
                domain: 4,
                seq: 1,
                standalone: false,
            },
        );
        assert_eq!(state, Some(Gtids::MariaDb("0-2-6,4-2-1".parse().unwrap())));
        // Unknown stays unknown: a guess would resume in the wrong place.
        let mut unknown = None;
        advance_maria(&mut unknown, 1, &MariaGtidEvent::default());
        assert_eq!(unknown, None);
    }

    #[test]
    fn mysql_gtids_follow_gtid_events_and_each_file_s_previous_set() {
        use mysql_async::binlog::events::PreviousGtidsSid;
        let a = [0xaa; 16];
        let b = [0xbb; 16];
        // Unknown until a file's Previous_gtids says it.
        let mut state = None;
        advance_mysql(&mut state, &GtidEvent::new(a, 1));
        assert_eq!(state, None);
        let previous = PreviousGtidsEvent::new(vec![
            PreviousGtidsSid::new(a, None, vec![mysql_async::GnoInterval::new(1, 6)]),
            PreviousGtidsSid::new(b, None, vec![mysql_async::GnoInterval::new(3, 4)]),
        ]);
        mysql_previous(&mut state, &previous);
        advance_mysql(&mut state, &GtidEvent::new(a, 6));
        advance_mysql(&mut state, &GtidEvent::new(b, 9));
        let Some(Gtids::MySql(set)) = &state else {
            panic!("{state:?}")
        };
        assert_eq!(
            set.to_string(),
            "aaaaaaaa-aaaa-aaaa-aaaa-aaaaaaaaaaaa:1-6,bbbbbbbb-bbbb-bbbb-bbbb-bbbbbbbbbbbb:3:9"
        );
    }

    /// MySQL 8.4's tagged GTIDs, as mysql_common decodes them from the binlog, are recorded with
    /// their tags, and a resume request names them.
    #[test]
    fn tagged_mysql_gtids_are_recorded_with_their_tags() {
        use mysql_async::binlog::events::PreviousGtidsSid;
        use mysql_common::packets::Tag;
        let a = [0xaa; 16];
        let previous = PreviousGtidsEvent::new(vec![
            PreviousGtidsSid::new(a, None, vec![mysql_async::GnoInterval::new(1, 4)]),
            PreviousGtidsSid::new(
                a,
                Some(Tag::new("batch").unwrap()),
                vec![mysql_async::GnoInterval::new(1, 2)],
            ),
        ]);
        let mut state = None;
        mysql_previous(&mut state, &previous);
        advance_mysql(
            &mut state,
            &GtidEvent::new_tagged(a, Tag::new("batch").unwrap(), 2),
        );
        advance_mysql(&mut state, &GtidEvent::new(a, 4));
        let Some(Gtids::MySql(set)) = &state else {
            panic!("{state:?}")
        };
        assert_eq!(
            set.to_string(),
            "aaaaaaaa-aaaa-aaaa-aaaa-aaaaaaaaaaaa:1-4:batch:1-2"
        );
        assert!(set.contains(&a, "batch", 2));
        // The request's blocks: one per (UUID, tag), intervals end-exclusive.
        let blocks: Vec<_> = sid_blocks(set)
            .unwrap()
            .iter()
            .map(|sid| {
                (
                    sid.tag().map(|t| t.to_string()),
                    sid.intervals()
                        .iter()
                        .map(|i| (i.start(), i.end()))
                        .collect::<Vec<_>>(),
                )
            })
            .collect();
        assert_eq!(
            blocks,
            vec![
                (None, vec![(1, 5)]),
                (Some("batch".to_owned()), vec![(1, 3)])
            ]
        );
    }

    proptest! {
        #[test]
        fn gtid_events_never_panic(d in proptest::collection::vec(any::<u8>(), 0..80)) {
            let _ = parse_maria_gtid(&d);
            let _ = parse_maria_gtid_list(&d);
        }
    }
}
