//! PostgreSQL values in their text output form, converted to engine-neutral [`Value`]s.
//!
//! The replication session pins the output settings this parser relies on (`DateStyle=ISO`,
//! `TimeZone=UTC`, `IntervalStyle=iso_8601`, `extra_float_digits=3`, `bytea_output=hex`), see
//! [`SESSION_OPTIONS`]. A value that does not parse as its type expects is kept as
//! [`Value::Other`] with the type name, never dropped. The infinities of date, timestamp and
//! timestamptz map to the extreme values PostgreSQL itself stores for them ([`DATE_INFINITY`],
//! [`TIMESTAMP_INFINITY`] and their negations), so they stay typed and round-trip exactly.

use ferry_proto::Value;

/// Startup `options` that fix the text output of every type this module parses.
pub const SESSION_OPTIONS: &str = "-c DateStyle=ISO,YMD -c TimeZone=UTC -c IntervalStyle=iso_8601 \
     -c extra_float_digits=3 -c bytea_output=hex";

/// `date 'infinity'` (PostgreSQL's `DATEVAL_NOEND`); `-infinity` is `i32::MIN`.
pub const DATE_INFINITY: i32 = i32::MAX;
/// `timestamp 'infinity'` (PostgreSQL's `DT_NOEND`); `-infinity` is `i64::MIN`.
pub const TIMESTAMP_INFINITY: i64 = i64::MAX;

/// Well-known type OIDs.
pub mod oid {
    pub const BOOL: u32 = 16;
    pub const BYTEA: u32 = 17;
    pub const CHAR: u32 = 18;
    pub const NAME: u32 = 19;
    pub const INT8: u32 = 20;
    pub const INT2: u32 = 21;
    pub const INT4: u32 = 23;
    pub const TEXT: u32 = 25;
    pub const OID: u32 = 26;
    pub const JSON: u32 = 114;
    pub const FLOAT4: u32 = 700;
    pub const FLOAT8: u32 = 701;
    pub const BPCHAR: u32 = 1042;
    pub const VARCHAR: u32 = 1043;
    pub const DATE: u32 = 1082;
    pub const TIME: u32 = 1083;
    pub const TIMESTAMP: u32 = 1114;
    pub const TIMESTAMPTZ: u32 = 1184;
    pub const INTERVAL: u32 = 1186;
    pub const TIMETZ: u32 = 1266;
    pub const NUMERIC: u32 = 1700;
    pub const UUID: u32 = 2950;
    pub const JSONB: u32 = 3802;
    pub const INET: u32 = 869;
    pub const CIDR: u32 = 650;
    pub const MACADDR: u32 = 829;
    pub const MACADDR8: u32 = 774;
}

/// The element type of a built-in array type, if `array_oid` is one this module parses.
pub fn array_element(array_oid: u32) -> Option<u32> {
    Some(match array_oid {
        1000 => oid::BOOL,
        1001 => oid::BYTEA,
        1002 => oid::CHAR,
        1003 => oid::NAME,
        1005 => oid::INT2,
        1007 => oid::INT4,
        1016 => oid::INT8,
        1009 => oid::TEXT,
        1028 => oid::OID,
        199 => oid::JSON,
        1021 => oid::FLOAT4,
        1022 => oid::FLOAT8,
        1014 => oid::BPCHAR,
        1015 => oid::VARCHAR,
        1182 => oid::DATE,
        1183 => oid::TIME,
        1115 => oid::TIMESTAMP,
        1185 => oid::TIMESTAMPTZ,
        1187 => oid::INTERVAL,
        1270 => oid::TIMETZ,
        1231 => oid::NUMERIC,
        2951 => oid::UUID,
        3807 => oid::JSONB,
        1041 => oid::INET,
        651 => oid::CIDR,
        1040 => oid::MACADDR,
        775 => oid::MACADDR8,
        _ => return None,
    })
}

/// Converts one text-format value of type `type_oid` (named `type_name` for the fallback).
pub fn from_text(type_oid: u32, type_name: &str, text: &[u8]) -> Value {
    let Ok(s) = std::str::from_utf8(text) else {
        // The server encodes text in the database encoding; ferry requires UTF8 databases
        // (checked at start), so this is only reachable for corrupt input: keep the bytes.
        return Value::Bytes(text.to_vec());
    };
    parse(type_oid, s).unwrap_or_else(|| other(type_name, s))
}

