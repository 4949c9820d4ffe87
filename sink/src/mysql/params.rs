//! Row values as MySQL/MariaDB statement parameters: each ferry `Value` in the form the target
//! column takes, and what it cannot take refused with the reason rather than rounded or
//! truncated by the server.

use ferry_proto::{Row, Value};
use mysql_async::Value as My;

use super::Table;
use crate::error::{Result, SinkError};
use crate::postgres::encode::civil_from_days;

/// As [`to_param`], moving text and bytes instead of copying them.
pub fn into_param(v: Value) -> Result<My> {
    match v {
        Value::Text(s) | Value::Json(s) => Ok(My::Bytes(s.into_bytes())),
        Value::Bytes(b) => Ok(My::Bytes(b)),
        other => to_param(&other),
    }
}

/// Refuses a numeric value that has more digits than its target DECIMAL column holds (MySQL
/// rounds the fraction with only a note, even in strict mode).
pub(super) fn check_decimals(t: &Table, row: &Row) -> Result<()> {
    for ((v, dec), col) in row.iter().zip(&t.decimals).zip(&t.rel.columns) {
        let (Value::Numeric(text), Some((precision, scale))) = (v, dec) else {
            continue;
        };
        let digits = text.trim_start_matches(['-', '+']);
        let (int, frac) = digits.split_once('.').unwrap_or((digits, ""));
        let int = int.trim_start_matches('0').len() as u32;
        let frac = frac.trim_end_matches('0').len() as u32;
        if frac > *scale || int > precision.saturating_sub(*scale) {
            return Err(SinkError::Value(format!(
                "{}.{}: {text} has more digits than the target column's DECIMAL({precision},\
                 {scale}) holds, and MySQL would round it: give the column a type that holds \
                 the source's values (an unconstrained numeric becomes DECIMAL(65,30))",
                t.rel.qualified_name(),
                col.name
            )));
        }
    }
    Ok(())
}

/// A ferry value as a MySQL parameter; what MySQL cannot hold is an error for `on_error`.
pub fn to_param(v: &Value) -> Result<My> {
    Ok(match v {
        Value::Null => My::NULL,
        Value::Unchanged => {
            return Err(SinkError::Fatal(
                "an unchanged value reached a statement".into(),
            ));
        }
        Value::Bool(b) => My::Int(i64::from(*b)),
        Value::Int(i) => My::Int(*i),
        Value::UInt(u) => My::UInt(*u),
        Value::Float(f) => My::Double(*f),
        Value::Numeric(s) => {
            if s.eq_ignore_ascii_case("nan") || s.to_ascii_lowercase().contains("infinity") {
                return Err(SinkError::Value(format!(
                    "numeric {s} has no MySQL decimal value"
                )));
            }
            My::Bytes(s.clone().into_bytes())
        }
        Value::Text(s) | Value::Json(s) => My::Bytes(s.clone().into_bytes()),
        Value::Bytes(b) => My::Bytes(b.clone()),
        Value::Date(d) => {
            let (y, m, d) = civil_from_days(i64::from(*d));
            let y = u16::try_from(y)
                .ok()
                .filter(|y| *y <= 9999)
                .ok_or_else(|| SinkError::Value(format!("year {y} is outside MySQL's dates")))?;
            My::Date(y, m as u8, d as u8, 0, 0, 0, 0)
        }
        Value::Time(us) => {
            let neg = *us < 0;
            let a = us.unsigned_abs();
            let secs = a / 1_000_000;
            let days = secs / 86_400;
            My::Time(
                neg,
                u32::try_from(days).unwrap_or(u32::MAX),
                (secs / 3600 % 24) as u8,
                (secs / 60 % 60) as u8,
                (secs % 60) as u8,
                (a % 1_000_000) as u32,
            )
        }
        Value::TimeTz {
            micros,
            offset_secs,
        } => {
            let t = crate::postgres::encode::to_text(&Value::TimeTz {
                micros: *micros,
                offset_secs: *offset_secs,
            })?
            .unwrap_or_default();
            My::Bytes(t.into_bytes())
        }
        Value::Timestamp(us) | Value::TimestampTz(us) => {
            if *us == i64::MAX || *us == i64::MIN {
                return Err(SinkError::Value(
                    "an infinite timestamp has no MySQL value".into(),
                ));
            }
            let days = us.div_euclid(86_400_000_000);
            let rem = us.rem_euclid(86_400_000_000);
            let (y, m, d) = civil_from_days(days);
            let y = u16::try_from(y)
                .ok()
                .filter(|y| *y <= 9999)
                .ok_or_else(|| SinkError::Value(format!("year {y} is outside MySQL's dates")))?;
            let secs = rem / 1_000_000;
            My::Date(
                y,
                m as u8,
                d as u8,
                (secs / 3600) as u8,
                (secs / 60 % 60) as u8,
                (secs % 60) as u8,
                (rem % 1_000_000) as u32,
            )
        }
        Value::Interval { .. } => {
            return Err(SinkError::Value(
                "an interval has no MySQL type to hold it".into(),
            ));
        }
        Value::Uuid(_) | Value::Other { .. } => {
            let t = crate::postgres::encode::to_text(v)?.unwrap_or_default();
            match v {
                // bit(n) text into a MySQL bit column: its number.
                Value::Other { type_name, text } if type_name.starts_with("bit") => {
                    match u64::from_str_radix(text, 2) {
                        Ok(n) => My::UInt(n),
                        Err(_) => My::Bytes(t.into_bytes()),
                    }
                }
                _ => My::Bytes(t.into_bytes()),
            }
        }
        Value::Array(items) => My::Bytes(array_json(items)?.to_string().into_bytes()),
    })
}

fn array_json(items: &[Value]) -> Result<serde_json::Value> {
    items
        .iter()
        .map(|v| {
            Ok(match v {
                Value::Null => serde_json::Value::Null,
                Value::Int(i) => (*i).into(),
                Value::Bool(b) => (*b).into(),
                Value::Float(f) => serde_json::Number::from_f64(*f)
                    .map(serde_json::Value::Number)
                    .ok_or_else(|| {
                        SinkError::Value(format!(
                            "the array element {f} has no JSON value (MySQL holds the array as \
                             JSON, which has no NaN or infinity)"
                        ))
                    })?,
                Value::Array(inner) => array_json(inner)?,
                other => crate::postgres::encode::to_text(other)?
                    .map(serde_json::Value::String)
                    .unwrap_or(serde_json::Value::Null),
            })
        })
        .collect::<Result<Vec<_>>>()
        .map(serde_json::Value::Array)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params() {
        assert_eq!(
            to_param(&Value::Date(0)).unwrap(),
            My::Date(1970, 1, 1, 0, 0, 0, 0)
        );
        assert_eq!(
            to_param(&Value::Time(-(30 * 3600 + 1) * 1_000_000)).unwrap(),
            My::Time(true, 1, 6, 0, 1, 0)
        );
        assert_eq!(
            to_param(&Value::TimestampTz(1_000_000_000_500_000)).unwrap(),
            My::Date(2001, 9, 9, 1, 46, 40, 500_000)
        );
        assert!(matches!(
            to_param(&Value::Interval {
                months: 1,
                days: 0,
                micros: 0
            }),
            Err(SinkError::Value(_))
        ));
        assert!(matches!(
            to_param(&Value::Numeric("NaN".into())),
            Err(SinkError::Value(_))
        ));
        assert_eq!(
            to_param(&Value::Other {
                type_name: "bit(4)".into(),
                text: "0101".into()
            })
            .unwrap(),
            My::UInt(5)
        );
    }
}
