//! Engine-neutral [`Value`]s written as PostgreSQL text input, the form every type's input function
//! accepts, so one `text[]` parameter per column carries a whole batch and the statement casts it
//! to the target column's type. The inverse of the source's parser: a value read from PostgreSQL
//! and written back is the same value (proved against a real server in the end-to-end tests).

use std::fmt::Write;

use ferry_proto::Value;

use crate::error::{Result, SinkError};

/// The text input for `v`; `None` for SQL NULL. [`Value::Unchanged`] has no text: the caller
/// leaves such a column out of the statement.
pub fn to_text(v: &Value) -> Result<Option<String>> {
    let mut out = String::new();
    if push_text(v, &mut out)? {
        Ok(Some(out))
    } else {
        Ok(None)
    }
}

/// Appends the text input for `v` to `out`, as [`to_text`] gives it; false (nothing appended) for
/// SQL NULL. For writers that reuse one buffer.
pub fn push_text(v: &Value, out: &mut String) -> Result<bool> {
    write_value(v, out, false)
}

/// Writes `v`; returns false for NULL. Inside an array, elements are quoted.
fn write_value(v: &Value, out: &mut String, in_array: bool) -> Result<bool> {
    let start = out.len();
    match v {
        Value::Null => return Ok(false),
        Value::Unchanged => {
            return Err(SinkError::Value(
                "an unchanged TOAST value has no text form".into(),
            ));
        }
        Value::Bool(b) => out.push(if *b { 't' } else { 'f' }),
        Value::Int(i) => {
            let _ = write!(out, "{i}");
        }
        Value::UInt(u) => {
            let _ = write!(out, "{u}");
        }
        Value::Float(f) => write_float(*f, out),
        Value::Numeric(s) | Value::Text(s) | Value::Json(s) => out.push_str(s),
        Value::Other { text, .. } => out.push_str(text),
        Value::Bytes(b) => {
            out.push_str("\\x");
            for byte in b {
                let _ = write!(out, "{byte:02x}");
            }
        }
        Value::Date(d) => write_date(*d, out),
        Value::Time(us) => write_time(*us, out)?,
        Value::TimeTz {
            micros,
            offset_secs,
        } => {
            write_time(*micros, out)?;
            write_offset(*offset_secs, out);
        }
        Value::Timestamp(us) => write_timestamp(*us, false, out),
        Value::TimestampTz(us) => write_timestamp(*us, true, out),
        Value::Interval {
            months,
            days,
            micros,
        } => {
            let _ = write!(out, "{months} mons {days} days {micros} microseconds");
        }
        Value::Uuid(u) => {
            for (i, b) in u.iter().enumerate() {
                if matches!(i, 4 | 6 | 8 | 10) {
                    out.push('-');
                }
                let _ = write!(out, "{b:02x}");
            }
        }
        Value::Array(items) => {
            out.push('{');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                if !write_value(item, out, true)? {
                    out.push_str("NULL");
                }
            }
            out.push('}');
            return Ok(true);
        }
    }
    if in_array {
        // Quote every scalar element: no ambiguity with NULL, braces, commas or spaces.
        let text = out.split_off(start);
        out.push('"');
        for c in text.chars() {
            if c == '"' || c == '\\' {
                out.push('\\');
            }
            out.push(c);
        }
        out.push('"');
    }
    Ok(true)
}

fn write_float(f: f64, out: &mut String) {
    if f.is_nan() {
        out.push_str("NaN");
    } else if f.is_infinite() {
        out.push_str(if f > 0.0 { "Infinity" } else { "-Infinity" });
    } else {
        // Debug prints the shortest text that reads back as the same f64.
        let _ = write!(out, "{f:?}");
    }
}

pub use ferry_proto::civil::civil_from_days;

fn write_ymd(days: i64, out: &mut String) -> bool {
    let (y, m, d) = civil_from_days(days);
    if y <= 0 {
        let _ = write!(out, "{:04}-{m:02}-{d:02}", 1 - y);
        true
    } else {
        let _ = write!(out, "{y:04}-{m:02}-{d:02}");
        false
    }
}

fn write_date(days: i32, out: &mut String) {
    match days {
        i32::MAX => out.push_str("infinity"),
        i32::MIN => out.push_str("-infinity"),
        _ => {
            if write_ymd(i64::from(days), out) {
                out.push_str(" BC");
            }
        }
    }
}

