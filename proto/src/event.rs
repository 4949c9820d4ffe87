//! The change event model: what ferry reads from a source and every sink applies.
//!
//! A source's stream is a sequence of transactions, each `Begin`, row and message events, `Commit`,
//! with [`Relation`] events announcing a table's schema before its first row (and again whenever it
//! changes). Row events name their table by [`RelationId`], so rows stay small; the spool keeps the
//! relation catalog so a reader starting anywhere can resolve them.
//!
//! Compatibility: the frame format (see `docs/format.md`) encodes enums by variant index, so new
//! variants and new enum cases are only ever appended, and a change to an existing variant's fields
//! needs a new format version.

use serde::{Deserialize, Serialize};

use crate::position::Position;
use crate::value::{Micros, Row};

/// A source-assigned table identifier (PostgreSQL relation OID, MySQL table id), stable for as long
/// as the source says so; a new [`Relation`] event with the same id replaces the old definition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct RelationId(pub u64);

/// How the source identifies the old row of an update or delete.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReplicaIdentity {
    /// Primary key columns (PostgreSQL `DEFAULT`, MySQL primary key).
    Default,
    /// No old row at all: updates and deletes cannot be applied to a replica.
    Nothing,
    /// All columns (PostgreSQL `FULL`, MySQL full row image without key).
    Full,
    /// The columns of a unique index.
    Index,
}

/// One column of a relation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Column {
    pub name: String,
    /// The source's type name as the source spells it (`int4`, `numeric(12,2)`, `varchar(40)`,
    /// `bigint unsigned`), so a sink can create or check the target column.
    pub type_name: String,
    /// Source type code (PostgreSQL type OID, MySQL column type byte).
    pub type_id: u32,
    /// Source type modifier (PostgreSQL atttypmod, MySQL column metadata), -1 when none.
    pub type_modifier: i32,
    /// Part of the replica identity / primary key.
    pub key: bool,
    pub nullable: bool,
}

/// A table's schema as the source describes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Relation {
    pub id: RelationId,
    /// PostgreSQL schema, or MySQL database.
    pub schema: String,
    pub name: String,
    pub replica_identity: ReplicaIdentity,
    pub columns: Vec<Column>,
}

impl Relation {
    /// Indexes of the key columns, in column order.
    pub fn key_columns(&self) -> impl Iterator<Item = usize> + '_ {
        self.columns
            .iter()
            .enumerate()
            .filter(|(_, c)| c.key)
            .map(|(i, _)| i)
    }

    /// `schema.name`, unquoted, for messages.
    pub fn qualified_name(&self) -> String {
        format!("{}.{}", self.schema, self.name)
    }
}

/// The old row an update or delete carries, when the source sends one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum OldRow {
    /// Only the replica identity columns are meaningful; others are [`Value::Null`](crate::Value).
    Key(Row),
    /// The complete old row.
    Full(Row),
}

impl OldRow {
    pub fn row(&self) -> &Row {
        match self {
            OldRow::Key(r) | OldRow::Full(r) => r,
        }
    }
}

/// Start of a source transaction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Begin {
    /// The transaction's commit position (PostgreSQL's final LSN, MySQL's position after its
    /// commit), so a reader knows at Begin whether a checkpoint already covers the transaction.
    pub position: Position,
    /// Source transaction id (PostgreSQL xid, MySQL/MariaDB XID or GTID sequence).
    pub xid: u64,
    /// Commit time, microseconds since the Unix epoch, UTC.
    pub commit_time: Micros,
}

/// End of a source transaction: everything since the matching [`Begin`] is committed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Commit {
    pub position: Position,
    pub xid: u64,
    pub commit_time: Micros,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Insert {
    pub relation: RelationId,
    pub new: Row,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Update {
    pub relation: RelationId,
    /// Present when the source sends it: always for a key change or replica identity FULL.
    pub old: Option<OldRow>,
    /// The new row; unchanged TOAST columns are [`Value::Unchanged`](crate::Value).
    pub new: Row,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Delete {
    pub relation: RelationId,
    pub old: OldRow,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Truncate {
    pub relations: Vec<RelationId>,
    pub cascade: bool,
    pub restart_identity: bool,
}

/// The [`Message`] prefix of a table rename a source saw (a MySQL `RENAME TABLE`): content
/// `{"from": [schema, table], "to": [schema, table]}` as JSON. Database sinks rename their table,
/// so its rows stay with it; rows that follow use the new name's relation.
pub const RENAME_PREFIX: &str = "ferry.rename";

/// The [`Message`] prefix of a column rename a source saw (PostgreSQL through ferry's DDL event
/// trigger, MySQL's `RENAME COLUMN` and `CHANGE`): content `{"table": [schema, table], "from":
/// old, "to": new}` as JSON. Database sinks rename their column, so its values stay with it;
/// without this a rename would look like a dropped column and an added one.
pub const RENAME_COLUMN_PREFIX: &str = "ferry.rename_column";

/// The [`Message`] prefix of a table the source dropped: content `{"table": [schema, table]}`.
/// Database sinks drop their table too.
pub const DROP_TABLE_PREFIX: &str = "ferry.drop_table";

/// Prefix of a ferry [`Message`], in a transaction just before the [`Relation`] that adds
/// columns, giving the value rows that existed before carry in each added column (PostgreSQL's
/// `ADD COLUMN … DEFAULT` stores it once instead of writing every row, so no row change carries
/// it). Content: `{"schema":…,"table":…,"columns":{"name":"text input" | null}}`.
pub const BACKFILL_PREFIX: &str = "ferry.backfill";

/// A logical decoding message (`pg_logical_emit_message`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// Emitted inside a transaction (delivered between its Begin and Commit) or not.
    pub transactional: bool,
    pub position: Position,
    pub prefix: String,
    pub content: Vec<u8>,
}

/// A sign of life from the source at a position where nothing of interest happened; lets sinks and
/// acknowledgements advance through idle periods.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heartbeat {
    pub position: Position,
    /// Source server time, microseconds since the Unix epoch.
    pub time: Micros,
}

/// One event of a source's change stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Event {
    Begin(Begin),
    Commit(Commit),
    Relation(Relation),
    Insert(Insert),
    Update(Update),
    Delete(Delete),
    Truncate(Truncate),
    Message(Message),
    Heartbeat(Heartbeat),
}

impl Event {
    /// The source position the event carries, if it carries one.
    pub fn position(&self) -> Option<&Position> {
        match self {
            Event::Begin(b) => Some(&b.position),
            Event::Commit(c) => Some(&c.position),
            Event::Message(m) => Some(&m.position),
            Event::Heartbeat(h) => Some(&h.position),
            _ => None,
        }
    }

    /// The relation a row event touches.
    pub fn relation_id(&self) -> Option<RelationId> {
        match self {
            Event::Insert(e) => Some(e.relation),
            Event::Update(e) => Some(e.relation),
            Event::Delete(e) => Some(e.relation),
            Event::Relation(r) => Some(r.id),
            _ => None,
        }
    }

    /// Short lower-case name of the event kind, for logs and metrics labels.
    pub fn kind(&self) -> &'static str {
        match self {
            Event::Begin(_) => "begin",
            Event::Commit(_) => "commit",
            Event::Relation(_) => "relation",
            Event::Insert(_) => "insert",
            Event::Update(_) => "update",
            Event::Delete(_) => "delete",
            Event::Truncate(_) => "truncate",
            Event::Message(_) => "message",
            Event::Heartbeat(_) => "heartbeat",
        }
    }
}