fn other(type_name: &str, s: &str) -> Value {
    Value::Other {
        type_name: type_name.to_owned(),
        text: s.to_owned(),
    }
}

fn parse(type_oid: u32, s: &str) -> Option<Value> {
    Some(match type_oid {
        oid::BOOL => match s {
            "t" => Value::Bool(true),
            "f" => Value::Bool(false),
            _ => return None,
        },
        oid::INT2 | oid::INT4 | oid::INT8 => Value::Int(s.parse().ok()?),
        oid::OID => Value::Int(s.parse::<u32>().ok()?.into()),
        oid::FLOAT4 | oid::FLOAT8 => Value::Float(parse_float(s)?),
        oid::NUMERIC => {
            let ok = matches!(s, "NaN" | "Infinity" | "-Infinity")
                || (s.bytes().any(|b| b.is_ascii_digit())
                    && s.bytes()
                        .all(|b| b.is_ascii_digit() || matches!(b, b'-' | b'.')));
            if !ok {
                return None;
            }
            Value::Numeric(s.to_owned())
        }
        oid::TEXT | oid::VARCHAR | oid::BPCHAR | oid::NAME | oid::CHAR => Value::Text(s.to_owned()),
        oid::BYTEA => Value::Bytes(parse_bytea(s)?),
        oid::DATE => Value::Date(match s {
            "infinity" => DATE_INFINITY,
            "-infinity" => i32::MIN,
            _ => parse_date(s)?,
        }),
        oid::TIME => Value::Time(parse_time(s)?),
        oid::TIMETZ => {
            let (time, offset) = split_offset(s)?;
            Value::TimeTz {
                micros: parse_time(time)?,
                offset_secs: offset,
            }
        }
        oid::TIMESTAMP | oid::TIMESTAMPTZ if s == "infinity" || s == "-infinity" => {
            let v = if s == "infinity" {
                TIMESTAMP_INFINITY
            } else {
                i64::MIN
            };
            if type_oid == oid::TIMESTAMP {
                Value::Timestamp(v)
            } else {
                Value::TimestampTz(v)
            }
        }
        oid::TIMESTAMP => Value::Timestamp(timestamp_micros(s)?),
        oid::TIMESTAMPTZ => {
            // "2024-01-02 03:04:05.6+01" or "0044-03-15 12:00:00+00 BC".
            let (s, bc) = split_bc(s);
            let (time, offset) = split_offset(s)?;
            let local = timestamp_micros(&format!("{time}{bc}"))?;
            Value::TimestampTz(local.checked_sub(i64::from(offset) * 1_000_000)?)
        }
        oid::INTERVAL => parse_interval(s)?,
        oid::UUID => Value::Uuid(ferry_proto::position::parse_uuid(s)?),
        oid::JSON | oid::JSONB => Value::Json(s.to_owned()),
        // Network addresses have no engine-neutral type: their text, named, also inside arrays.
        oid::INET | oid::CIDR | oid::MACADDR | oid::MACADDR8 => Value::Other {
            type_name: match type_oid {
                oid::INET => "inet",
                oid::CIDR => "cidr",
                oid::MACADDR => "macaddr",
                _ => "macaddr8",
            }
            .to_owned(),
            text: s.to_owned(),
        },
        other_oid => {
            let elem = array_element(other_oid)?;
            Value::Array(parse_array(s, elem)?)
        }
    })
}

fn parse_float(s: &str) -> Option<f64> {
    match s {
        "NaN" => Some(f64::NAN),
        "Infinity" => Some(f64::INFINITY),
        "-Infinity" => Some(f64::NEG_INFINITY),
        _ => s.parse().ok(),
    }
}

fn parse_bytea(s: &str) -> Option<Vec<u8>> {
    let hex = s.strip_prefix("\\x")?;
    if hex.len() % 2 != 0 {
        return None;
    }
    hex.as_bytes()
        .chunks(2)
        .map(|p| u8::from_str_radix(std::str::from_utf8(p).ok()?, 16).ok())
        .collect()
}

pub use ferry_proto::civil::days_from_civil;

/// `YYYY-MM-DD`, optionally followed by ` BC` (year 1 BC is astronomical year 0).
fn parse_date(s: &str) -> Option<i32> {
    i32::try_from(parse_date_days(s)?).ok()
}