/// A time as `[-]H:MM:SS[.ffffff]`, hours unbounded: the text both `time` and `interval` read.
/// MySQL's TIME is a duration (`-838:59:59` to `838:59:59`) and becomes an `interval` column on
/// PostgreSQL, which takes any of them; a `time` column refuses what is outside
/// 00:00:00..24:00:00 itself, with its own error.
fn write_time(us: i64, out: &mut String) -> Result<()> {
    if us < 0 {
        out.push('-');
    }
    write_clock(us.unsigned_abs().min(i64::MAX as u64) as i64, out);
    Ok(())
}

fn write_clock(us: i64, out: &mut String) {
    let secs = us / 1_000_000;
    let frac = us % 1_000_000;
    let _ = write!(
        out,
        "{:02}:{:02}:{:02}",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    );
    if frac != 0 {
        let _ = write!(out, ".{frac:06}");
    }
}

fn write_offset(secs: i32, out: &mut String) {
    let sign = if secs < 0 { '-' } else { '+' };
    let a = secs.unsigned_abs();
    let _ = write!(
        out,
        "{sign}{:02}:{:02}:{:02}",
        a / 3600,
        a / 60 % 60,
        a % 60
    );
}

fn write_timestamp(us: i64, tz: bool, out: &mut String) {
    match us {
        i64::MAX => out.push_str("infinity"),
        i64::MIN => out.push_str("-infinity"),
        _ => {
            let days = us.div_euclid(86_400_000_000);
            let bc = write_ymd(days, out);
            out.push(' ');
            write_clock(us.rem_euclid(86_400_000_000), out);
            if tz {
                out.push_str("+00");
            }
            if bc {
                out.push_str(" BC");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(v: Value) -> String {
        to_text(&v).unwrap().unwrap()
    }

    #[test]
    fn scalars_and_arrays() {
        assert_eq!(to_text(&Value::Null).unwrap(), None);
        assert!(to_text(&Value::Unchanged).is_err());
        assert_eq!(t(Value::Float(f64::NAN)), "NaN");
        assert_eq!(t(Value::Float(1.5e300)), "1.5e300");
        assert_eq!(t(Value::Float(0.1)), "0.1");
        assert_eq!(t(Value::Bytes(vec![0, 255])), "\\x00ff");
        assert_eq!(t(Value::Date(-719_162)), "0001-01-01");
        assert_eq!(t(Value::Date(-719_528)), "0001-01-01 BC");
        assert_eq!(t(Value::Date(i32::MAX)), "infinity");
        assert_eq!(t(Value::Time(86_400_000_000)), "24:00:00");
        // MySQL TIME values, for an interval column.
        assert_eq!(t(Value::Time(-1)), "-00:00:00.000001");
        assert_eq!(t(Value::Time(3_020_399_000_000)), "838:59:59");
        assert_eq!(t(Value::Time(-45_000_000_000)), "-12:30:00");
        assert_eq!(
            t(Value::TimeTz {
                micros: 3_723_500_000,
                offset_secs: -19_800
            }),
            "01:02:03.500000-05:30:00"
        );
        assert_eq!(
            t(Value::TimestampTz(-63_517_780_800_000_000)),
            "0044-03-15 12:00:00+00 BC"
        );
        assert_eq!(
            t(Value::Timestamp(946_684_800_000_001)),
            "2000-01-01 00:00:00.000001"
        );
        assert_eq!(
            t(Value::Array(vec![
                Value::Array(vec![Value::Text("a \"b\"\\".into()), Value::Null]),
                Value::Array(vec![Value::Text("NULL".into()), Value::Text(String::new())]),
            ])),
            r#"{{"a \"b\"\\",NULL},{"NULL",""}}"#
        );
        assert_eq!(t(Value::Array(vec![])), "{}");
        assert_eq!(
            t(Value::Uuid(
                *b"\xa0\xee\xbc\x99\x9c\x0b\x4e\xf8\xbb\x6d\x6b\xb9\xbd\x38\x0a\x11"
            )),
            "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"
        );
    }

    #[test]
    fn dates_round_trip_through_civil_days() {
        for days in [-800_000i64, -719_528, -1, 0, 59, 11_016, 2_932_896] {
            let (y, m, d) = civil_from_days(days);
            // days_from_civil, independently.
            let yy = if m <= 2 { y - 1 } else { y };
            let era = yy.div_euclid(400);
            let yoe = yy.rem_euclid(400);
            let mp = (i64::from(m) + 9) % 12;
            let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
            let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
            assert_eq!(era * 146_097 + doe - 719_468, days);
        }
    }
}
