//! Schema changes of a PostgreSQL source that pgoutput does not say: ferry's DDL event trigger
//! (`ddl_trigger.sql`: installed, detected) and the messages it writes into the stream (prefix
//! [`DDL_PREFIX`]), decoded here. pgoutput sends a table's new definition only before its next
//! row, without saying what changed: a renamed column looks like a dropped one and an added
//! one, and a dropped table is never mentioned. The trigger says it in the transaction that did
//! it, so the source can tell a rename from a drop and an add.

use tokio_postgres::Client;

use crate::error::{Error, Result};

/// The trigger's SQL: schema `ferry`, two unlogged state tables, the trigger functions and the
/// two event triggers.
pub const TRIGGER_SQL: &str = include_str!("ddl_trigger.sql");

/// Prefix of the trigger's logical decoding messages.
pub const DDL_PREFIX: &str = "ferry.ddl";

/// Installs (or updates) the trigger; needs a superuser.
pub async fn install(client: &Client) -> Result<()> {
    let version: i32 = client
        .query_one("SELECT current_setting('server_version_num')::int", &[])
        .await?
        .get(0);
    if version < 140_000 {
        return Err(Error::Config(format!(
            "PostgreSQL {} does not pass logical decoding messages to ferry (pgoutput's \
             `messages` option is 14+), so the DDL trigger could not tell ferry anything: not \
             installed. Column renames stop ferry as ambiguous on this server",
            version / 10_000
        )));
    }
    client.batch_execute(TRIGGER_SQL).await.map_err(|e| {
        let superuser = e.code().map(|c| c.code()) == Some("42501");
        if superuser {
            Error::Config(format!(
                "installing ferry's DDL trigger: {}; creating an event trigger needs a \
                 superuser on PostgreSQL 15: run `ferry ddl-trigger sql` and have one run it",
                ferry_db::postgres::describe(&e)
            ))
        } else {
            Error::Postgres(e)
        }
    })
}

/// Whether both of the trigger's event triggers exist and are enabled.
pub async fn installed(client: &Client) -> Result<bool> {
    let n: i64 = client
        .query_one(
            "SELECT count(*) FROM pg_event_trigger WHERE evtenabled <> 'D' AND evtname IN \
             ('ferry_ddl_command_end', 'ferry_sql_drop')",
            &[],
        )
        .await?
        .get(0);
    Ok(n == 2)
}

/// A table as (schema, name).
pub type Table = (String, String);

/// One message of the trigger.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DdlMessage {
    RenameTable {
        relid: u32,
        from: Table,
        to: Table,
    },
    RenameColumn {
        relid: u32,
        table: Table,
        from: String,
        to: String,
    },
    DropTable {
        relid: u32,
        table: Table,
    },
    /// The trigger could not tell what happened to the table (it had no state for it, or
    /// failed): a change of its definition must not be taken for anything it is not sure of.
    Unknown {
        relid: u32,
    },
    /// Orders the messages before it ahead of later changes; carries nothing.
    Fence,
}

/// Decodes a message's content; a malformed one is an error, never skipped.
pub fn parse(content: &[u8]) -> Result<DdlMessage> {
    let bad = |what: &str| {
        Error::Protocol(format!(
            "a {DDL_PREFIX} message {what}: {}",
            String::from_utf8_lossy(content)
        ))
    };
    let v: serde_json::Value =
        serde_json::from_slice(content).map_err(|e| bad(&format!("is not JSON ({e})")))?;
    let text = |k: &str| v.get(k).and_then(|x| x.as_str()).map(str::to_owned);
    let table = |k: &str| -> Option<Table> {
        let a = v.get(k)?.as_array()?;
        match a.as_slice() {
            [s, t] => Some((s.as_str()?.to_owned(), t.as_str()?.to_owned())),
            _ => None,
        }
    };
    // An oid is written as a JSON string by json_build_object; accept a number too.
    let relid = match v.get("relid") {
        Some(serde_json::Value::String(s)) => s.parse::<u32>().ok(),
        Some(serde_json::Value::Number(n)) => n.as_u64().and_then(|n| u32::try_from(n).ok()),
        _ => None,
    };
    let kind = text("kind").ok_or_else(|| bad("has no kind"))?;
    if kind == "fence" {
        return Ok(DdlMessage::Fence);
    }
    let relid = relid.ok_or_else(|| bad("has no relid"))?;
    Ok(match kind.as_str() {
        "rename_table" => match (table("from"), table("to")) {
            (Some(from), Some(to)) => DdlMessage::RenameTable { relid, from, to },
            _ => return Err(bad("lacks from or to")),
        },
        "rename_column" => match (table("table"), text("from"), text("to")) {
            (Some(table), Some(from), Some(to)) => DdlMessage::RenameColumn {
                relid,
                table,
                from,
                to,
            },
            _ => return Err(bad("lacks table, from or to")),
        },
        "drop_table" => DdlMessage::DropTable {
            relid,
            table: table("table").ok_or_else(|| bad("lacks table"))?,
        },
        "unknown" => DdlMessage::Unknown { relid },
        other => return Err(bad(&format!("has an unknown kind {other:?}"))),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn t(s: &str, n: &str) -> Table {
        (s.into(), n.into())
    }

    #[test]
    fn every_kind_the_trigger_writes() {
        assert_eq!(
            parse(br#"{"to": "full_name", "from": "name", "kind": "rename_column", "relid": "16408", "table": ["public", "people"]}"#).unwrap(),
            DdlMessage::RenameColumn { relid: 16408, table: t("public", "people"), from: "name".into(), to: "full_name".into() }
        );
        assert_eq!(
            parse(br#"{"to": ["public", "persons"], "from": ["public", "people"], "kind": "rename_table", "relid": "16408"}"#).unwrap(),
            DdlMessage::RenameTable { relid: 16408, from: t("public", "people"), to: t("public", "persons") }
        );
        assert_eq!(
            parse(br#"{"kind": "drop_table", "relid": 7, "table": ["s", "x"]}"#).unwrap(),
            DdlMessage::DropTable {
                relid: 7,
                table: t("s", "x")
            }
        );
        assert_eq!(
            parse(br#"{"kind": "unknown", "error": "boom", "relid": "9"}"#).unwrap(),
            DdlMessage::Unknown { relid: 9 }
        );
        assert_eq!(
            parse(br#"{"kind": "fence", "relid": "0"}"#).unwrap(),
            DdlMessage::Fence
        );
        assert!(parse(br#"{"kind": "rename_column", "relid": "1"}"#).is_err());
        assert!(parse(br#"{"kind": "something", "relid": "1"}"#).is_err());
        assert!(parse(b"not json").is_err());
    }

    #[test]
    fn the_trigger_sql_is_what_install_runs() {
        assert!(TRIGGER_SQL.contains("CREATE EVENT TRIGGER ferry_ddl_command_end"));
        assert!(TRIGGER_SQL.contains("CREATE EVENT TRIGGER ferry_sql_drop"));
        assert!(TRIGGER_SQL.contains(DDL_PREFIX));
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(b in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = parse(&b);
        }
    }
}
