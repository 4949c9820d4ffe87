//! The command line: `ferry run|check|status|verify|log dump --config FILE`.

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
    /// ferry's DDL trigger on a PostgreSQL source, which carries column and table renames and
    /// dropped tables into the stream exactly.
    DdlTrigger {
        #[command(subcommand)]
        command: DdlTriggerCommand,
    },
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
