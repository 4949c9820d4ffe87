//! Rows the target does not have yet (inserts of new keys, tables without a key), written with
//! `COPY … FROM STDIN` instead of `INSERT … SELECT … FROM unnest(…)`: the server inserts them
//! in bulk with no arrays to unpack, and a COPY stays open across flushes of the same table, so
//! the server inserts one flush while the sink reads and merges the next (one large source
//! transaction streams into one COPY).
//!
//! The binary format is used when every column's target type and every value in it have a
//! binary form written here (integers, floats, booleans, text, dates, timestamps, bytea, uuid,
//! json); otherwise the text format, whose values are the same text input every other statement
//! casts. A [`Conn`] owns the connection and its COPY in progress: every other statement goes
//! through [`Conn::client`], which completes the COPY first, so statements keep their order.

use std::collections::BTreeSet;
use std::pin::Pin;
use std::sync::Mutex;

use bytes::{BufMut, Bytes, BytesMut};
use ferry_proto::{RelationId, Row, Value};
use futures_util::SinkExt;
use tokio_postgres::{Client, CopyInSink};

use super::encode::push_text;
use super::wire::{pg_days, pg_micros};
use crate::error::{Result, SinkError};

/// Fewer new rows than this go in one `INSERT` (one round trip less than a COPY).
pub const COPY_MIN_ROWS: usize = 100;

/// The binary COPY header: signature, flags, header extension length.
const BINARY_HEADER: &[u8] = b"PGCOPY\n\xff\r\n\0\0\0\0\0\0\0\0\0";
/// The binary COPY trailer: a tuple of -1 fields.
const BINARY_TRAILER: &[u8] = &[0xff, 0xff];

/// Tables (sink, quoted table) whose COPY the target refused to start (a privilege, a policy):
/// they take INSERTs for the rest of the process. Kept beyond one connection, since a refused
/// COPY leaves its connection out of step (tokio-postgres then reads one response too many), so
/// the sink must reconnect to go on.
static REFUSED: Mutex<BTreeSet<(String, String)>> = Mutex::new(BTreeSet::new());

/// A target connection and the COPY it has in progress, if any.
pub struct Conn {
    client: Client,
    copy: Option<OpenCopy>,
    sink: String,
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn")
            .field("copying", &self.copy.as_ref().map(|c| (c.table, c.binary)))
            .finish_non_exhaustive()
    }
}

struct OpenCopy {
    table: RelationId,
    binary: bool,
    sink: Pin<Box<CopyInSink<Bytes>>>,
}

impl Conn {
    /// The connection of sink `sink`.
    pub fn new(client: Client, sink: &str) -> Conn {
        Conn {
            client,
            copy: None,
            sink: sink.to_owned(),
        }
    }

    /// Whether new rows of `table` may go in with COPY (the target has not refused it).
    pub fn may_copy(&self, table: &str) -> bool {
        !REFUSED
            .lock()
            .is_ok_and(|r| r.iter().any(|(s, t)| *s == self.sink && t == table))
    }

    /// The client, once the COPY in progress (if any) is complete: the next statement runs after
    /// its rows.
    pub async fn client(&mut self) -> Result<&Client> {
        if let Some(mut copy) = self.copy.take() {
            if copy.binary {
                copy.sink.send(Bytes::from_static(BINARY_TRAILER)).await?;
            }
            copy.sink.as_mut().finish().await?;
        }
        Ok(&self.client)
    }

    /// Abandons the COPY in progress (the client sends CopyFail): before a rollback, whose
    /// transaction it belongs to.
    pub fn abort(&mut self) {
        self.copy = None;
    }

