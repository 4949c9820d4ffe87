//! The `ferry` binary under test: its path, configuration files, and a running `ferry run`
//! process that a test can stop cleanly, kill, and restart.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::Result;
use crate::process::{self, ServerProcess};

/// The `ferry` binary of this build (`target/<profile>/ferry`, built by `cargo test --workspace`).
pub fn bin() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("FERRY_BIN") {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    // target/<profile>/deps/<test binary>
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .ok_or("cannot locate the target directory")?;
    let bin = dir.join("ferry");
    if !bin.is_file() {
        return Err(format!(
            "{} not found: run `cargo build -p ferry-agent` or `cargo test --workspace`",
            bin.display()
        ));
    }
    Ok(bin)
}

/// Runs `ferry <args>` to completion: (exit code, stdout, stderr).
pub fn command(args: &[&str]) -> Result<(i32, String, String)> {
    let out = Command::new(bin()?)
        .args(args)
        .env("FERRY_LOG", "ferry=info")
        .output()
        .map_err(|e| e.to_string())?;
    Ok((
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

/// A configuration file in a temporary directory, with a spool directory beside it.
#[derive(Debug)]
pub struct FerryConfig {
    dir: tempfile::TempDir,
}

impl FerryConfig {
    /// A Postgres source capturing into the spool; `extra_source` lines go into `[source]`.
    pub fn postgres(url: &str, extra_source: &str) -> Result<FerryConfig> {
        let dir = tempfile::Builder::new()
            .prefix("ferry-run-")
            .tempdir()
            .map_err(|e| e.to_string())?;
        let text = format!(
            "[source]\ntype = \"postgres\"\nurl = \"{url}\"\n{extra_source}\n\n[spool]\ndir = \"{}\"\nack = \"spooled\"\n",
            dir.path().join("spool").display()
        );
        std::fs::write(dir.path().join("ferry.toml"), text).map_err(|e| e.to_string())?;
        Ok(FerryConfig { dir })
    }

    /// A MySQL/MariaDB source registering as replica `server_id`; `extra` lines go into
    /// `[source]`, `sinks` (whole `[[sink]]` tables) after the spool.
    pub fn mysql(url: &str, server_id: u32, extra: &str, sinks: &str) -> Result<FerryConfig> {
        let config = Self::postgres(url, "")?;
        let text = format!(
            "[source]\ntype = \"mysql\"\nurl = \"{url}\"\nserver_id = {server_id}\n{extra}\n\n\
             [spool]\ndir = \"{}\"\nack = \"spooled\"\n\n{sinks}\n",
            config.spool_dir().display()
        );
        std::fs::write(config.path(), text).map_err(|e| e.to_string())?;
        Ok(config)
    }

    /// A Postgres source and one Postgres sink named `replica`; `extra_sink` lines go into the
    /// `[[sink]]` table. `ack` is "applied" (the default policy).
    pub fn pg_to_pg(
        source_url: &str,
        sink_url: &str,
        extra_source: &str,
        extra_sink: &str,
    ) -> Result<FerryConfig> {
        let config = Self::postgres(source_url, extra_source)?;
        let text = format!(
            "[source]\ntype = \"postgres\"\nurl = \"{source_url}\"\n{extra_source}\n\n[spool]\ndir = \"{}\"\n\n\
             [[sink]]\nname = \"replica\"\ntype = \"postgres\"\nurl = \"{sink_url}\"\n{extra_sink}\n",
            config.spool_dir().display()
        );
        std::fs::write(config.path(), text).map_err(|e| e.to_string())?;
        Ok(config)
    }

    /// Adds an `[http]` section on a free loopback port (with a control `token`, if given); the
    /// port.
    pub fn with_http(&self, token: Option<&str>) -> Result<u16> {
        let port = process::free_port();
        let text = std::fs::read_to_string(self.path()).map_err(|e| e.to_string())?;
        let token = token.map_or(String::new(), |t| format!("token = \"{t}\"\n"));
        std::fs::write(
            self.path(),
            format!("{text}\n[http]\nlisten = \"127.0.0.1:{port}\"\n{token}"),
        )
        .map_err(|e| e.to_string())?;
        Ok(port)
    }

    pub fn path(&self) -> PathBuf {
        self.dir.path().join("ferry.toml")
    }

    pub fn spool_dir(&self) -> PathBuf {
        self.dir.path().join("spool")
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Starts `ferry run` with this configuration; its output goes to `ferry-<n>.log`.
    pub fn start(&self, n: usize) -> Result<FerryRun> {
        let mut cmd = Command::new(bin()?);
        cmd.arg("run")
            .arg("--config")
            .arg(self.path())
            .env("FERRY_LOG", "ferry=debug");
        let log = self.dir.path().join(format!("ferry-{n}.log"));
        let process = ServerProcess::spawn("ferry", cmd, log, libc::SIGTERM)?;
        Ok(FerryRun { process })
    }
}

/// A running `ferry run`; killed when dropped.
#[derive(Debug)]
pub struct FerryRun {
    process: ServerProcess,
}

impl FerryRun {
    /// SIGTERM, then waits for a clean exit; fails unless it exits 0.
    pub fn stop(mut self) -> Result<()> {
        self.process.signal(libc::SIGTERM);
        match self.process.wait_exit(Duration::from_secs(30)) {
            Some(s) if s.success() => Ok(()),
            Some(s) => Err(format!(
                "ferry exited with {s}:\n{}",
                process::tail(&self.process.log_text(), 40)
            )),
            None => Err("ferry did not stop within 30 s of SIGTERM".into()),
        }
    }

    /// SIGTERM, then its exit code and log, whatever the code.
    pub fn terminate(mut self) -> Result<(i32, String)> {
        self.process.signal(libc::SIGTERM);
        let status = self
            .process
            .wait_exit(Duration::from_secs(30))
            .ok_or("ferry did not stop within 30 s of SIGTERM")?;
        Ok((status.code().unwrap_or(-1), self.process.log_text()))
    }

    /// Sends a signal and returns at once.
    pub fn signal(&self, sig: i32) {
        self.process.signal(sig);
    }

    /// SIGKILL, at once.
    pub fn kill(mut self) {
        self.process.signal(libc::SIGKILL);
        let _ = self.process.wait_exit(Duration::from_secs(10));
    }

    /// Waits for the process to exit by itself: its exit code and log.
    pub fn wait_exit(mut self, timeout: Duration) -> Result<(i32, String)> {
        let status = self
            .process
            .wait_exit(timeout)
            .ok_or_else(|| format!("ferry still running after {timeout:?}"))?;
        Ok((status.code().unwrap_or(-1), self.process.log_text()))
    }

    /// Waits up to 90 s, ferry staying alive, until `table` on `client` holds `n` rows (a table
    /// that does not exist yet counts as none); fails with ferry's log.
    pub async fn wait_rows(&mut self, client: &tokio_postgres::Client, table: &str, n: i64) {
        let deadline = std::time::Instant::now() + Duration::from_secs(90);
        loop {
            let count: Option<i64> = client
                .query_one(&format!("SELECT count(*) FROM {table}"), &[])
                .await
                .ok()
                .map(|r| r.get(0));
            if count == Some(n) {
                return;
            }
            self.check_alive().unwrap();
            assert!(
                std::time::Instant::now() < deadline,
                "{table} has {count:?} rows, not {n}:\n{}",
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Fails (with the log) if ferry has exited.
    pub fn check_alive(&mut self) -> Result<()> {
        self.process.check_alive()
    }

    pub fn log_text(&self) -> String {
        self.process.log_text()
    }
}
