//! How the PostgreSQL source carries a table's schema changes exactly: what each table's
//! definition is at this point of the stream, what the DDL trigger's messages say changed
//! ([`super::ddl`]), and whether a new definition from pgoutput can be applied without a guess.
//!
//! - A table renamed keeps its OID, so a new name under a known OID is a rename, with or
//!   without the trigger: sinks rename their table instead of starting an empty one.
//! - A column renamed: only the trigger can say so. Its message becomes a
//!   [`RENAME_COLUMN_PREFIX`] message, and the definition ferry compares the next one with is
//!   updated, in the spool too (a [`Relation`] event), so a restart in between does not forget it.
//! - A new definition in which some columns disappeared while others appeared is a rename or a
//!   drop and an add, and pgoutput does not say which. Without the trigger (or when the trigger
//!   said it could not tell) the source stops with the reason: a rename taken for a drop and an
//!   add would turn every value of the column into NULL on the replicas.
//! - A dropped table: only the trigger sees it; it becomes a [`DROP_TABLE_PREFIX`] message.

use std::collections::{HashMap, HashSet};

use ferry_proto::{
    DROP_TABLE_PREFIX, Event, Message, Position, RENAME_COLUMN_PREFIX, RENAME_PREFIX, Relation,
};

use super::ddl::DdlMessage;
use crate::error::{Error, Result};
use crate::filter::TableFilter;

/// The definitions the stream has reached, and what the trigger said of them.
#[derive(Debug, Default)]
pub struct SchemaTracker {
    /// Whether ferry's DDL trigger is installed on the source (checked at each session start).
    pub trigger: bool,
    /// Each table's definition as of the stream's current point, by OID.
    known: HashMap<u32, Relation>,
    /// Tables the trigger could not account for since their last definition.
    unknown: HashSet<u32>,
}

impl SchemaTracker {
    /// Whether the stream has shown table `oid` in this process.
    pub fn knows(&self, oid: u32) -> bool {
        self.known.contains_key(&oid)
    }

    /// The definition known for `oid`: the stream's, else `spooled` (the spool's catalog, after
    /// a restart).
    fn prev<'a>(&'a self, oid: u32, spooled: Option<&'a Relation>) -> Option<&'a Relation> {
        self.known.get(&oid).or(spooled)
    }

    /// A DDL trigger message: the events that carry it, in the transaction that made it.
    pub fn on_ddl(
        &mut self,
        msg: DdlMessage,
        spooled: impl Fn(u32) -> Option<Relation>,
        filter: &TableFilter,
        position: &Position,
    ) -> Vec<Event> {
        let message = |prefix: &str, content: serde_json::Value| {
            Event::Message(Message {
                transactional: true,
                position: position.clone(),
                prefix: prefix.into(),
                content: content.to_string().into_bytes(),
            })
        };
        let wanted = |t: &(String, String)| filter.accepts(&t.0, &t.1);
        match msg {
            DdlMessage::Fence => Vec::new(),
            DdlMessage::Unknown { relid } => {
                self.unknown.insert(relid);
                Vec::new()
            }
            DdlMessage::RenameTable { relid, from, to } => {
                if !wanted(&from) && !wanted(&to) {
                    return Vec::new();
                }
                let mut out = vec![message(
                    RENAME_PREFIX,
                    serde_json::json!({"from": [from.0, from.1], "to": [to.0, to.1]}),
                )];
                if let Some(mut rel) = self.prev(relid, spooled(relid).as_ref()).cloned() {
                    rel.schema = to.0;
                    rel.name = to.1;
                    self.known.insert(relid, rel.clone());
                    out.push(Event::Relation(rel));
                }
                out
            }
            DdlMessage::RenameColumn {
                relid,
                table,
                from,
                to,
            } => {
                if !wanted(&table) {
                    return Vec::new();
                }
                let mut out = vec![message(
                    RENAME_COLUMN_PREFIX,
                    serde_json::json!({"table": [table.0, table.1], "from": from, "to": to}),
                )];
                if let Some(mut rel) = self.prev(relid, spooled(relid).as_ref()).cloned() {
                    for c in rel.columns.iter_mut().filter(|c| c.name == from) {
                        c.name = to.clone();
                    }
                    self.known.insert(relid, rel.clone());
                    out.push(Event::Relation(rel));
                }
                out
            }
            DdlMessage::DropTable { relid, table } => {
                self.known.remove(&relid);
                self.unknown.remove(&relid);
                if !wanted(&table) {
                    return Vec::new();
                }
                vec![message(
                    DROP_TABLE_PREFIX,
                    serde_json::json!({"table": [table.0, table.1]}),
                )]
            }
        }
    }