    /// Writes `rows` (whole rows of every column, in `copy`'s column order) into `table` with a
    /// COPY, continuing the one in progress when it is for the same table and format.
    pub async fn copy_rows(
        &mut self,
        table: RelationId,
        copy: &CopyInto<'_>,
        rows: &[&Row],
    ) -> Result<()> {
        let text_column = copy.text_column(rows);
        let binary = text_column.is_none();
        let same = self
            .copy
            .as_ref()
            .is_some_and(|c| c.table == table && c.binary == binary);
        if !same {
            let sql = copy.statement(binary);
            tracing::debug!(%sql, rows = rows.len(), ?text_column, "starting a COPY");
            let client = self.client().await?;
            let sink = match client.copy_in::<_, Bytes>(&sql).await {
                Ok(sink) => Box::pin(sink),
                Err(e) => return Err(self.refused(copy.table, e)),
            };
            self.copy = Some(OpenCopy {
                table,
                binary,
                sink,
            });
        }
        let mut out = BytesMut::new();
        if !same && binary {
            out.put_slice(BINARY_HEADER);
        }
        let mut text = String::new();
        for row in rows {
            if binary {
                copy.binary_row(row, &mut out)?;
            } else {
                text_row(row, &mut out, &mut text)?;
            }
        }
        let Some(open) = self.copy.as_mut() else {
            return Err(SinkError::Fatal("a COPY vanished while writing it".into()));
        };
        open.sink.send(out.freeze()).await?;
        Ok(())
    }
}

impl Conn {
    /// The error for a COPY that did not start. A transient one (connection lost, lock timeout)
    /// is retried as it is; a permanent one (no privilege, a row-level security policy) makes
    /// the table take INSERTs from now on, where the same cause, if it remains, follows
    /// `on_error`. Either way the session reconnects: this connection is out of step.
    fn refused(&mut self, table: &str, e: tokio_postgres::Error) -> SinkError {
        let e = SinkError::from(e);
        if e.is_transient() {
            return e;
        }
        tracing::warn!(
            sink = %self.sink, %table, error = %e,
            "the target refused a COPY; new rows of this table go in with INSERT from now on"
        );
        if let Ok(mut r) = REFUSED.lock() {
            r.insert((self.sink.clone(), table.to_owned()));
        }
        SinkError::io(
            format!("COPY into {table} refused"),
            std::io::Error::other(e.to_string()),
        )
    }
}

/// What a COPY into one table needs: its statement's parts and its columns' binary forms.
#[derive(Debug)]
pub struct CopyInto<'a> {
    /// The quoted table name.
    pub table: &'a str,
    /// The quoted column list.
    pub columns: String,
    /// The binary form of each column's target type, if it has one here.
    pub kinds: Vec<Option<Binary>>,
}

impl CopyInto<'_> {
    fn statement(&self, binary: bool) -> String {
        format!(
            "COPY {} ({}) FROM STDIN{}",
            self.table,
            self.columns,
            if binary { " (FORMAT binary)" } else { "" }
        )
    }

    /// The first column of `rows` that needs the text format (`None`: every value has the
    /// binary form of its column's type).
    fn text_column(&self, rows: &[&Row]) -> Option<usize> {
        self.kinds.iter().enumerate().position(|(i, kind)| {
            !kind.is_some_and(|k| rows.iter().all(|r| r.get(i).is_some_and(|v| k.fits(v))))
        })
    }

    fn binary_row(&self, row: &Row, out: &mut BytesMut) -> Result<()> {
        let n = i16::try_from(row.len())
            .map_err(|_| SinkError::Value(format!("a row of {} columns", row.len())))?;
        out.put_i16(n);
        for (v, kind) in row.iter().zip(&self.kinds) {
            let kind =
                kind.ok_or_else(|| SinkError::Fatal("a column without a binary form".into()))?;
            kind.write(v, out)?;
        }
        Ok(())
    }
}

/// A target column type whose binary form ferry writes for COPY.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Binary {
    Int8,
    Int4,
    Int2,
    Float8,
    Float4,
    Bool,
    Text,
    Date,
    Timestamp,
    TimestampTz,
    Bytea,
    Uuid,
    Json,
    Jsonb,
}

