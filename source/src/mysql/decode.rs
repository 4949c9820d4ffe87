//! MySQL/MariaDB values to ferry's [`Value`]: binlog row images (as mysql_common decodes them)
//! and the snapshot's text results, both interpreted by the column's [`Kind`], so a row copied by
//! the snapshot and the same row read from the binlog are equal.
//!
//! Character data is decoded from the column's own character set and invalid bytes are an error,
//! never replaced. Zero dates (`0000-00-00`) follow [`ZeroDates`].

use ferry_proto::Value;
use mysql_async::Value as My;

use super::schema::{ColInfo, Kind};

/// What a zero date or datetime (`0000-00-00`, or with a zero month or day) becomes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ZeroDates {
    /// Carried as it is (a [`Value::Other`] with the column's type, see
    /// [`Value::is_zero_date`]): a MySQL/MariaDB sink stores it, a PostgreSQL sink does what its
    /// own `zero_dates` says, Kafka shows the text.
    #[default]
    Keep,
    /// NULL for every sink, as Debezium does.
    Null,
    /// The source stops with an error naming the column.
    Error,
}

/// A value that could not be converted: the column and why.
#[derive(Debug, thiserror::Error)]
#[error("column {column}: {reason}")]
pub struct DecodeError {
    pub column: String,
    pub reason: String,
}

fn err(col: &ColInfo, reason: impl Into<String>) -> DecodeError {
    DecodeError {
        column: col.name.clone(),
        reason: reason.into(),
    }
}

fn zero(col: &ColInfo, zero_dates: ZeroDates, text: String) -> Result<Value, DecodeError> {
    match zero_dates {
        ZeroDates::Keep => Ok(Value::Other {
            type_name: col.column_type.clone(),
            text,
        }),
        ZeroDates::Null => Ok(Value::Null),
        ZeroDates::Error => Err(err(
            col,
            "a zero date (0000-00-00); set zero_dates = \"null\" in [source] to map them to NULL",
        )),
    }
}

fn date_value(
    col: &ColInfo,
    zero_dates: ZeroDates,
    (y, mo, d): (u16, u8, u8),
    (h, mi, s, us): (u8, u8, u8, u32),
) -> Result<Value, DecodeError> {
    if mo == 0 || d == 0 {
        let text = match col.kind {
            Kind::Date => format!("{y:04}-{mo:02}-{d:02}"),
            _ if us > 0 => format!("{y:04}-{mo:02}-{d:02} {h:02}:{mi:02}:{s:02}.{us:06}"),
            _ => format!("{y:04}-{mo:02}-{d:02} {h:02}:{mi:02}:{s:02}"),
        };
        return zero(col, zero_dates, text);
    }
    // A day the month does not have (2024-02-30, stored with ALLOW_INVALID_DATES) is an error,
    // not a date shifted into the next month.
    let days = crate::postgres::types::days_from_civil(i64::from(y), u32::from(mo), u32::from(d))
        .filter(|_| h <= 23 && mi <= 59 && s <= 59 && us <= 999_999)
        .ok_or_else(|| {
            err(
                col,
                format!("{y:04}-{mo:02}-{d:02} {h:02}:{mi:02}:{s:02} is not a date"),
            )
        })?;
    let micros = days * 86_400_000_000
        + (i64::from(h) * 3600 + i64::from(mi) * 60 + i64::from(s)) * 1_000_000
        + i64::from(us);
    Ok(match col.kind {
        Kind::Date => Value::Date(days as i32),
        Kind::Timestamp => Value::TimestampTz(micros),
        _ => Value::Timestamp(micros),
    })
}