    /// A new definition of table `oid` from pgoutput: the events to write before it (a table
    /// rename), or an error when the change is ambiguous. `check` is false for a transaction
    /// the spool has already (sent again after a restart), whose definitions are only noted.
    pub fn on_relation(
        &mut self,
        oid: u32,
        rel: &Relation,
        spooled: Option<&Relation>,
        position: &Position,
        check: bool,
    ) -> Result<Vec<Event>> {
        let mut out = Vec::new();
        if check && let Some(prev) = self.prev(oid, spooled) {
            if (&prev.schema, &prev.name) != (&rel.schema, &rel.name) {
                out.push(Event::Message(Message {
                    transactional: true,
                    position: position.clone(),
                    prefix: RENAME_PREFIX.into(),
                    content: serde_json::json!({
                        "from": [prev.schema, prev.name],
                        "to": [rel.schema, rel.name],
                    })
                    .to_string()
                    .into_bytes(),
                }));
            }
            let gone: Vec<&str> = prev
                .columns
                .iter()
                .filter(|c| !rel.columns.iter().any(|n| n.name == c.name))
                .map(|c| c.name.as_str())
                .collect();
            let new: Vec<&str> = rel
                .columns
                .iter()
                .filter(|c| !prev.columns.iter().any(|p| p.name == c.name))
                .map(|c| c.name.as_str())
                .collect();
            if !gone.is_empty() && !new.is_empty() && (!self.trigger || self.unknown.contains(&oid))
            {
                let why = if self.trigger {
                    "ferry's DDL trigger could not account for this table's last change"
                } else {
                    "ferry's DDL trigger is not installed on the source"
                };
                return Err(Error::Fatal(format!(
                    "{}: in one change of its definition, column(s) {gone:?} disappeared and \
                     {new:?} appeared. That is a rename or a drop and an add, and pgoutput does \
                     not say which ({why}); ferry stops rather than guess, since a rename taken \
                     for a drop would turn the column's values into NULL on every replica. Ways \
                     out: install the trigger (`ferry ddl-trigger install`, as a superuser) so \
                     later renames are carried exactly, and re-sync this table (today: re-create \
                     the replica from a new snapshot)",
                    rel.qualified_name()
                )));
            }
        }
        self.unknown.remove(&oid);
        self.known.insert(oid, rel.clone());
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_proto::{Column, Lsn, RelationId, ReplicaIdentity};

    fn rel(name: &str, cols: &[&str]) -> Relation {
        Relation {
            id: RelationId(10),
            schema: "public".into(),
            name: name.into(),
            replica_identity: ReplicaIdentity::Default,
            columns: cols
                .iter()
                .map(|c| Column {
                    name: (*c).into(),
                    type_name: "text".into(),
                    type_id: 25,
                    type_modifier: -1,
                    key: *c == "id",
                    nullable: *c != "id",
                })
                .collect(),
        }
    }

    fn prefixes(evs: &[Event]) -> Vec<String> {
        evs.iter()
            .map(|e| match e {
                Event::Message(m) => m.prefix.clone(),
                other => other.kind().to_owned(),
            })
            .collect()
    }

    const P: Position = Position::Postgres(Lsn(1));

    #[test]
    fn without_the_trigger_a_column_swap_is_ambiguous_and_a_table_rename_is_not() {
        let mut t = SchemaTracker::default();
        assert!(
            t.on_relation(10, &rel("a", &["id", "x"]), None, &P, true)
                .unwrap()
                .is_empty()
        );
        let evs = t
            .on_relation(10, &rel("b", &["id", "x", "added"]), None, &P, true)
            .unwrap();
        assert_eq!(prefixes(&evs), [RENAME_PREFIX]);
        let e = t
            .on_relation(10, &rel("b", &["id", "y", "added"]), None, &P, true)
            .unwrap_err();
        assert!(e.to_string().contains("ferry ddl-trigger install"), "{e}");
        // A column only dropped, or only added, is no guess.
        let mut t = SchemaTracker::default();
        let spooled = rel("a", &["id", "x"]);
        assert!(
            t.on_relation(10, &rel("a", &["id"]), Some(&spooled), &P, true)
                .is_ok()
        );
    }

    #[test]
    fn with_the_trigger_a_rename_message_explains_the_new_definition() {
        let filter = TableFilter::default();
        let mut t = SchemaTracker {
            trigger: true,
            ..SchemaTracker::default()
        };
        t.on_relation(10, &rel("a", &["id", "x"]), None, &P, true)
            .unwrap();
        let evs = t.on_ddl(
            DdlMessage::RenameColumn {
                relid: 10,
                table: ("public".into(), "a".into()),
                from: "x".into(),
                to: "y".into(),
            },
            |_| None,
            &filter,
            &P,
        );
        assert_eq!(prefixes(&evs), [RENAME_COLUMN_PREFIX, "relation"]);
        assert!(
            t.on_relation(10, &rel("a", &["id", "y"]), None, &P, true)
                .unwrap()
                .is_empty()
        );
        // A drop and an add the trigger saw no rename in are what they look like…
        assert!(
            t.on_relation(10, &rel("a", &["id", "z"]), None, &P, true)
                .is_ok()
        );
        // …unless the trigger said it could not tell.
        t.on_ddl(DdlMessage::Unknown { relid: 10 }, |_| None, &filter, &P);
        assert!(
            t.on_relation(10, &rel("a", &["id", "w"]), None, &P, true)
                .is_err()
        );
    }
}
