//! The PostgreSQL source's tables: a Relation message checked against the catalog (its whole
//! definition, what a schema change means, a table published without a replica identity), and
//! the values rows that exist hold in columns a change adds.

use super::*;

impl PgSource {
    /// A Relation message as ferry's [`Relation`], with the type each column's text is parsed
    /// as (its domain's base type).
    pub(super) async fn relation_of(
        &mut self,
        client: &Client,
        oid: u32,
        namespace: String,
        name: String,
        replica_identity: u8,
        columns: Vec<pgoutput::RelColumn>,
    ) -> Result<(Relation, Vec<u32>)> {
        let keys: Vec<(u32, i32)> = columns
            .iter()
            .map(|c| (c.type_oid, c.type_modifier))
            .collect();
        self.types.resolve(client, &keys).await?;
        let mut parse = Vec::with_capacity(columns.len());
        let columns = columns
            .into_iter()
            .map(|c| {
                let info = self.types.get(c.type_oid, c.type_modifier);
                parse.push(info.parse_oid);
                Column {
                    name: c.name,
                    type_name: info.name,
                    type_id: c.type_oid,
                    type_modifier: c.type_modifier,
                    key: c.key,
                    nullable: !c.key,
                }
            })
            .collect();
        let relation = Relation {
            id: RelationId(u64::from(oid)),
            schema: namespace,
            name,
            replica_identity: replica_identity_of(replica_identity),
            columns,
        };
        Ok((relation, parse))
    }

    /// A table's new definition: checked for a replica identity, written into the transaction
    /// (with its whole definition first if it is new, and what a schema change implies), and
    /// kept for decoding the rows that follow.
    pub(super) async fn on_relation(
        &mut self,
        client: &Client,
        xid: Option<u32>,
        oid: u32,
        relation: Relation,
        parse: Vec<u32>,
    ) -> Result<()> {
        let included = self
            .settings
            .filter
            .accepts(&relation.schema, &relation.name);
        let no_identity = relation.replica_identity == ReplicaIdentity::Nothing
            || (relation.replica_identity == ReplicaIdentity::Default
                && relation.key_columns().next().is_none());
        if included && no_identity && !self.discarding() {
            self.published_without_identity(client, &relation).await?;
        }
        // The decoder needs the newest definition for the rows that follow; the spool
        // gets it inside the transaction, so it is written only if the transaction is.
        if included && (self.in_stream.is_some() || self.txn.is_some()) {
            let position = Position::Postgres(Lsn(self.stats.server_wal_end));
            let discarding = self.discarding();
            let new_table = !self.schema.knows(oid)
                && !self.writer.spool().relations().contains_key(&relation.id);
            if new_table
                && !discarding
                && let Some(def) = crate::postgres::table_def::describe(client, oid).await?
            {
                // A table created since the snapshot: its whole definition first.
                self.change(xid, crate::table_def::message(&def, position.clone()))?;
            }
            let before = self.schema.on_relation(
                oid,
                &relation,
                self.writer.spool().relations().get(&relation.id),
                &position,
                !discarding,
            )?;
            for event in before {
                self.change(xid, event)?;
            }
            if !discarding && let Some(backfill) = self.backfill(client, oid, &relation).await? {
                self.change(xid, backfill)?;
            }
            self.change(xid, Event::Relation(relation.clone()))?;
        }
        self.relations.insert(
            oid,
            RelInfo {
                relation,
                parse,
                included,
            },
        );
        Ok(())
    }