impl Binary {
    /// The binary form of a target column type, as `format_type` names it.
    pub fn of(type_name: &str) -> Option<Binary> {
        let t = type_name;
        Some(match t {
            "bigint" => Binary::Int8,
            "integer" => Binary::Int4,
            "smallint" => Binary::Int2,
            "double precision" => Binary::Float8,
            "real" => Binary::Float4,
            "boolean" => Binary::Bool,
            "text" => Binary::Text,
            "date" => Binary::Date,
            "bytea" => Binary::Bytea,
            "uuid" => Binary::Uuid,
            "json" => Binary::Json,
            "jsonb" => Binary::Jsonb,
            // varchar(n) and char(n) receive their text as their input function does (length
            // checked, char padded).
            "character varying" | "character" => Binary::Text,
            "timestamp without time zone" => Binary::Timestamp,
            "timestamp with time zone" => Binary::TimestampTz,
            // The same with a type modifier: varchar(10), timestamp(3) with time zone.
            _ => match t.split_once('(').and_then(|(base, rest)| {
                let (digits, suffix) = rest.split_once(')')?;
                digits
                    .bytes()
                    .all(|b| b.is_ascii_digit())
                    .then_some((base, suffix))
            }) {
                Some(("character varying" | "character", "")) => Binary::Text,
                Some(("timestamp", " without time zone")) => Binary::Timestamp,
                Some(("timestamp", " with time zone")) => Binary::TimestampTz,
                _ => return None,
            },
        })
    }

    /// Whether `v` has this binary form exactly (otherwise the text format carries it, and the
    /// server converts or rejects it as it would the text).
    fn fits(self, v: &Value) -> bool {
        match (self, v) {
            (_, Value::Null) => true,
            (Binary::Int8, Value::Int(_)) => true,
            (Binary::Int4, Value::Int(i)) => i32::try_from(*i).is_ok(),
            (Binary::Int2, Value::Int(i)) => i16::try_from(*i).is_ok(),
            (Binary::Float8, Value::Float(_)) => true,
            // A real arrives as its shortest text read into an f64 (0.1 for 0.1f32): binary
            // when that text is the nearest f32's own, so the server reads the same f32 either way.
            (Binary::Float4, Value::Float(f)) => {
                let x = *f as f32;
                f.is_nan() || f64::from(x) == *f || shortest_text_is(x, *f)
            }
            (Binary::Bool, Value::Bool(_)) => true,
            (Binary::Text, Value::Text(s)) => !s.contains('\0'),
            (Binary::Date, Value::Date(_)) => true,
            (Binary::Timestamp, Value::Timestamp(_)) => true,
            (Binary::TimestampTz, Value::TimestampTz(_)) => true,
            (Binary::Bytea, Value::Bytes(_)) => true,
            (Binary::Uuid, Value::Uuid(_)) => true,
            (Binary::Json | Binary::Jsonb, Value::Json(s)) => !s.contains('\0'),
            _ => false,
        }
    }
}

/// Whether `x`'s shortest text (as PostgreSQL prints a real) reads as `f`, written on the stack:
/// this runs once per value of a real column.
fn shortest_text_is(x: f32, f: f64) -> bool {
    use std::io::Write as _;
    let mut buf = [0u8; 48];
    let mut w = &mut buf[..];
    if write!(w, "{x:?}").is_err() {
        return false;
    }
    let len = 48 - w.len();
    std::str::from_utf8(&buf[..len])
        .ok()
        .and_then(|t| t.parse::<f64>().ok())
        == Some(f)
}

impl Binary {
    /// `v` as one field in this binary form: its length and bytes, or -1 for NULL. `v` is one
    /// [`Binary::fits`] accepted.
    fn write(self, v: &Value, out: &mut BytesMut) -> Result<()> {
        let field = |out: &mut BytesMut, bytes: &[u8]| -> Result<()> {
            let len = i32::try_from(bytes.len())
                .map_err(|_| SinkError::Value(format!("a value of {} bytes", bytes.len())))?;
            out.put_i32(len);
            out.put_slice(bytes);
            Ok(())
        };
        match (self, v) {
            (_, Value::Null) => out.put_i32(-1),
            (Binary::Int8, Value::Int(i)) => field(out, &i.to_be_bytes())?,
            (Binary::Int4, Value::Int(i)) => field(out, &(*i as i32).to_be_bytes())?,
            (Binary::Int2, Value::Int(i)) => field(out, &(*i as i16).to_be_bytes())?,
            (Binary::Float8, Value::Float(f)) => field(out, &f.to_be_bytes())?,
            (Binary::Float4, Value::Float(f)) => field(out, &(*f as f32).to_be_bytes())?,
            (Binary::Bool, Value::Bool(b)) => field(out, &[u8::from(*b)])?,
            (Binary::Text | Binary::Json, Value::Text(s) | Value::Json(s)) => {
                field(out, s.as_bytes())?
            }
            (Binary::Jsonb, Value::Json(s)) => {
                // jsonb's binary form is a version byte, 1, and the text.
                let len = i32::try_from(s.len() + 1)
                    .map_err(|_| SinkError::Value(format!("a value of {} bytes", s.len())))?;
                out.put_i32(len);
                out.put_u8(1);
                out.put_slice(s.as_bytes());
            }
            (Binary::Date, Value::Date(d)) => field(out, &pg_days(*d).to_be_bytes())?,
            (Binary::Timestamp, Value::Timestamp(us))
            | (Binary::TimestampTz, Value::TimestampTz(us)) => {
                field(out, &pg_micros(*us).to_be_bytes())?
            }
            (Binary::Bytea, Value::Bytes(b)) => field(out, b)?,
            (Binary::Uuid, Value::Uuid(u)) => field(out, u)?,
            (kind, v) => {
                return Err(SinkError::Fatal(format!(
                    "no binary COPY form {kind:?} for {v:?}"
                )));
            }
        }
        Ok(())
    }
}

