//! The `ferry` binary: parses the command line, sets up logging, runs one command, and turns its
//! outcome into an exit code (0 success, 1 failure, 130 a second signal; clap exits 2 on a
//! command-line usage error). Only this file ends the process.

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use clap::Parser;
use tokio_util::sync::CancellationToken;

use ferry_agent::cli::{BackupCommand, Cli, Command, DdlTriggerCommand, LogCommand};
use ferry_agent::config::Config;
use ferry_agent::{dump, logging, supervisor};

/// mimalloc instead of glibc's malloc, for the whole process (the `override` feature replaces
/// malloc for librdkafka's C code too): the Kafka path allocates and frees a payload, a key and
/// headers per message across threads, where glibc's arenas cost up to a third of the CPU
/// (measured with scripts/bench-kafka-sink).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// How `ferry run` ended after a signal.
enum Stopped {
    Done(ferry_source::error::Result<()>),
    /// A second signal, or the grace period over: exit with this code without waiting.
    Now(u8),
}

/// Exit at once with this code (the message was logged).
#[derive(Debug, thiserror::Error)]
#[error("exiting with code {0}")]
struct ExitNow(u8);

fn main() -> ExitCode {
    let cli = Cli::parse();
    logging::init(cli.log_format);
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.is::<ExitNow>() => {
            ExitCode::from(e.downcast_ref::<ExitNow>().map_or(1, |x| x.0))
        }
        Err(e) => {
            eprintln!("ferry: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Run(args) => run_ferry(Config::load(&args.config.config)?, args.until),
        Command::Check(args) => {
            let config = Config::load(&args.config)?;
            let runtime = runtime()?;
            let report = runtime.block_on(ferry_agent::check::check(&config))?;
            print!("{report}");
            if report.passes() {
                Ok(())
            } else {
                let n = report
                    .findings
                    .iter()
                    .filter(|f| f.level == ferry_agent::check::Level::Error)
                    .count();
                anyhow::bail!("{n} problem(s) to fix before ferry can run")
            }
        }
        Command::Ctl(args) => {
            let config = Config::load(&args.config.config)?;
            let (code, body) = ferry_agent::control::request(&config, &args.command)?;
            print!("{body}");
            if (200..300).contains(&code) {
                Ok(())
            } else {
                anyhow::bail!("the running ferry answered {code}")
            }
        }
        Command::Status(args) => {
            let config = Config::load(&args.config)?;
            let runtime = runtime()?;
            let text = runtime.block_on(ferry_agent::status::status(&config))?;
            print!("{text}");
            Ok(())
        }
        Command::Verify(args) => {
            let config = Config::load(&args.config)?;
            let runtime = runtime()?;
            let mut text = String::new();
            let reports = runtime.block_on(ferry_agent::verify::verify(&config, &mut text))?;
            print!("{text}");
            let differ: Vec<String> = reports
                .iter()
                .filter(|r| r.differing_chunks > 0)
                .map(|r| format!("{} on {}", r.table, r.sink))
                .collect();
            if differ.is_empty() {
                Ok(())
            } else {
                anyhow::bail!("tables differ: {}", differ.join(", "))
            }
        }
        Command::Log {
            command:
                LogCommand::Dump {
                    config,
                    from,
                    follow,
                },
        } => dump_log(&Config::load(&config.config)?, from, follow),
        Command::Restore(args) => {
            let config = Config::load(&args.config.config)?;
            let text = runtime()?.block_on(ferry_agent::backup::restore(
                &config,
                &args.to,
                &args.into,
                &args.tables,
                args.dry_run,
            ))?;
            print!("{text}");
            Ok(())
        }
        Command::Promote(args) => {
            let config = Config::load(&args.config.config)?;
            let (text, ready) = runtime()?.block_on(ferry_agent::promote::promote(
                &config,
                &args.sink,
                args.fence,
                std::time::Duration::from_secs(args.wait),
                args.reverse
                    .as_deref()
                    .map(|r| (args.config.config.as_path(), r)),
            ))?;
            print!("{text}");
            if ready {
                Ok(())
            } else {
                anyhow::bail!("sink {} is not ready to take over", args.sink)
            }
        }
        Command::Backup {
            command: BackupCommand::List(args),
        } => {
            let config = Config::load(&args.config)?;
            print!(
                "{}",
                runtime()?.block_on(ferry_agent::backup::list(&config))?
            );
            Ok(())
        }
        Command::Backup {
            command: BackupCommand::Verify(args),
        } => {
            let config = Config::load(&args.config)?;
            let (text, sound) = runtime()?.block_on(ferry_agent::backup::verify(&config))?;
            print!("{text}");
            if sound {
                Ok(())
            } else {
                anyhow::bail!("the archive has problems")
            }
        }
        Command::Backup {
            command: BackupCommand::Now(args),
        } => {
            let config = Config::load(&args.config)?;
            print!("{}", ferry_agent::backup::now(&config)?);
            Ok(())
        }
        Command::Backup {
            command: BackupCommand::Drill(args),
        } => {
            let config = Config::load(&args.config.config)?;
            let (text, passed) = runtime()?.block_on(ferry_agent::drill::drill(
                &config,
                &args.into,
                std::time::Duration::from_secs(args.wait),
            ))?;
            print!("{text}");
            if passed {
                Ok(())
            } else {
                anyhow::bail!("the drill failed: the restored database is not the source")
            }
        }
        Command::DdlTrigger {
            command: DdlTriggerCommand::Sql,
        } => {
            print!("{}", ferry_source::postgres::ddl::TRIGGER_SQL);
            Ok(())
        }
        Command::DdlTrigger {
            command: DdlTriggerCommand::Install(args),
        } => {
            let config = Config::load(&args.config)?;
            let runtime = runtime()?;
            runtime.block_on(ferry_agent::ddl_trigger::install_for(&config))?;
            println!(
                "ferry's DDL trigger is installed on {}: column and table renames and dropped \
                 tables now reach the replicas exactly",
                config.source.url
            );
            Ok(())
        }
    }
}

/// `ferry run`: until the first SIGTERM/SIGINT, then a clean stop within the grace period;
/// a second signal (exit 130) or the grace running out (exit 1) ends the process at once.
fn run_ferry(config: Config, until: Option<ferry_proto::Lsn>) -> anyhow::Result<()> {
    let grace =
        std::time::Duration::from_secs(u64::from(config.shutdown_grace_seconds.unwrap_or(10)));
    let runtime = runtime()?;
    let outcome = runtime.block_on(async {
        let stop = CancellationToken::new();
        let run = supervisor::run(config, until, stop.clone());
        tokio::pin!(run);
        tokio::select! {
            r = &mut run => return Stopped::Done(r),
            _ = wait_for_signal() => {}
        }
        tracing::info!("shutdown requested; stopping cleanly (signal again to exit now)");
        stop.cancel();
        tokio::select! {
            r = &mut run => Stopped::Done(r),
            _ = wait_for_signal() => {
                tracing::warn!("second signal: exiting at once");
                Stopped::Now(130)
            }
            _ = tokio::time::sleep(grace) => {
                // Whatever was not committed is read again at the next start.
                tracing::error!(grace_secs = grace.as_secs(), "not stopped within the grace period (shutdown_grace_seconds): exiting");
                Stopped::Now(1)
            }
        }
    });
    match outcome {
        Stopped::Done(r) => r?,
        Stopped::Now(code) => {
            // Tasks still running (a hung target) are not waited for.
            runtime.shutdown_timeout(std::time::Duration::from_millis(500));
            return Err(ExitNow(code).into());
        }
    }
    Ok(())
}

/// `ferry log dump`: the spool's events as JSON lines, following new ones until Ctrl-C with
/// `--follow`.
fn dump_log(config: &Config, from: Option<u64>, follow: bool) -> anyhow::Result<()> {
    let stop = Arc::new(AtomicBool::new(false));
    if follow {
        let flag = stop.clone();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build();
            if let Ok(rt) = rt {
                rt.block_on(async {
                    let _ = tokio::signal::ctrl_c().await;
                });
                flag.store(true, Ordering::Relaxed);
            }
        });
    }
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    dump::dump(config.spool.dir(), from, follow, &mut out, || {
        stop.load(Ordering::Relaxed)
    })?;
    Ok(())
}
fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
}

/// SIGTERM or SIGINT.
async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
