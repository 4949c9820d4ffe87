//! The message that carries a table's whole definition ([`TableDef`]) into the spool, for both
//! sources: JSON under [`TABLE_PREFIX`], in the transaction before the table's first Relation.

use ferry_proto::{Event, Message, Position, TABLE_PREFIX, TableDef};

/// The [`TABLE_PREFIX`] message that carries `def`.
pub fn message(def: &TableDef, position: Position) -> Event {
    Event::Message(Message {
        transactional: true,
        position,
        prefix: TABLE_PREFIX.into(),
        // A struct of strings, booleans and vectors always serializes.
        content: serde_json::to_vec(def).unwrap_or_default(),
    })
}