/// One row in text COPY form: each value's text input, escaped, `\N` for NULL.
/// `text` is a buffer the caller reuses across rows, so no value allocates its own.
fn text_row(row: &Row, out: &mut BytesMut, text: &mut String) -> Result<()> {
    for (i, v) in row.iter().enumerate() {
        if i > 0 {
            out.put_u8(b'\t');
        }
        text.clear();
        if !push_text(v, text)? {
            out.put_slice(b"\\N");
            continue;
        }
        for b in text.bytes() {
            match b {
                b'\\' => out.put_slice(b"\\\\"),
                b'\n' => out.put_slice(b"\\n"),
                b'\r' => out.put_slice(b"\\r"),
                b'\t' => out.put_slice(b"\\t"),
                b => out.put_u8(b),
            }
        }
    }
    out.put_u8(b'\n');
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::postgres::encode::to_text;
    use proptest::prelude::*;

    /// COPY's text format read back: fields split on tabs, `\N` as NULL, escapes undone.
    fn read_text_row(line: &[u8]) -> Vec<Option<String>> {
        let line = line.strip_suffix(b"\n").expect("a row ends with a newline");
        line.split(|&b| b == b'\t')
            .map(|field| {
                if field == b"\\N" {
                    return None;
                }
                let mut out = Vec::new();
                let mut it = field.iter();
                while let Some(&b) = it.next() {
                    if b == b'\\' {
                        out.push(match it.next() {
                            Some(b'n') => b'\n',
                            Some(b'r') => b'\r',
                            Some(b't') => b'\t',
                            Some(b'\\') => b'\\',
                            other => panic!("unexpected escape {other:?}"),
                        });
                    } else {
                        out.push(b);
                    }
                }
                Some(String::from_utf8(out).unwrap())
            })
            .collect()
    }

    #[test]
    fn target_types_map_to_their_binary_forms() {
        assert_eq!(Binary::of("bigint"), Some(Binary::Int8));
        assert_eq!(Binary::of("character varying(10)"), Some(Binary::Text));
        assert_eq!(Binary::of("character(3)"), Some(Binary::Text));
        assert_eq!(Binary::of("character varying[]"), None);
        assert_eq!(
            Binary::of("timestamp(3) without time zone"),
            Some(Binary::Timestamp)
        );
        assert_eq!(
            Binary::of("timestamp with time zone"),
            Some(Binary::TimestampTz)
        );
        assert_eq!(Binary::of("numeric(12,2)"), None);
        assert_eq!(Binary::of("character(3)[]"), None);
        assert_eq!(Binary::of("character_set"), None);
        assert_eq!(Binary::of("timestamp(6)"), None);
        assert_eq!(Binary::of("character varying(x)"), None);
        assert_eq!(Binary::of("integer[]"), None);
    }

    #[test]
    fn values_fit_a_binary_form_only_exactly() {
        assert!(Binary::Int4.fits(&Value::Int(i64::from(i32::MIN))));
        assert!(!Binary::Int4.fits(&Value::Int(i64::from(i32::MAX) + 1)));
        assert!(!Binary::Int2.fits(&Value::Int(40_000)));
        assert!(Binary::Float4.fits(&Value::Float(0.5)));
        assert!(Binary::Float4.fits(&Value::Float(0.1)));
        assert!(Binary::Float4.fits(&Value::Float(0.333_333_34)));
        assert!(!Binary::Float4.fits(&Value::Float(0.1 + 1e-12)));
        assert!(!Binary::Float4.fits(&Value::Float(1e300)));
        assert!(Binary::Float4.fits(&Value::Float(f64::NAN)));
        // A timestamp without zone is not an instant: it goes as text, as it would otherwise.
        assert!(!Binary::TimestampTz.fits(&Value::Timestamp(0)));
        assert!(!Binary::Int8.fits(&Value::Text("1".into())));
        assert!(!Binary::Text.fits(&Value::Text("a\0b".into())));
        assert!(Binary::Uuid.fits(&Value::Null));
    }

    #[test]
    fn binary_fields_are_the_types_wire_forms() {
        let field = |kind: Binary, v: Value| {
            let mut out = BytesMut::new();
            kind.write(&v, &mut out).unwrap();
            out.to_vec()
        };
        assert_eq!(
            field(Binary::Int2, Value::Int(-2)),
            [0, 0, 0, 2, 0xff, 0xfe]
        );
        assert_eq!(field(Binary::Int4, Value::Int(1)), [0, 0, 0, 4, 0, 0, 0, 1]);
        assert_eq!(field(Binary::Bool, Value::Bool(true)), [0, 0, 0, 1, 1]);
        assert_eq!(field(Binary::Text, Value::Null), [0xff; 4]);
        assert_eq!(
            field(Binary::Jsonb, Value::Json("[]".into())),
            [0, 0, 0, 3, 1, b'[', b']']
        );
        assert_eq!(
            field(Binary::Float4, Value::Float(1.5)),
            [0, 0, 0, 4, 0x3f, 0xc0, 0, 0]
        );
        // 2000-01-02 is day 1 of PostgreSQL's epoch; infinity stays i32::MAX.
        assert_eq!(
            field(Binary::Date, Value::Date(10_958)),
            [0, 0, 0, 4, 0, 0, 0, 1]
        );
        assert_eq!(
            field(Binary::Date, Value::Date(i32::MAX))[4..],
            i32::MAX.to_be_bytes()
        );
        let kinds = vec![Some(Binary::Int8), Some(Binary::Text)];
        let copy = CopyInto {
            table: "t",
            columns: "a, b".into(),
            kinds,
        };
        let row = vec![Value::Int(7), Value::Text("é".into())];
        assert_eq!(copy.text_column(&[&row]), None);
        assert_eq!(
            copy.text_column(&[&vec![Value::Int(7), Value::Int(8)]]),
            Some(1)
        );
        let mut out = BytesMut::new();
        copy.binary_row(&row, &mut out).unwrap();
        assert_eq!(
            out.to_vec(),
            [
                0, 2, 0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0, 7, 0, 0, 0, 2, 0xc3, 0xa9
            ]
        );
        assert_eq!(
            copy.statement(true),
            "COPY t (a, b) FROM STDIN (FORMAT binary)"
        );
    }

    proptest! {
        /// A row in COPY's text format reads back as each value's text input, NULLs included,
        /// whatever tabs, newlines and backslashes the values hold.
        #[test]
        fn text_rows_read_back_as_the_values_text(
            cells in proptest::collection::vec(
                proptest::option::of(proptest::string::string_regex("[a-z\\\\\t\n\r é\"{},N]{0,12}").unwrap()),
                1..6,
            ),
            ints in proptest::collection::vec(any::<i64>(), 1..3),
        ) {
            let mut row: Row = cells
                .iter()
                .map(|c| c.clone().map_or(Value::Null, Value::Text))
                .collect();
            row.extend(ints.iter().map(|&i| Value::Int(i)));
            let mut out = BytesMut::new();
            text_row(&row, &mut out, &mut String::new()).unwrap();
            let want: Vec<Option<String>> = row.iter().map(|v| to_text(v).unwrap()).collect();
            prop_assert_eq!(read_text_row(&out), want);
        }
    }
}