    /// For a definition of table `oid` that adds columns to the one last seen: a
    /// [`BACKFILL_PREFIX`] message with the value the rows that existed before hold in each added
    /// column (`pg_attribute.attmissingval`, which `ADD COLUMN … DEFAULT` with a non-volatile
    /// default sets instead of writing every row), so a replica's existing rows get it too.
    /// A column added with a volatile default rewrote the table without any row change to
    /// decode: that is logged, since its existing rows cannot be brought over.
    pub(super) async fn backfill(
        &self,
        client: &Client,
        oid: u32,
        rel: &Relation,
    ) -> Result<Option<Event>> {
        let prev = self
            .relations
            .get(&oid)
            .map(|r| &r.relation)
            .or_else(|| self.writer.spool().relations().get(&rel.id));
        let Some(prev) = prev else {
            return Ok(None);
        };
        let added: Vec<String> = rel
            .columns
            .iter()
            .filter(|c| !prev.columns.iter().any(|p| p.name == c.name))
            .map(|c| c.name.clone())
            .collect();
        if added.is_empty() {
            return Ok(None);
        }
        // Before PostgreSQL 11, `ADD COLUMN … DEFAULT` always rewrote the table (no missing
        // values), as a volatile default still does.
        let sql = if self.server_version >= 110_000 {
            "SELECT a.attname::text, a.atthasmissing, a.attmissingval::text, a.atthasdef
             FROM pg_attribute a
             WHERE a.attrelid = $1 AND NOT a.attisdropped AND a.attname::text = ANY($2)"
        } else {
            "SELECT a.attname::text, false, NULL::text, a.atthasdef
             FROM pg_attribute a
             WHERE a.attrelid = $1 AND NOT a.attisdropped AND a.attname::text = ANY($2)"
        };
        let rows = client.query(sql, &[&oid, &added]).await?;
        let mut columns = serde_json::Map::new();
        for row in rows {
            let name: String = row.get(0);
            let missing: bool = row.get(1);
            let text: Option<String> = row.get(2);
            let has_default: bool = row.get(3);
            match (missing, text.as_deref().and_then(missing_value)) {
                (true, Some(value)) => {
                    columns.insert(name, value.map_or(serde_json::Value::Null, Into::into));
                }
                (true, None) => tracing::warn!(
                    table = %rel.qualified_name(), column = %name, value = ?text,
                    "cannot read the value existing rows hold in an added column; on a replica \
                     they stay NULL"
                ),
                (false, _) if has_default => tracing::warn!(
                    table = %rel.qualified_name(), column = %name,
                    "a column added with a volatile default (or since rewritten): its values in \
                     existing rows are in no change ferry can read, so on a replica they stay \
                     NULL; resynchronise the table if they matter"
                ),
                (false, _) => {}
            }
        }
        if columns.is_empty() {
            return Ok(None);
        }
        let content = serde_json::json!({
            "schema": rel.schema,
            "table": rel.name,
            "columns": columns,
        });
        Ok(Some(Event::Message(Message {
            transactional: true,
            position: Position::Postgres(Lsn(self.stats.server_wal_end)),
            prefix: BACKFILL_PREFIX.to_owned(),
            content: content.to_string().into_bytes(),
        })))
    }

    /// A published table without a replica identity (created, or stripped of its key, while
    /// ferry runs): the application's updates and deletes on it fail on the source now. With
    /// `keyless = "full"` ferry gives it `REPLICA IDENTITY FULL`; with `"allow"` it goes on;
    /// otherwise the source stops with the reason.
    pub(super) async fn published_without_identity(
        &self,
        client: &Client,
        rel: &Relation,
    ) -> Result<()> {
        let table = keyless::KeylessTable {
            schema: rel.schema.clone(),
            name: rel.name.clone(),
            nothing: rel.replica_identity == ReplicaIdentity::Nothing,
        };
        match self.settings.keyless {
            Keyless::Allow => Ok(()),
            Keyless::Full => keyless::make_full(client, std::slice::from_ref(&table)).await,
            Keyless::Error | Keyless::Exclude => Err(Error::Config(format!(
                "{table} is published (it was created, or lost its key, while ferry runs): the \
                 application's UPDATE and DELETE on it fail on the source now. Add a primary key \
                 or run ALTER TABLE {}.{} REPLICA IDENTITY FULL, or set [source] keyless = \
                 \"full\" (ferry does it as such tables appear) or \"allow\"; then start ferry \
                 again",
                slot::quote_ident(&rel.schema),
                slot::quote_ident(&rel.name)
            ))),
        }
    }
}
