//! Column types across engines, for `create_tables` and added columns: a relation carries its
//! source's type names (PostgreSQL's `format_type` spelling, or MySQL's `COLUMN_TYPE`), and a
//! target of the other engine needs its own. Names the target already understands pass through.
//! The README's type mapping table is this module's contract.

fn base(t: &str) -> (&str, Option<&str>, bool) {
    let t = t.trim();
    let unsigned = t.contains(" unsigned");
    let t = t
        .trim_end_matches(" zerofill")
        .trim_end_matches(" unsigned");
    match t.find('(') {
        Some(i) => {
            let args = t[i + 1..].split(')').next();
            (&t[..i], args, unsigned)
        }
        None => (t, None, unsigned),
    }
}

/// A PostgreSQL type for a column whose source type is `t`.
pub fn to_postgres(t: &str) -> String {
    let lower = t.to_ascii_lowercase();
    if lower.contains("time zone") {
        return t.to_owned();
    }
    let (name, args, unsigned) = base(&lower);
    let with = |n: &str| match args {
        Some(a) => format!("{n}({a})"),
        None => n.to_owned(),
    };
    match name {
        "tinyint" if args == Some("1") => "boolean".into(),
        "tinyint" | "smallint" if !unsigned => "smallint".into(),
        "tinyint" | "smallint" | "mediumint" | "int" | "integer" if !unsigned => "integer".into(),
        "tinyint" | "smallint" | "mediumint" => "integer".into(),
        "int" | "integer" => "bigint".into(),
        "bigint" if unsigned => "numeric(20)".into(),
        "bigint" => "bigint".into(),
        "decimal" => with("numeric"),
        "float" => "real".into(),
        "double" => "double precision".into(),
        "bit" => with("bit"),
        "char" => with("character"),
        "varchar" => with("character varying"),
        "tinytext" | "mediumtext" | "longtext" | "enum" | "set" => "text".into(),
        "binary" | "varbinary" | "tinyblob" | "blob" | "mediumblob" | "longblob" | "geometry"
        | "point" | "linestring" | "polygon" | "multipoint" | "multilinestring"
        | "multipolygon" | "geometrycollection" => "bytea".into(),
        "datetime" => with("timestamp"),
        // MySQL's timestamp is an instant; PostgreSQL's own spelling is
        // "timestamp without time zone", so a bare "timestamp" comes from MySQL.
        "timestamp" => match args {
            Some(a) => format!("timestamp({a}) with time zone"),
            None => "timestamp with time zone".into(),
        },
        // MySQL's time may be negative or beyond 24 hours.
        "time" => "interval".into(),
        "year" => "smallint".into(),
        "json" => "jsonb".into(),
        _ => t.to_owned(),
    }
}

/// A MySQL/MariaDB type for a column whose source type is `t`.
pub fn to_mysql(t: &str) -> String {
    let lower = t.to_ascii_lowercase();
    if lower.ends_with("[]") {
        return "json".into();
    }
    if lower.contains("time zone") {
        return if lower.starts_with("timestamp") {
            "datetime(6)".into()
        } else if lower.contains("without") {
            "time(6)".into()
        } else {
            "varchar(32)".into()
        };
    }
    let (name, args, _) = base(&lower);
    let with = |n: &str| match args {
        Some(a) => format!("{n}({a})"),
        None => n.to_owned(),
    };
    match name {
        "boolean" => "tinyint(1)".into(),
        "numeric" => match args {
            Some(a) => format!("decimal({a})"),
            None => "decimal(65,30)".into(),
        },
        "real" => "float".into(),
        "double precision" => "double".into(),
        "character varying" => match args {
            Some(a) => format!("varchar({a})"),
            None => "longtext".into(),
        },
        "character" => with("char"),
        "text" | "name" | "citext" => "longtext".into(),
        "bytea" => "longblob".into(),
        // An interval has no MySQL type; its values follow on_error (see the encoder).
        "interval" => "varchar(64)".into(),
        "uuid" => "char(36)".into(),
        "jsonb" | "json" => "json".into(),
        "inet" | "cidr" | "macaddr" | "macaddr8" => "varchar(64)".into(),
        "money" => "decimal(19,2)".into(),
        "oid" => "bigint unsigned".into(),
        "smallint" | "integer" | "int" | "bigint" | "date" | "float" | "double" | "decimal"
        | "varchar" | "char" | "tinyint" | "mediumint" | "datetime" | "timestamp" | "time"
        | "year" | "bit" | "enum" | "set" | "blob" | "tinyblob" | "mediumblob" | "longblob"
        | "tinytext" | "mediumtext" | "longtext" | "binary" | "varbinary" | "geometry" => {
            t.to_owned()
        }
        // User-defined enums and anything else: their text.
        _ => "longtext".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mysql_to_postgres() {
        assert_eq!(to_postgres("int(11)"), "integer");
        assert_eq!(to_postgres("int(10) unsigned"), "bigint");
        assert_eq!(to_postgres("bigint(20) unsigned"), "numeric(20)");
        assert_eq!(to_postgres("tinyint(1)"), "boolean");
        assert_eq!(to_postgres("decimal(12,2)"), "numeric(12,2)");
        assert_eq!(to_postgres("varchar(40)"), "character varying(40)");
        assert_eq!(to_postgres("datetime(6)"), "timestamp(6)");
        assert_eq!(to_postgres("timestamp(3)"), "timestamp(3) with time zone");
        assert_eq!(to_postgres("enum('a','b')"), "text");
        assert_eq!(to_postgres("longblob"), "bytea");
        // PostgreSQL's own names pass through.
        assert_eq!(
            to_postgres("character varying(40)"),
            "character varying(40)"
        );
        assert_eq!(
            to_postgres("timestamp with time zone"),
            "timestamp with time zone"
        );
        assert_eq!(to_postgres("numeric(12,2)"), "numeric(12,2)");
        assert_eq!(
            to_postgres("timestamp(3) without time zone"),
            "timestamp(3) without time zone"
        );
        assert_eq!(
            to_postgres("time without time zone"),
            "time without time zone"
        );
    }

    #[test]
    fn postgres_to_mysql() {
        assert_eq!(to_mysql("integer"), "integer");
        assert_eq!(to_mysql("numeric(12,2)"), "decimal(12,2)");
        assert_eq!(to_mysql("character varying(40)"), "varchar(40)");
        assert_eq!(to_mysql("timestamp with time zone"), "datetime(6)");
        assert_eq!(to_mysql("timestamp(3) without time zone"), "datetime(6)");
        assert_eq!(to_mysql("text"), "longtext");
        assert_eq!(to_mysql("bytea"), "longblob");
        assert_eq!(to_mysql("uuid"), "char(36)");
        assert_eq!(to_mysql("integer[]"), "json");
        assert_eq!(to_mysql("boolean"), "tinyint(1)");
        assert_eq!(to_mysql("time(3) without time zone"), "time(6)");
        // MySQL's own names pass through.
        assert_eq!(to_mysql("int(11)"), "int(11)");
        assert_eq!(to_mysql("enum('a','b')"), "enum('a','b')");
    }
}