fn parse_date_days(s: &str) -> Option<i64> {
    let (s, bc) = match s.strip_suffix(" BC") {
        Some(rest) => (rest, true),
        None => (s, false),
    };
    let mut parts = s.splitn(3, '-');
    let y: i64 = parts.next()?.parse().ok()?;
    let m: u32 = parts.next()?.parse().ok()?;
    let d: u32 = parts.next()?.parse().ok()?;
    let y = if bc { 1 - y } else { y };
    days_from_civil(y, m, d)
}

/// `HH:MM:SS[.ffffff]`, hours up to 24.
fn parse_time(s: &str) -> Option<i64> {
    let mut parts = s.splitn(3, ':');
    let h: i64 = parts.next()?.parse().ok()?;
    let m: i64 = parts.next()?.parse().ok()?;
    let sec = parts.next()?;
    let (whole, frac) = sec.split_once('.').unwrap_or((sec, ""));
    let sec: i64 = whole.parse().ok()?;
    if !(0..=24).contains(&h) || !(0..60).contains(&m) || !(0..=60).contains(&sec) || frac.len() > 6
    {
        return None;
    }
    let frac_micros: i64 = if frac.is_empty() {
        0
    } else {
        format!("{frac:0<6}").parse().ok()?
    };
    Some(((h * 60 + m) * 60 + sec) * 1_000_000 + frac_micros)
}

/// Splits `…+HH[:MM[:SS]]` or `…-HH…` into the rest and the offset in seconds east of UTC.
fn split_offset(s: &str) -> Option<(&str, i32)> {
    let i = s.rfind(['+', '-'])?;
    let (rest, off) = s.split_at(i);
    let sign = if off.starts_with('-') { -1 } else { 1 };
    let mut secs = 0i32;
    for (k, part) in off[1..].split(':').enumerate() {
        let v: i32 = part.parse().ok()?;
        secs += v * [3600, 60, 1].get(k)?;
    }
    Some((rest, sign * secs))
}

fn split_bc(s: &str) -> (&str, &'static str) {
    match s.strip_suffix(" BC") {
        Some(rest) => (rest, " BC"),
        None => (s, ""),
    }
}

/// `YYYY-MM-DD HH:MM:SS[.f][ BC]` as microseconds since the epoch, read as UTC.
fn timestamp_micros(s: &str) -> Option<i64> {
    let (s, bc) = split_bc(s);
    let (date, time) = s.split_once(' ')?;
    let days = parse_date_days(&format!("{date}{bc}"))?;
    days.checked_mul(86_400_000_000)?
        .checked_add(parse_time(time)?)
}

/// ISO 8601 durations as PostgreSQL writes them with `IntervalStyle=iso_8601`:
/// `P1Y2M3DT4H5M6.5S`, each part optional and possibly negative.
fn parse_interval(s: &str) -> Option<Value> {
    let body = s.strip_prefix('P')?;
    let (date, time) = body.split_once('T').unwrap_or((body, ""));
    let mut months = 0i64;
    let mut days = 0i64;
    let mut micros = 0i64;
    let mut num = String::new();
    for c in date.chars() {
        match c {
            'Y' => months = months.checked_add(num.parse::<i64>().ok()?.checked_mul(12)?)?,
            'M' => months = months.checked_add(num.parse::<i64>().ok()?)?,
            'W' => days = days.checked_add(num.parse::<i64>().ok()?.checked_mul(7)?)?,
            'D' => days = days.checked_add(num.parse::<i64>().ok()?)?,
            _ => {
                num.push(c);
                continue;
            }
        }
        num.clear();
    }
    if !num.is_empty() {
        return None;
    }
    for c in time.chars() {
        let unit = match c {
            'H' => 3_600_000_000i64,
            'M' => 60_000_000,
            'S' => 1_000_000,
            _ => {
                num.push(c);
                continue;
            }
        };
        micros = micros.checked_add(decimal_micros(&num, unit)?)?;
        num.clear();
    }
    if !num.is_empty() {
        return None;
    }
    Some(Value::Interval {
        months: i32::try_from(months).ok()?,
        days: i32::try_from(days).ok()?,
        micros,
    })
}

/// `-1.25` of `unit` microseconds, exactly.
fn decimal_micros(num: &str, unit: i64) -> Option<i64> {
    let (neg, digits) = match num.strip_prefix('-') {
        Some(d) => (true, d),
        None => (false, num),
    };
    let (whole, frac) = digits.split_once('.').unwrap_or((digits, ""));
    if frac.len() > 6 {
        return None;
    }
    let whole: i64 = whole.parse().ok()?;
    let frac_micros: i64 = if frac.is_empty() {
        0
    } else {
        format!("{frac:0<6}").parse().ok()?
    };
    let v = whole
        .checked_mul(unit)?
        .checked_add(frac_micros * unit / 1_000_000)?;
    Some(if neg { -v } else { v })
}

