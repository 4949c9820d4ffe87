//! Fixed sample events that cover every event kind and value type: the golden files are made of
//! them, and spool and sink tests use them as realistic traffic.

use crate::event::*;
use crate::position::*;
use crate::value::Value;

/// A relation with a key, as a source would announce it.
pub fn relation(id: u64) -> Relation {
    let col = |name: &str, type_name: &str, type_id: u32, key: bool| Column {
        name: name.into(),
        type_name: type_name.into(),
        type_id,
        type_modifier: -1,
        key,
        nullable: !key,
    };
    Relation {
        id: RelationId(id),
        schema: "public".into(),
        name: format!("t{id}"),
        replica_identity: ReplicaIdentity::Default,
        columns: vec![col("id", "int8", 20, true), col("body", "text", 25, false)],
    }
}

/// A row of [`relation`]'s shape whose text is padded to make the encoded event about `size` bytes.
pub fn insert(rel: u64, id: i64, size: usize) -> Event {
    Event::Insert(Insert {
        relation: RelationId(rel),
        new: vec![
            Value::Int(id),
            Value::Text("x".repeat(size.saturating_sub(16))),
        ],
    })
}

/// One event of every kind and one value of every type, in a valid transaction order.
pub fn all_kinds() -> Vec<Event> {
    let pos = Position::Postgres(Lsn(0x16_B374_D848));
    let values = vec![
        Value::Null,
        Value::Unchanged,
        Value::Bool(true),
        Value::Int(-42),
        Value::UInt(u64::MAX),
        Value::Float(-1.5e300),
        Value::Numeric("-12345678901234567890.000100".into()),
        Value::Text("héllo, wörld".into()),
        Value::Bytes(vec![0, 1, 2, 254, 255]),
        Value::Date(-719_528),
        Value::Time(-3_020_399_000_000),
        Value::TimeTz {
            micros: 45_296_789_012,
            offset_secs: -19_800,
        },
        Value::Timestamp(1_700_000_000_123_456),
        Value::TimestampTz(-62_135_596_800_000_000),
        Value::Interval {
            months: 14,
            days: -3,
            micros: 4_000_001,
        },
        Value::Uuid(*b"\x12\x34\x56\x78\x9a\xbc\xde\xf0\x0f\xed\xcb\xa9\x87\x65\x43\x21"),
        Value::Json(r#"{"a":[1,2,{"b":null}]}"#.into()),
        Value::Array(vec![
            Value::Array(vec![Value::Int(1), Value::Null]),
            Value::Array(vec![Value::Int(3), Value::Int(4)]),
        ]),
        Value::Other {
            type_name: "tsvector".into(),
            text: "'a':1 'b':2".into(),
        },
    ];
    let columns = values
        .iter()
        .enumerate()
        .map(|(i, _)| Column {
            name: format!("c{i}"),
            type_name: format!("type{i}"),
            type_id: 1000 + i as u32,
            type_modifier: if i % 2 == 0 { -1 } else { i as i32 },
            key: i == 3,
            nullable: i != 3,
        })
        .collect();
    let mut gtids = GtidSet::default();
    gtids.add_range([0x3e; 16], 1, 5);
    gtids.add([0x4f; 16], 9);
    let mut maria = MariaGtidList::default();
    maria.advance(MariaGtid {
        domain: 0,
        server: 1,
        seq: 100,
    });
    vec![
        Event::Relation(Relation {
            id: RelationId(16_384),
            schema: "app".into(),
            name: "every_type".into(),
            replica_identity: ReplicaIdentity::Full,
            columns,
        }),
        Event::Begin(Begin {
            position: pos.clone(),
            xid: 741,
            commit_time: 1_700_000_000_000_001,
        }),
        Event::Insert(Insert {
            relation: RelationId(16_384),
            new: values.clone(),
        }),
        Event::Update(Update {
            relation: RelationId(16_384),
            old: Some(OldRow::Key(vec![Value::Int(7), Value::Null])),
            new: vec![Value::Int(8), Value::Unchanged],
        }),
        Event::Update(Update {
            relation: RelationId(16_384),
            old: None,
            new: vec![Value::Int(8), Value::Text("t".into())],
        }),
        Event::Delete(Delete {
            relation: RelationId(16_384),
            old: OldRow::Full(values),
        }),
        Event::Truncate(Truncate {
            relations: vec![RelationId(16_384), RelationId(16_390)],
            cascade: true,
            restart_identity: false,
        }),
        Event::Message(Message {
            transactional: true,
            position: pos.clone(),
            prefix: "ferry.test".into(),
            content: b"payload\x00\xff".to_vec(),
        }),
        Event::Commit(Commit {
            position: pos,
            xid: 741,
            commit_time: 1_700_000_000_000_001,
        }),
        Event::Heartbeat(Heartbeat {
            position: Position::Binlog(BinlogPos::new("mysql-bin.000042", 1234)),
            time: 1_700_000_000_500_000,
        }),
        Event::Heartbeat(Heartbeat {
            position: Position::MySqlGtid(gtids),
            time: 1,
        }),
        Event::Heartbeat(Heartbeat {
            position: Position::MariaDbGtid(maria),
            time: 2,
        }),
    ]
}

/// Events whose encodings were appended to version 2 (new enum variants, which older readers
/// reject as a payload error): a binlog position after a failover, with its GTIDs.
pub fn appended_to_v2() -> Vec<Event> {
    let maria: crate::MariaGtidList = "0-1-100,1-2-7".parse().unwrap_or_default();
    let gtids: crate::MysqlGtids = "3e11fa47-71ca-11e1-9e33-c80aa9429562:1-5:7:tag_a:1-2"
        .parse()
        .unwrap_or_default();
    vec![
        Event::Heartbeat(Heartbeat {
            position: Position::Binlog(BinlogPos {
                file: "mariadb-bin.000003".into(),
                pos: 4321,
                epoch: 2,
                gtids: Some(crate::Gtids::MariaDb(maria)),
            }),
            time: 3,
        }),
        Event::Heartbeat(Heartbeat {
            position: Position::Binlog(BinlogPos {
                file: "mysql-bin.000001".into(),
                pos: 157,
                epoch: 0,
                gtids: Some(crate::Gtids::MySql(gtids)),
            }),
            time: 4,
        }),
    ]
}