/// Text in the column's character set.
fn text(col: &ColInfo, charset: &str, bytes: Vec<u8>) -> Result<Value, DecodeError> {
    match charset {
        "utf8mb4" | "utf8mb3" | "utf8" | "ascii" => {
            String::from_utf8(bytes).map(Value::Text).map_err(|e| {
                err(
                    col,
                    format!(
                        "invalid {charset} bytes at offset {}",
                        e.utf8_error().valid_up_to()
                    ),
                )
            })
        }
        // MySQL's latin1 is Windows-1252, with the five codes 1252 leaves undefined mapped to the
        // C1 controls of the same value.
        "latin1" => Ok(Value::Text(bytes.iter().map(|&b| cp1252(b)).collect())),
        "binary" => Ok(Value::Bytes(bytes)),
        other => Err(err(
            col,
            format!(
                "character set {other} is not supported (utf8mb4, utf8mb3, ascii, latin1, binary are)"
            ),
        )),
    }
}

fn cp1252(b: u8) -> char {
    const HIGH: [u16; 32] = [
        0x20AC, 0x81, 0x201A, 0x0192, 0x201E, 0x2026, 0x2020, 0x2021, 0x02C6, 0x2030, 0x0160,
        0x2039, 0x0152, 0x8D, 0x017D, 0x8F, 0x90, 0x2018, 0x2019, 0x201C, 0x201D, 0x2022, 0x2013,
        0x2014, 0x02DC, 0x2122, 0x0161, 0x203A, 0x0153, 0x9D, 0x017E, 0x0178,
    ];
    match b {
        0x80..=0x9F => char::from_u32(u32::from(HIGH[usize::from(b - 0x80)])).unwrap_or('\u{FFFD}'),
        _ => char::from(b),
    }
}

fn bits(n: u32, bytes: &[u8]) -> Value {
    let mut s = String::with_capacity(n as usize);
    let total = bytes.len() * 8;
    for i in (total.saturating_sub(n as usize))..total {
        let byte = bytes[i / 8];
        s.push(if byte & (0x80 >> (i % 8)) != 0 {
            '1'
        } else {
            '0'
        });
    }
    Value::Other {
        type_name: format!("bit({n})"),
        text: s,
    }
}

fn set_text(members: &[String], mask: u64) -> String {
    members
        .iter()
        .enumerate()
        .filter(|(i, _)| *i < 64 && mask & (1 << i) != 0)
        .map(|(_, m)| m.as_str())
        .collect::<Vec<_>>()
        .join(",")
}

/// Geometry as stored (4-byte SRID, then WKB) to WKB.
fn wkb(col: &ColInfo, bytes: Vec<u8>) -> Result<Value, DecodeError> {
    if bytes.len() < 5 {
        return Err(err(col, "geometry shorter than its SRID prefix"));
    }
    Ok(Value::Bytes(bytes[4..].to_vec()))
}

fn time_micros(neg: bool, days: u32, h: u8, m: u8, s: u8, us: u32) -> i64 {
    let t = ((i64::from(days) * 24 + i64::from(h)) * 3600 + i64::from(m) * 60 + i64::from(s))
        * 1_000_000
        + i64::from(us);
    if neg { -t } else { t }
}