/// Parses an array literal (`{1,2,NULL}`, `{{"a b",c},{d,e}}`) of element type `elem`. Arrays with
/// explicit bounds (`[0:1]={…}`) are not parsed (the caller keeps them as text).
fn parse_array(s: &str, elem: u32) -> Option<Vec<Value>> {
    let bytes = s.as_bytes();
    let mut pos = 0;
    let v = parse_array_level(bytes, &mut pos, elem, 0)?;
    if pos != bytes.len() {
        return None;
    }
    Some(v)
}

fn parse_array_level(b: &[u8], pos: &mut usize, elem: u32, depth: usize) -> Option<Vec<Value>> {
    if depth > 6 || b.get(*pos) != Some(&b'{') {
        return None;
    }
    *pos += 1;
    let mut out = Vec::new();
    if b.get(*pos) == Some(&b'}') {
        *pos += 1;
        return Some(out);
    }
    // box (;) is the only built-in type with another delimiter, and it is not parsed here.
    loop {
        match b.get(*pos)? {
            b'{' => out.push(Value::Array(parse_array_level(b, pos, elem, depth + 1)?)),
            b'"' => {
                *pos += 1;
                let mut text = Vec::new();
                loop {
                    match *b.get(*pos)? {
                        b'\\' => {
                            text.push(*b.get(*pos + 1)?);
                            *pos += 2;
                        }
                        b'"' => {
                            *pos += 1;
                            break;
                        }
                        c => {
                            text.push(c);
                            *pos += 1;
                        }
                    }
                }
                let t = String::from_utf8(text).ok()?;
                out.push(parse(elem, &t)?);
            }
            _ => {
                let start = *pos;
                while !matches!(b.get(*pos)?, b',' | b'}') {
                    *pos += 1;
                }
                let t = std::str::from_utf8(&b[start..*pos]).ok()?;
                out.push(if t == "NULL" {
                    Value::Null
                } else {
                    parse(elem, t)?
                });
            }
        }
        match b.get(*pos)? {
            b',' => *pos += 1,
            b'}' => {
                *pos += 1;
                return Some(out);
            }
            _ => return None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn v(oid: u32, s: &str) -> Value {
        from_text(oid, "t", s.as_bytes())
    }

    #[test]
    fn scalars() {
        assert_eq!(v(oid::BOOL, "t"), Value::Bool(true));
        assert_eq!(v(oid::INT8, "-9223372036854775808"), Value::Int(i64::MIN));
        assert_eq!(v(oid::OID, "4294967295"), Value::Int(4_294_967_295));
        assert!(matches!(v(oid::FLOAT8, "NaN"), Value::Float(f) if f.is_nan()));
        assert_eq!(v(oid::FLOAT4, "-Infinity"), Value::Float(f64::NEG_INFINITY));
        assert_eq!(v(oid::FLOAT8, "1.5e-300"), Value::Float(1.5e-300));
        assert_eq!(
            v(oid::NUMERIC, "-0.000100"),
            Value::Numeric("-0.000100".into())
        );
        assert_eq!(v(oid::NUMERIC, "NaN"), Value::Numeric("NaN".into()));
        assert_eq!(v(oid::BYTEA, "\\x00ff10"), Value::Bytes(vec![0, 255, 16]));
        assert_eq!(v(oid::TEXT, "héllo"), Value::Text("héllo".into()));
        assert_eq!(
            v(oid::UUID, "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"),
            Value::Uuid(
                ferry_proto::position::parse_uuid("a0eebc999c0b4ef8bb6d6bb9bd380a11").unwrap()
            )
        );
    }

    #[test]
    fn dates_and_times() {
        assert_eq!(v(oid::DATE, "1970-01-01"), Value::Date(0));
        assert_eq!(v(oid::DATE, "2000-03-01"), Value::Date(11_017));
        assert_eq!(v(oid::DATE, "0001-01-01 BC"), Value::Date(-719_528)); // year 0 (1 BC) is a leap year
        assert_eq!(v(oid::DATE, "infinity"), Value::Date(DATE_INFINITY));
        assert_eq!(v(oid::DATE, "-infinity"), Value::Date(i32::MIN));
        assert_eq!(v(oid::TIMESTAMP, "infinity"), Value::Timestamp(i64::MAX));
        assert_eq!(v(oid::TIME, "24:00:00"), Value::Time(86_400_000_000));
        assert_eq!(v(oid::TIME, "01:02:03.5"), Value::Time(3_723_500_000));
        assert_eq!(
            v(oid::TIMETZ, "01:02:03-05:30"),
            Value::TimeTz {
                micros: 3_723_000_000,
                offset_secs: -19_800
            }
        );
        assert_eq!(
            v(oid::TIMESTAMP, "2024-02-29 12:00:00.000001"),
            Value::Timestamp(1_709_208_000_000_001)
        );
        assert_eq!(
            v(oid::TIMESTAMPTZ, "2024-02-29 12:00:00+01"),
            Value::TimestampTz(1_709_204_400_000_000)
        );
        assert_eq!(
            v(oid::TIMESTAMPTZ, "0044-03-15 12:00:00+00 BC"),
            Value::TimestampTz(
                (days_from_civil(-43, 3, 15).unwrap() * 86_400 + 12 * 3600) * 1_000_000
            )
        );
        assert_eq!(
            v(oid::TIMESTAMPTZ, "-infinity"),
            Value::TimestampTz(i64::MIN)
        );
        assert_eq!(
            v(1041, "{10.0.0.1/8,NULL}"),
            Value::Array(vec![
                Value::Other {
                    type_name: "inet".into(),
                    text: "10.0.0.1/8".into()
                },
                Value::Null
            ])
        );
    }

    #[test]
    fn intervals() {
        assert_eq!(
            v(oid::INTERVAL, "P1Y2M3DT4H5M6.5S"),
            Value::Interval {
                months: 14,
                days: 3,
                micros: ((4 * 60 + 5) * 60 + 6) * 1_000_000 + 500_000
            }
        );
        assert_eq!(
            v(oid::INTERVAL, "P-1Y-2M3DT-4H-0.000001S"),
            Value::Interval {
                months: -14,
                days: 3,
                micros: -4 * 3_600_000_000 - 1
            }
        );
        // Out of range is kept as text, never an overflow.
        assert!(matches!(
            v(oid::INTERVAL, "P9223372036854775807Y9223372036854775807M"),
            Value::Other { .. }
        ));
        assert_eq!(
            v(oid::INTERVAL, "PT0S"),
            Value::Interval {
                months: 0,
                days: 0,
                micros: 0
            }
        );
    }

    #[test]
    fn arrays() {
        assert_eq!(v(1007, "{}"), Value::Array(vec![]));
        assert_eq!(
            v(1007, "{{1,NULL},{3,4}}"),
            Value::Array(vec![
                Value::Array(vec![Value::Int(1), Value::Null]),
                Value::Array(vec![Value::Int(3), Value::Int(4)]),
            ])
        );
        assert_eq!(
            v(1009, r#"{"a \"b\"","NULL",NULL,"",c}"#),
            Value::Array(vec![
                Value::Text("a \"b\"".into()),
                Value::Text("NULL".into()),
                Value::Null,
                Value::Text(String::new()),
                Value::Text("c".into()),
            ])
        );
        assert!(matches!(v(1007, "[0:1]={1,2}"), Value::Other { .. }));
        assert!(matches!(v(1007, "{1,2"), Value::Other { .. }));
    }

    proptest! {
        #[test]
        fn never_panics(oid in proptest::sample::select(vec![16u32, 17, 20, 23, 25, 26, 114, 700, 701,
            1082, 1083, 1114, 1184, 1186, 1266, 1700, 2950, 1007, 1009, 1231, 1185, 1187]),
            s in "\\PC{0,40}") {
            let _ = from_text(oid, "x", s.as_bytes());
        }

        #[test]
        fn dates_round_trip(days in -2_000_000i64..2_000_000) {
            // civil_from_days, the inverse, written independently.
            let z = days + 719_468;
            let era = z.div_euclid(146_097);
            let doe = z.rem_euclid(146_097);
            let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
            let y = yoe + era * 400;
            let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
            let mp = (5 * doy + 2) / 153;
            let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
            let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
            let y = if m <= 2 { y + 1 } else { y };
            let text = if y <= 0 {
                format!("{:04}-{m:02}-{d:02} BC", 1 - y)
            } else {
                format!("{y:04}-{m:02}-{d:02}")
            };
            prop_assert_eq!(v(oid::DATE, &text), Value::Date(days as i32));
        }
    }
}
