//! One batch column as one array parameter, in the binary form of the values' own type where
//! that is cheap for the server (integers, floats, booleans, dates, timestamps: no text to parse,
//! which is most of a batch's server time for timestamps), and as `text[]` otherwise. The
//! statement casts each column to the target column's type either way.

use std::error::Error as StdError;

use bytes::{BufMut, BytesMut};
use ferry_proto::Value;
use tokio_postgres::types::{IsNull, ToSql, Type, to_sql_checked};

use super::encode::to_text;
use crate::error::Result;

/// PostgreSQL's epoch (2000-01-01) in days and microseconds after the Unix epoch.
const PG_EPOCH_DAYS: i32 = 10_957;
const PG_EPOCH_MICROS: i64 = 946_684_800_000_000;

/// Microseconds since the Unix epoch as PostgreSQL stores them: since 2000-01-01, with
/// `i64::MAX`/`MIN` (±infinity) kept as they are.
pub fn pg_micros(us: i64) -> i64 {
    match us {
        i64::MAX | i64::MIN => us,
        us => us - PG_EPOCH_MICROS,
    }
}

/// Days since 1970-01-01 as PostgreSQL stores them: since 2000-01-01, ±infinity kept.
pub fn pg_days(d: i32) -> i32 {
    match d {
        i32::MAX | i32::MIN => d,
        d => d - PG_EPOCH_DAYS,
    }
}

/// A timestamp (with or without zone) as microseconds since the Unix epoch; `i64::MAX`/`MIN` are
/// ±infinity, which PostgreSQL stores the same way.
#[derive(Debug, Clone, Copy)]
pub struct PgTime(pub i64);

impl ToSql for PgTime {
    fn to_sql(
        &self,
        _: &Type,
        out: &mut BytesMut,
    ) -> std::result::Result<IsNull, Box<dyn StdError + Sync + Send>> {
        out.put_i64(pg_micros(self.0));
        Ok(IsNull::No)
    }
    fn accepts(ty: &Type) -> bool {
        *ty == Type::TIMESTAMP || *ty == Type::TIMESTAMPTZ
    }
    to_sql_checked!();
}

/// A date as days since 1970-01-01; `i32::MAX`/`MIN` are ±infinity.
#[derive(Debug, Clone, Copy)]
pub struct PgDate(pub i32);

impl ToSql for PgDate {
    fn to_sql(
        &self,
        _: &Type,
        out: &mut BytesMut,
    ) -> std::result::Result<IsNull, Box<dyn StdError + Sync + Send>> {
        out.put_i32(pg_days(self.0));
        Ok(IsNull::No)
    }
    fn accepts(ty: &Type) -> bool {
        *ty == Type::DATE
    }
    to_sql_checked!();
}

/// A column's values ready to send.
#[derive(Debug)]
pub enum Wire {
    Int(Vec<Option<i64>>),
    Float(Vec<Option<f64>>),
    Bool(Vec<Option<bool>>),
    Timestamp(Vec<Option<PgTime>>),
    TimestampTz(Vec<Option<PgTime>>),
    Date(Vec<Option<PgDate>>),
    Text(Vec<Option<String>>),
}

impl Wire {
    /// The column of `values`: typed when every non-null value has the same typed kind.
    pub fn of<'a>(values: impl Iterator<Item = &'a Value> + Clone) -> Result<Wire> {
        let mut kinds = values.clone().filter(|v| !v.is_null()).map(kind);
        let first = kinds.next().unwrap_or(Kind::Text);
        let kind = if kinds.all(|k| k == first) {
            first
        } else {
            Kind::Text
        };
        Ok(match kind {
            Kind::Int => Wire::Int(values.map(as_int).collect()),
            Kind::Float => Wire::Float(values.map(as_float).collect()),
            Kind::Bool => Wire::Bool(values.map(as_bool).collect()),
            Kind::Timestamp => Wire::Timestamp(values.map(as_time).collect()),
            Kind::TimestampTz => Wire::TimestampTz(values.map(as_time).collect()),
            Kind::Date => Wire::Date(values.map(as_date).collect()),
            Kind::Text => Wire::Text(values.map(to_text).collect::<Result<_>>()?),
        })
    }

    /// The array type the parameter is declared as.
    pub fn sql_type(&self) -> &'static str {
        match self {
            Wire::Int(_) => "int8[]",
            Wire::Float(_) => "float8[]",
            Wire::Bool(_) => "bool[]",
            Wire::Timestamp(_) => "timestamp[]",
            Wire::TimestampTz(_) => "timestamptz[]",
            Wire::Date(_) => "date[]",
            Wire::Text(_) => "text[]",
        }
    }

    pub fn param(&self) -> &(dyn ToSql + Sync) {
        match self {
            Wire::Int(v) => v,
            Wire::Float(v) => v,
            Wire::Bool(v) => v,
            Wire::Timestamp(v) | Wire::TimestampTz(v) => v,
            Wire::Date(v) => v,
            Wire::Text(v) => v,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Int,
    Float,
    Bool,
    Timestamp,
    TimestampTz,
    Date,
    Text,
}

fn kind(v: &Value) -> Kind {
    match v {
        Value::Int(_) => Kind::Int,
        Value::Float(_) => Kind::Float,
        Value::Bool(_) => Kind::Bool,
        Value::Timestamp(_) => Kind::Timestamp,
        Value::TimestampTz(_) => Kind::TimestampTz,
        Value::Date(_) => Kind::Date,
        _ => Kind::Text,
    }
}

fn as_int(v: &Value) -> Option<i64> {
    match v {
        Value::Int(i) => Some(*i),
        _ => None,
    }
}
fn as_float(v: &Value) -> Option<f64> {
    match v {
        Value::Float(f) => Some(*f),
        _ => None,
    }
}
fn as_bool(v: &Value) -> Option<bool> {
    match v {
        Value::Bool(b) => Some(*b),
        _ => None,
    }
}
fn as_time(v: &Value) -> Option<PgTime> {
    match v {
        Value::Timestamp(t) | Value::TimestampTz(t) => Some(PgTime(*t)),
        _ => None,
    }
}
fn as_date(v: &Value) -> Option<PgDate> {
    match v {
        Value::Date(d) => Some(PgDate(*d)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_column_is_typed_only_when_its_values_agree() {
        let ints = [Value::Int(1), Value::Null, Value::Int(-3)];
        assert_eq!(Wire::of(ints.iter()).unwrap().sql_type(), "int8[]");
        let mixed = [Value::Int(1), Value::Text("x".into())];
        assert_eq!(Wire::of(mixed.iter()).unwrap().sql_type(), "text[]");
        let nulls = [Value::Null, Value::Null];
        let Wire::Text(t) = Wire::of(nulls.iter()).unwrap() else {
            panic!("all NULL is text")
        };
        assert_eq!(t, [None, None]);
        let ts = [Value::TimestampTz(0), Value::TimestampTz(i64::MAX)];
        assert_eq!(Wire::of(ts.iter()).unwrap().sql_type(), "timestamptz[]");
        let mut out = BytesMut::new();
        PgTime(PG_EPOCH_MICROS + 5)
            .to_sql(&Type::TIMESTAMPTZ, &mut out)
            .unwrap();
        assert_eq!(&out[..], &5i64.to_be_bytes());
        out.clear();
        PgDate(i32::MIN).to_sql(&Type::DATE, &mut out).unwrap();
        assert_eq!(&out[..], &i32::MIN.to_be_bytes());
    }
}
