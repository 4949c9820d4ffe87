//! ferry's end-to-end tests: one test binary, a module per area, each test starting the real
//! servers it needs through the harness (`tests/src`) and running the real `ferry` binary.
//! Run one area with `cargo test -p ferry-tests --test e2e <module>::`.

mod archive;
mod base_backup;
mod check;
mod exactly_once;
mod examples;
mod failover;
mod failures;
mod faithful_tables;
mod http;
mod kafka_sink;
mod keyless;
mod lag;
mod mariadb_compressed;
mod mysql_sink;
mod mysql_source;
mod pg_sink;
mod pg_source;
mod pg_tls;
mod pg_versions;
mod promote;
mod retention;
mod schema_changes;
mod sequences;
mod shutdown;
mod slot_safety;
mod smoke;
mod source_failure;
mod spool_damage;
