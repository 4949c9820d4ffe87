//! MySQL/MariaDB zero and partial dates (`0000-00-00`, `2026-00-10`) on their way into
//! PostgreSQL, which has no such dates: each becomes NULL (as Debezium does) or halts the
//! sink, as the sink's `zero_dates` says; each NULL is counted, and logged once per table.

use std::collections::HashSet;

use ferry_proto::{Event, Relation, RelationId, Row, Value};

use crate::error::{Result, SinkError};

/// A PostgreSQL sink's `zero_dates`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ZeroDatePolicy {
    /// The value becomes NULL (counted in `ferry_sink_zero_dates_total`, logged once a table).
    #[default]
    Null,
    /// The change fails, naming the column, and follows `on_error`.
    Halt,
}

/// The policy and what it has done.
#[derive(Debug, Default)]
pub struct ZeroDates {
    pub policy: ZeroDatePolicy,
    logged: HashSet<RelationId>,
    /// NULLs written since the worker last asked.
    pub nulled: u64,
}

impl ZeroDates {
    pub fn new(policy: ZeroDatePolicy) -> Self {
        ZeroDates {
            policy,
            ..ZeroDates::default()
        }
    }

    /// `event` with its zero dates resolved, or `None` when it has none (the common case, with
    /// no copy).
    /// `rel` gives the table's definition, for names in logs and errors; it is asked only
    /// when the event has a zero date.
    pub fn resolve<'r>(
        &mut self,
        event: &Event,
        rel: impl FnOnce() -> Option<&'r Relation>,
    ) -> Result<Option<Event>> {
        let has = |r: &Row| r.iter().any(Value::is_zero_date);
        let any = match event {
            Event::Insert(i) => has(&i.new),
            Event::Update(u) => has(&u.new) || u.old.as_ref().is_some_and(|o| has(o.row())),
            Event::Delete(d) => has(d.old.row()),
            _ => false,
        };
        if !any {
            return Ok(None);
        }
        let rel = rel();
        let table = rel.map_or_else(|| "a table".to_owned(), Relation::qualified_name);
        let column = |i: usize| {
            rel.and_then(|r| r.columns.get(i))
                .map_or_else(|| format!("column {i}"), |c| c.name.clone())
        };
        let mut fixed = event.clone();
        let mut nulled = 0u64;
        let mut first = None;
        let mut fix = |row: &mut Row| -> Result<()> {
            for (i, v) in row.iter_mut().enumerate() {
                if v.is_zero_date() {
                    if self.policy == ZeroDatePolicy::Halt {
                        let Value::Other { text, .. } = v else {
                            continue;
                        };
                        return Err(SinkError::Value(format!(
                            "{table}.{}: the zero date {text} has no PostgreSQL value \
                             (zero_dates = \"halt\"; \"null\" writes NULL)",
                            column(i)
                        )));
                    }
                    first.get_or_insert_with(|| column(i));
                    *v = Value::Null;
                    nulled += 1;
                }
            }
            Ok(())
        };
        match &mut fixed {
            Event::Insert(i) => fix(&mut i.new)?,
            Event::Update(u) => {
                fix(&mut u.new)?;
                if let Some(o) = u.old.as_mut() {
                    match o {
                        ferry_proto::OldRow::Key(r) | ferry_proto::OldRow::Full(r) => fix(r)?,
                    }
                }
            }
            Event::Delete(d) => match &mut d.old {
                ferry_proto::OldRow::Key(r) | ferry_proto::OldRow::Full(r) => fix(r)?,
            },
            _ => {}
        }
        self.nulled += nulled;
        if let (Some(id), Some(col)) = (event.relation_id(), first)
            && self.logged.insert(id)
        {
            tracing::warn!(%table, column = %col, "zero dates from MySQL/MariaDB become NULL on this sink (zero_dates = \"null\"; logged once a table, counted in ferry_sink_zero_dates_total)");
        }
        Ok(Some(fixed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_proto::{Insert, samples};

    #[test]
    fn zero_dates_become_null_or_halt() {
        let rel = samples::relation(1);
        let ev = Event::Insert(Insert {
            relation: RelationId(1),
            new: vec![
                Value::Int(1),
                Value::Other {
                    type_name: "date".into(),
                    text: "2026-00-10".into(),
                },
            ],
        });
        let mut z = ZeroDates::new(ZeroDatePolicy::Null);
        let Some(Event::Insert(i)) = z.resolve(&ev, || Some(&rel)).unwrap() else {
            panic!()
        };
        assert_eq!(i.new, [Value::Int(1), Value::Null]);
        assert_eq!(z.nulled, 1);
        let mut z = ZeroDates::new(ZeroDatePolicy::Halt);
        let e = z.resolve(&ev, || Some(&rel)).unwrap_err();
        assert!(e.to_string().contains("public.t1.body"), "{e}");
        // A real date, and an ordinary text, are left alone.
        let plain = samples::insert(1, 1, 10);
        assert!(z.resolve(&plain, || Some(&rel)).unwrap().is_none());
    }
}
