//! The command line: `ferry run|check|status|verify|restore|backup|log dump|ctl|ddl-trigger`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(
    name = "ferry",
    version,
    about = "Change-data-capture replication agent"
)]
pub struct Cli {
    /// Log format: `auto` is human-readable (coloured on a terminal); `json` is one object a line.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Auto)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Auto,
    Human,
    Json,
}

#[derive(Debug, Args)]
pub struct ConfigArg {
    /// The configuration file (TOML).
    #[arg(long, short, env = "FERRY_CONFIG")]
    pub config: PathBuf,
}

#[derive(Debug, Args)]
pub struct CtlArgs {
    /// The command: `stop`.
    #[arg(value_parser = ["stop"])]
    pub command: String,
    #[command(flatten)]
    pub config: ConfigArg,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    /// Stop cleanly once every transaction the source committed at or before this position (a
    /// PostgreSQL LSN such as `0/16B3748`: a commit record ending at or before it, so
    /// `pg_current_wal_lsn()` covers everything committed so far) is spooled and applied, like
    /// `pg_recvlogical --endpos`.
    #[arg(long, value_name = "LSN", value_parser = |s: &str| s.parse::<ferry_proto::Lsn>())]
    pub until: Option<ferry_proto::Lsn>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Replicate until SIGTERM or SIGINT, then stop cleanly.
    Run(RunArgs),
    /// Check every prerequisite of the source and sinks; exit non-zero on any failure.
    Check(ConfigArg),
    /// Show positions and lag per sink.
    Status(ConfigArg),
    /// Compare the source with every database sink, table by table.
    Verify(ConfigArg),
    /// Inspect the spool.
    Log {
        #[command(subcommand)]
        command: LogCommand,
    },
    /// Ask the running ferry of this configuration to do something, over its `[http]` control
    /// route (needs `[http] token`): `stop` stops it cleanly.
    Ctl(CtlArgs),
    /// Rebuild an empty database from the archive, as the source was at a time or position.
    Restore(RestoreArgs),
    /// Make a database sink ready to take over: with `--fence`, stop writes on the source and
    /// wait until the sink has everything; then sync its counters, verify it, and report.
    Promote(PromoteArgs),
    /// The archive: what it can restore, and whether every object in it is sound.
    Backup {
        #[command(subcommand)]
        command: BackupCommand,
    },
    /// ferry's DDL trigger on a PostgreSQL source, which carries column and table renames and
    /// dropped tables into the stream exactly.
    DdlTrigger {
        #[command(subcommand)]
        command: DdlTriggerCommand,
    },
}

#[derive(Debug, Args)]
pub struct RestoreArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    /// `latest`, a time (`2026-12-03T14:05:00Z`, `2026-12-03 14:05:00.5+01:00`: the restore
    /// stops before the first transaction committed after it), or a source position
    /// (`pg:0/16B3748`, `binlog:mysql-bin.000003:1234`).
    #[arg(long)]
    pub to: String,
    /// The empty PostgreSQL or MySQL/MariaDB database to rebuild (`postgres://…`, `mysql://…`).
    #[arg(long)]
    pub into: String,
    /// Only these tables (`schema.table`, comma-separated); default: every archived table.
    #[arg(long, value_delimiter = ',')]
    pub tables: Vec<String>,
    /// List the objects the restore would read, and stop.
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(Debug, Args)]
pub struct PromoteArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    /// The database sink to promote.
    #[arg(long)]
    pub sink: String,
    /// A planned switchover: stop writes on the source first (ending the sessions that could
    /// still write), and wait until the sink has applied the source's final position. Without
    /// it, an unplanned failover from what the sink has applied.
    #[arg(long)]
    pub fence: bool,
    /// How long to wait for the sink to catch up, in seconds.
    #[arg(long, default_value_t = 300)]
    pub wait: u64,
    /// Once the sink is ready, write to this file a configuration that replicates it back into
    /// the old primary (for fallback): its slot is created on the sink now.
    #[arg(long, value_name = "FILE")]
    pub reverse: Option<std::path::PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum BackupCommand {
    /// The archive's objects and the span of time a restore can reach.
    List(ConfigArg),
    /// Read every object: present, checksum, decryption, frames, the chain unbroken.
    Verify(ConfigArg),
    /// Ask the running ferry (over its control route: needs `[http] token`) for a base backup
    /// now, and wait until it is stored.
    Now(ConfigArg),
    /// Prove the backups: restore to a position fixed on the source into a scratch database and
    /// compare every table with the source as of that position.
    Drill(DrillArgs),
}

#[derive(Debug, Args)]
pub struct DrillArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    /// The empty scratch database to restore into, of the source's engine (`postgres://…` or
    /// `mysql://…`).
    #[arg(long)]
    pub into: String,
    /// How long to wait for the archive to hold the drill's position, in seconds.
    #[arg(long, default_value_t = 300)]
    pub wait: u64,
}

#[derive(Debug, Subcommand)]
pub enum DdlTriggerCommand {
    /// Install (or update) it on the source, as the source URL's user, who must be a superuser.
    Install(ConfigArg),
    /// Print its SQL, for a superuser to run.
    Sql,
}

#[derive(Debug, Subcommand)]
pub enum LogCommand {
    /// Print the spool's events as JSON lines: {"offset":N,"event":{...}}.
    Dump {
        #[command(flatten)]
        config: ConfigArg,
        /// Start at this spool offset (default: the oldest retained event).
        #[arg(long)]
        from: Option<u64>,
        /// Keep printing events as they are written, until interrupted.
        #[arg(long)]
        follow: bool,
    },
}