/// A binlog row image value.
pub fn binlog(col: &ColInfo, v: My, zero_dates: ZeroDates) -> Result<Value, DecodeError> {
    let mismatch = |v: &My| {
        err(
            col,
            format!("unexpected binlog value {v:?} for {}", col.column_type),
        )
    };
    Ok(match (&col.kind, v) {
        (_, My::NULL) => Value::Null,
        (Kind::Int, My::Int(i)) => Value::Int(i),
        (Kind::Int, My::UInt(u)) => Value::Int(u as i64),
        (Kind::BigUnsigned, My::UInt(u)) => Value::UInt(u),
        (Kind::BigUnsigned, My::Int(i)) => Value::UInt(i as u64),
        (Kind::Float, My::Float(f)) => Value::Float(f64::from(f)),
        (Kind::Float, My::Double(f)) => Value::Float(f),
        (Kind::Decimal, My::Bytes(b)) => {
            Value::Numeric(String::from_utf8(b).map_err(|_| err(col, "decimal not ASCII"))?)
        }
        (Kind::Bit(n), My::Bytes(b)) => bits(*n, &b),
        (Kind::Text(cs), My::Bytes(b)) => text(col, cs, b)?,
        (Kind::Json, My::Bytes(b)) => match text(col, "utf8mb4", b)? {
            Value::Text(s) => Value::Json(s),
            other => other,
        },
        (Kind::Binary, My::Bytes(b)) => Value::Bytes(b),
        (Kind::Geometry, My::Bytes(b)) => wkb(col, b)?,
        (Kind::Date | Kind::DateTime, My::Date(y, mo, d, h, mi, s, us)) => {
            date_value(col, zero_dates, (y, mo, d), (h, mi, s, us))?
        }
        (Kind::Timestamp, My::Bytes(b)) => {
            // Seconds since the epoch, with `.ffffff` when there is a fraction.
            let t = String::from_utf8(b).map_err(|_| err(col, "timestamp not ASCII"))?;
            let (sec, frac) = t.split_once('.').unwrap_or((&t, "0"));
            let sec: i64 = sec
                .parse()
                .map_err(|_| err(col, format!("timestamp {t:?}")))?;
            let us: i64 = format!("{frac:0<6}")
                .get(..6)
                .and_then(|f| f.parse().ok())
                .ok_or_else(|| err(col, format!("timestamp {t:?}")))?;
            let sec = sec
                .checked_mul(1_000_000)
                .and_then(|s| s.checked_add(us))
                .ok_or_else(|| err(col, format!("timestamp {t:?} out of range")))?;
            if sec == 0 {
                zero(col, zero_dates, "0000-00-00 00:00:00".into())?
            } else {
                Value::TimestampTz(sec)
            }
        }
        (Kind::Timestamp, My::Int(sec)) => match sec.checked_mul(1_000_000) {
            Some(0) => zero(col, zero_dates, "0000-00-00 00:00:00".into())?,
            Some(us) => Value::TimestampTz(us),
            None => return Err(err(col, "timestamp out of range")),
        },
        (Kind::Time, My::Time(neg, days, h, m, s, us)) => {
            Value::Time(time_micros(neg, days, h, m, s, us))
        }
        (Kind::Year, My::Bytes(b)) => {
            // mysql_common adds 1900 to the stored byte; 0 is the year 0000.
            let y: i64 = std::str::from_utf8(&b)
                .ok()
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| err(col, "year"))?;
            Value::Int(if y == 1900 { 0 } else { y })
        }
        (Kind::Enum(members), My::Int(i)) => {
            // 0 is the empty string MySQL stores for an invalid value.
            let idx = usize::try_from(i).unwrap_or(0);
            match idx {
                0 => Value::Text(String::new()),
                _ => Value::Text(
                    members
                        .get(idx - 1)
                        .cloned()
                        .ok_or_else(|| err(col, format!("enum index {idx} out of range")))?,
                ),
            }
        }
        (Kind::Set(members), My::Bytes(b)) => {
            let mut mask = 0u64;
            for (i, byte) in b.iter().enumerate().take(8) {
                mask |= u64::from(*byte) << (8 * i);
            }
            Value::Text(set_text(members, mask))
        }
        (_, v) => return Err(mismatch(&v)),
    })
}

/// MySQL's binary JSON (a `json` column's binlog image) as JSON text. MariaDB's JSON is text and
/// never comes this way.
pub fn mysql_json(j: mysql_async::binlog::jsonb::Value<'_>) -> Result<Value, String> {
    let json: serde_json::Value = j.try_into().map_err(|e| format!("binary JSON: {e}"))?;
    Ok(Value::Json(json.to_string()))
}

fn parse_date(s: &str) -> Option<(u16, u8, u8)> {
    let mut it = s.splitn(3, '-');
    Some((
        it.next()?.parse().ok()?,
        it.next()?.parse().ok()?,
        it.next()?.parse().ok()?,
    ))
}

