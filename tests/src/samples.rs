//! SQL shared by the end-to-end tests: a table with a column of every type ferry normalizes, and
//! rows of extreme values for it.

pub const TYPES_DDL: &str = "
    CREATE TYPE mood AS ENUM ('sad', 'happy');
    CREATE DOMAIN posint AS integer CHECK (VALUE > 0);
    CREATE TABLE types (
        id int PRIMARY KEY, b bool, i2 int2, i4 int4, i8 int8, f4 float4, f8 float8,
        n numeric, n2 numeric(12,2), t text, vc varchar(10), c char(3), by bytea, d date,
        tm time, ttz timetz, ts timestamp, tstz timestamptz, iv interval, u uuid, j json,
        jb jsonb, ai int4[], at text[], an numeric[], ip inet, cid cidr, mac macaddr, m mood,
        pi posint, pt point, tsa timestamptz[]);";

/// Three rows (extremes, NULLs, other extremes) inserted with ids `base+1..=base+3`.
pub fn types_insert(base: i32) -> String {
    format!(
        "INSERT INTO types VALUES
        ({}, true, -32768, -2147483648, -9223372036854775808, 'NaN', '-Infinity', 'NaN', 123.45,
         E'h\u{e9}llo \u{2603} \"q\" \\t\\n', 'abc', 'ab', '\\x00ff', '0001-01-01', '24:00:00',
         '23:59:59.999999+14', '2000-01-01 00:00:00.000001', 'infinity',
         '1 year 2 mons -3 days 04:05:06.789', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11',
         '{{\"a\": [1, 2]}}', '{{\"b\": 1, \"a\": null}}', '{{}}', '{{\"x y\",NULL,\"\"}}', '{{NaN,1.5}}',
         '192.168.0.1/24', '10.0.0.0/8', '08:00:2b:01:02:03', 'happy', 42, '(1,2)',
         '{{\"2024-02-29 12:00:00+01\",infinity}}'),
        ({}, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
         NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
         NULL, NULL),
        ({}, false, 32767, 2147483647, 9223372036854775807, 'Infinity', 1.5e300, '-Infinity',
         -0.01, '', 'x', 'xyz', '\\x', 'infinity', '00:00:00', '00:00:00-05:30',
         '0044-03-15 12:00:00 BC', '-infinity', '-0.000001 seconds', '00000000-0000-0000-0000-000000000000',
         '[]', '[]', '{{{{1,2}},{{3,NULL}}}}', '{{}}', '{{-Infinity}}', '::1', '::/0', 'ff:ff:ff:ff:ff:ff',
         'sad', 2147483647, '(-1.5,0)', '{{}}')",
        base + 1,
        base + 2,
        base + 3
    )
}
