//! Typed, engine-neutral column values.
//!
//! A source converts its wire values into [`Value`]s; a sink converts them into its target's
//! types using the column's source type from the [`Relation`](crate::Relation). Exactness over
//! convenience: numerics stay decimal text, unsigned 64-bit integers keep their own variant, and
//! a type ferry does not model keeps its source type name with its text form ([`Value::Other`]).

use serde::{Deserialize, Serialize};

/// Microseconds since 1970-01-01 00:00:00 UTC (or local wall time for types without zone).
pub type Micros = i64;

/// One column value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Value {
    Null,
    /// The source did not send this value because it did not change (PostgreSQL's unchanged
    /// TOAST columns). A sink must keep the target's current value.
    Unchanged,
    Bool(bool),
    /// Any signed integer (smallint, integer, bigint, tinyint, mediumint, year).
    Int(i64),
    /// An unsigned integer that does not fit [`Value::Int`] semantics (MySQL `BIGINT UNSIGNED`).
    UInt(u64),
    /// float4 or float8; a float4 converts to f64 exactly.
    Float(f64),
    /// An exact decimal in its canonical text form (`-12.3400`, `NaN`, `Infinity`).
    Numeric(String),
    Text(String),
    Bytes(Vec<u8>),
    /// Days since 1970-01-01.
    Date(i32),
    /// Time of day in microseconds; MySQL's TIME may be negative or exceed 24 hours.
    Time(Micros),
    /// Time of day with a zone offset in seconds east of UTC.
    TimeTz {
        micros: Micros,
        offset_secs: i32,
    },
    /// A timestamp without time zone (wall clock), microseconds since the epoch.
    Timestamp(Micros),
    /// An instant, microseconds since the epoch in UTC.
    TimestampTz(Micros),
    Interval {
        months: i32,
        days: i32,
        micros: Micros,
    },
    Uuid([u8; 16]),
    /// JSON document text (json, jsonb, MySQL JSON), as the source rendered it.
    Json(String),
    /// An array; multi-dimensional arrays nest. Element type is the column's element type.
    Array(Vec<Value>),
    /// A type ferry does not model: its source type name and its text representation.
    Other {
        type_name: String,
        text: String,
    },
}

impl Value {
    /// Whether the value is SQL NULL.
    pub fn is_null(&self) -> bool {
        matches!(self, Value::Null)
    }

    /// A MySQL/MariaDB zero or partial date (`0000-00-00`, `2026-00-10 00:00:00`), which a
    /// permissive `sql_mode` stores and no other engine has: the source carries it as
    /// [`Value::Other`] with the column's type, and each sink decides what it becomes.
    pub fn is_zero_date(&self) -> bool {
        let Value::Other { type_name, text } = self else {
            return false;
        };
        let starts = |p: &str| {
            type_name
                .get(..p.len())
                .is_some_and(|h| h.eq_ignore_ascii_case(p))
        };
        if !(starts("date") || starts("timestamp")) {
            return false;
        }
        let mut parts = text.get(..10).unwrap_or("").split('-');
        let (Some(y), Some(m), Some(d)) = (parts.next(), parts.next(), parts.next()) else {
            return false;
        };
        y.len() == 4 && (m == "00" || d == "00")
    }

    /// A rough size in bytes, used to bound batches and buffers.
    pub fn approx_size(&self) -> usize {
        match self {
            Value::Numeric(s) | Value::Text(s) | Value::Json(s) => s.len() + 8,
            Value::Bytes(b) => b.len() + 8,
            Value::Array(v) => v.iter().map(Value::approx_size).sum::<usize>() + 8,
            Value::Other { type_name, text } => type_name.len() + text.len() + 16,
            Value::Uuid(_) | Value::Interval { .. } => 16,
            _ => 8,
        }
    }
}

/// A row: one value per column of its relation, in the relation's column order.
pub type Row = Vec<Value>;