/// `HH:MM:SS[.ffffff]` with an optional sign and hours beyond 24: (negative, micros).
fn parse_time(s: &str) -> Option<(bool, u64)> {
    let (neg, s) = match s.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, s),
    };
    let (hms, frac) = s.split_once('.').unwrap_or((s, ""));
    let mut it = hms.splitn(3, ':');
    let h: u64 = it.next()?.parse().ok()?;
    let m: u64 = it.next()?.parse().ok()?;
    let sec: u64 = it.next()?.parse().ok()?;
    let us: u64 = if frac.is_empty() {
        0
    } else {
        format!("{frac:0<6}").get(..6)?.parse().ok()?
    };
    let total = h
        .checked_mul(3600)?
        .checked_add(m.checked_mul(60)?)?
        .checked_add(sec)?
        .checked_mul(1_000_000)?
        .checked_add(us)?;
    // Beyond i64 is no time MySQL has (its range is ±838:59:59).
    i64::try_from(total).ok()?;
    Some((neg, total))
}

/// A snapshot value: text protocol results, in the column's own character set
/// (`character_set_results = NULL`) and with the session in UTC.
pub fn text_result(col: &ColInfo, v: My, zero_dates: ZeroDates) -> Result<Value, DecodeError> {
    let b = match v {
        My::NULL => return Ok(Value::Null),
        My::Bytes(b) => b,
        other => return binlog(col, other, zero_dates),
    };
    let ascii = |b: &[u8]| -> Result<String, DecodeError> {
        String::from_utf8(b.to_vec()).map_err(|_| err(col, "not ASCII"))
    };
    let bad = |s: &str| err(col, format!("cannot read {s:?} as {}", col.column_type));
    Ok(match &col.kind {
        Kind::Int => {
            let s = ascii(&b)?;
            Value::Int(s.parse().map_err(|_| bad(&s))?)
        }
        Kind::BigUnsigned => {
            let s = ascii(&b)?;
            Value::UInt(s.parse().map_err(|_| bad(&s))?)
        }
        Kind::Float => {
            let s = ascii(&b)?;
            Value::Float(s.parse().map_err(|_| bad(&s))?)
        }
        Kind::Decimal => Value::Numeric(ascii(&b)?),
        Kind::Bit(n) => bits(*n, &b),
        Kind::Text(cs) => text(col, cs, b)?,
        Kind::Json => match text(col, "utf8mb4", b)? {
            Value::Text(s) => Value::Json(s),
            other => other,
        },
        Kind::Binary => Value::Bytes(b),
        Kind::Geometry => wkb(col, b)?,
        Kind::Date => {
            let s = ascii(&b)?;
            let (y, m, d) = parse_date(&s).ok_or_else(|| bad(&s))?;
            date_value(col, zero_dates, (y, m, d), (0, 0, 0, 0))?
        }
        Kind::DateTime | Kind::Timestamp => {
            let s = ascii(&b)?;
            let (d, t) = s.split_once(' ').ok_or_else(|| bad(&s))?;
            let (y, mo, da) = parse_date(d).ok_or_else(|| bad(&s))?;
            let (_, micros) = parse_time(t).ok_or_else(|| bad(&s))?;
            let secs = micros / 1_000_000;
            if secs >= 86_400 {
                return Err(bad(&s));
            }
            date_value(
                col,
                zero_dates,
                (y, mo, da),
                (
                    (secs / 3600) as u8,
                    (secs / 60 % 60) as u8,
                    (secs % 60) as u8,
                    (micros % 1_000_000) as u32,
                ),
            )?
        }
        Kind::Time => {
            let s = ascii(&b)?;
            let (neg, micros) = parse_time(&s).ok_or_else(|| bad(&s))?;
            let m = micros as i64;
            Value::Time(if neg { -m } else { m })
        }
        Kind::Year => {
            let s = ascii(&b)?;
            Value::Int(s.parse().map_err(|_| bad(&s))?)
        }
        Kind::Enum(_) | Kind::Set(_) => Value::Text(ascii(&b).or_else(|_| {
            String::from_utf8(b.clone()).map_err(|_| err(col, "enum or set value not UTF-8"))
        })?),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn col(kind: Kind, ty: &str) -> ColInfo {
        ColInfo {
            name: "c".into(),
            column_type: ty.into(),
            kind,
            nullable: true,
            key: false,
        }
    }

    #[test]
    fn dates_a_month_does_not_have_are_errors() {
        let d = col(Kind::Date, "date");
        assert_eq!(
            binlog(&d, My::Date(2000, 3, 1, 0, 0, 0, 0), ZeroDates::Null).unwrap(),
            Value::Date(11_017)
        );
        for bad in [
            My::Date(2024, 2, 30, 0, 0, 0, 0),
            My::Date(2023, 4, 31, 0, 0, 0, 0),
        ] {
            let e = binlog(&d, bad, ZeroDates::Null).unwrap_err();
            assert!(e.to_string().contains("is not a date"), "{e}");
        }
        let e = text_result(&d, My::Bytes(b"2023-02-29".to_vec()), ZeroDates::Null).unwrap_err();
        assert!(e.to_string().contains("is not a date"), "{e}");
    }

    #[test]
    fn snapshot_and_binlog_agree() {
        let dt = col(Kind::DateTime, "datetime(6)");
        let a = text_result(
            &dt,
            My::Bytes(b"2024-02-29 12:34:56.123400".to_vec()),
            ZeroDates::Null,
        )
        .unwrap();
        let b = binlog(
            &dt,
            My::Date(2024, 2, 29, 12, 34, 56, 123_400),
            ZeroDates::Null,
        )
        .unwrap();
        assert_eq!(a, b);
        let t = col(Kind::Time, "time(6)");
        let a = text_result(
            &t,
            My::Bytes(b"-838:59:59.000000".to_vec()),
            ZeroDates::Null,
        )
        .unwrap();
        let b = binlog(&t, My::Time(true, 34, 22, 59, 59, 0), ZeroDates::Null).unwrap();
        assert_eq!(a, b);
        assert_eq!(a, Value::Time(-(838 * 3600 + 59 * 60 + 59) * 1_000_000));
        let ts = col(Kind::Timestamp, "timestamp(3)");
        let a = text_result(
            &ts,
            My::Bytes(b"2001-09-09 01:46:40.500".to_vec()),
            ZeroDates::Null,
        )
        .unwrap();
        let b = binlog(
            &ts,
            My::Bytes(b"1000000000.500000".to_vec()),
            ZeroDates::Null,
        )
        .unwrap();
        assert_eq!(a, b);
        assert_eq!(a, Value::TimestampTz(1_000_000_000_500_000));
    }

    #[test]
    fn zero_dates_follow_the_setting() {
        let d = col(Kind::Date, "date");
        let z = My::Bytes(b"0000-00-00".to_vec());
        assert_eq!(
            text_result(&d, z.clone(), ZeroDates::Null).unwrap(),
            Value::Null
        );
        let e = text_result(&d, z, ZeroDates::Error).unwrap_err();
        assert!(e.to_string().contains("zero date"), "{e}");
    }

    #[test]
    fn charsets() {
        let l = col(Kind::Text("latin1".into()), "varchar(10)");
        assert_eq!(
            binlog(&l, My::Bytes(vec![b'a', 0xE9, 0x80]), ZeroDates::Null).unwrap(),
            Value::Text("aé€".into())
        );
        let u = col(Kind::Text("utf8mb4".into()), "varchar(10)");
        let e = binlog(&u, My::Bytes(vec![b'a', 0xFF]), ZeroDates::Null).unwrap_err();
        assert!(e.to_string().contains("invalid utf8mb4"), "{e}");
    }

    #[test]
    fn enum_set_bit() {
        let e = col(Kind::Enum(vec!["a".into(), "b".into()]), "enum('a','b')");
        assert_eq!(
            binlog(&e, My::Int(2), ZeroDates::Null).unwrap(),
            Value::Text("b".into())
        );
        assert!(binlog(&e, My::Int(3), ZeroDates::Null).is_err());
        let s = col(
            Kind::Set(vec!["x".into(), "y".into(), "z".into()]),
            "set('x','y','z')",
        );
        assert_eq!(
            binlog(&s, My::Bytes(vec![0b101]), ZeroDates::Null).unwrap(),
            Value::Text("x,z".into())
        );
        let b = col(Kind::Bit(10), "bit(10)");
        assert_eq!(
            binlog(&b, My::Bytes(vec![0b10, 0b0000_0001]), ZeroDates::Null).unwrap(),
            Value::Other {
                type_name: "bit(10)".into(),
                text: "1000000001".into()
            }
        );
    }

    /// MySQL-only path, from bytes laid out as MySQL's binary JSON format documents (MySQL is not
    /// installable here): a row image's JSON column decodes to the document.
    #[test]
    fn mysql_binary_json_from_recorded_bytes() {
        use mysql_common::binlog::value::BinlogValue;
        use mysql_common::constants::ColumnType;
        use mysql_common::proto::MyDeserialize;
        // {"a": 1, "b": "xy"}: small object, 2 members.
        let doc: Vec<u8> = vec![
            0x00, // small object
            0x02, 0x00, // 2 members
            0x17, 0x00, // 23 bytes after the type byte
            0x12, 0x00, 0x01, 0x00, // key "a" at 18, length 1
            0x13, 0x00, 0x01, 0x00, // key "b" at 19, length 1
            0x05, 0x01, 0x00, // int16 1, inlined
            0x0C, 0x14, 0x00, // string at 20
            b'a', b'b', // keys
            0x02, b'x', b'y', // "xy", length-prefixed
        ];
        let mut image = (doc.len() as u32).to_le_bytes().to_vec();
        image.extend(&doc);
        let mut buf = mysql_common::io::ParseBuf(&image);
        let v = BinlogValue::deserialize(
            (ColumnType::MYSQL_TYPE_JSON, &[4u8][..], false, false),
            &mut buf,
        )
        .unwrap();
        let BinlogValue::Jsonb(j) = v else {
            panic!("{v:?}")
        };
        let Value::Json(text) = mysql_json(j).unwrap() else {
            panic!()
        };
        let parsed: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(parsed, serde_json::json!({"a": 1, "b": "xy"}));
    }

    proptest! {
        /// Any bytes as a MySQL binary JSON image: a document or an error, never a panic.
        #[test]
        fn arbitrary_binary_json_never_panics(doc in proptest::collection::vec(any::<u8>(), 0..64)) {
            use mysql_common::binlog::value::BinlogValue;
            use mysql_common::constants::ColumnType;
            use mysql_common::proto::MyDeserialize;
            let mut image = (doc.len() as u32).to_le_bytes().to_vec();
            image.extend(&doc);
            let mut buf = mysql_common::io::ParseBuf(&image);
            if let Ok(BinlogValue::Jsonb(j)) =
                BinlogValue::deserialize((ColumnType::MYSQL_TYPE_JSON, &[4u8][..], false, false), &mut buf)
            {
                let _ = mysql_json(j);
            }
        }

        /// Any bytes for any kind: a value or an error, never a panic.
        #[test]
        fn arbitrary_text_results_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..40), k in 0usize..12) {
            let kinds = [Kind::Int, Kind::BigUnsigned, Kind::Float, Kind::Decimal, Kind::Bit(12),
                Kind::Text("utf8mb4".into()), Kind::Date, Kind::Time, Kind::DateTime, Kind::Timestamp,
                Kind::Year, Kind::Geometry];
            let c = col(kinds[k].clone(), "t");
            let _ = text_result(&c, My::Bytes(bytes.clone()), ZeroDates::Error);
            let _ = binlog(&c, My::Bytes(bytes), ZeroDates::Error);
        }
    }
}
