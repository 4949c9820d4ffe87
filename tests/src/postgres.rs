//! A private PostgreSQL server: `initdb` into a temporary directory, `postgres` on a free loopback
//! port with `wal_level=logical` and room for many slots and WAL senders.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use tempfile::TempDir;

use crate::Result;
use crate::process::{self, RunAs, ServerProcess};

/// Where Debian and PGDG put the server binaries, newest major version first.
fn bin_dirs() -> Vec<PathBuf> {
    let mut dirs: Vec<(u32, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v = e.file_name().to_str()?.parse().ok()?;
            Some((v, e.path().join("bin")))
        })
        .collect();
    dirs.sort_by_key(|d| std::cmp::Reverse(d.0));
    dirs.into_iter().map(|(_, d)| d).collect()
}

/// A running private PostgreSQL server; stopped (fast shutdown) when dropped.
#[derive(Debug)]
pub struct Postgres {
    process: ServerProcess,
    port: u16,
    /// `postgres` (and `initdb`).
    bin: PathBuf,
    /// `pg_isready` and `psql`.
    tools: PathBuf,
    opts: PostgresOptions,
    run_as: RunAs,
    // Dropped last: the server must be gone before its directory is removed.
    dir: TempDir,
}

/// Options for [`Postgres::start_with`].
#[derive(Debug, Clone, Default)]
pub struct PostgresOptions {
    /// Extra `-c name=value` settings.
    pub settings: Vec<(String, String)>,
    /// A major version other than the machine's: the server binaries
    /// `scripts/fetch-postgres-versions` put in `tests/pg/<major>` (the oldest and newest ferry
    /// supports). Client tools (`pg_isready`, `psql`) still come from the machine.
    pub version: Option<u32>,
}

impl Postgres {
    pub fn start() -> Result<Postgres> {
        Self::start_with(PostgresOptions::default())
    }

    pub fn start_with(opts: PostgresOptions) -> Result<Postgres> {
        // initdb, postgres, pg_isready and psql must come from one installation: resolve symlinks
        // (Debian links some of them into /usr/local/bin or /usr/bin) and use the real directory.
        let initdb = process::find_bin("initdb", &bin_dirs())?;
        let initdb = fs::canonicalize(&initdb).unwrap_or(initdb);
        let tools = initdb.parent().map(Path::to_owned).unwrap_or_default();
        let (initdb, bin) = match opts.version {
            None => (initdb, tools.clone()),
            Some(major) => {
                let bin = Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("pg")
                    .join(major.to_string())
                    .join("bin");
                if !bin.join("postgres").is_file() {
                    return Err(format!(
                        "PostgreSQL {major} is not in {}: run scripts/fetch-postgres-versions \
                         (scripts/install-deps does)",
                        bin.display()
                    ));
                }
                (bin.join("initdb"), bin)
            }
        };
        let run_as = RunAs::service_user("postgres")?;
        let dir = tempfile::Builder::new()
            .prefix("ferry-pg-")
            .tempdir()
            .map_err(|e| e.to_string())?;
        let data = dir.path().join("data");
        run_as.own(dir.path())?;

        let mut cmd = Command::new(&initdb);
        cmd.arg("-D").arg(&data).args([
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "UTF8",
            "--locale=C",
            "--no-sync",
        ]);
        run_as.apply(&mut cmd);
        process::run(&mut cmd, "initdb")?;

        let mut last_err = String::new();
        // The free port may be taken between choosing and binding it: try a few.
        for _ in 0..3 {
            let port = process::free_port();
            match spawn_server(&bin, &tools, dir.path(), port, &opts, run_as) {
                Ok(process) => {
                    return Ok(Postgres {
                        process,
                        port,
                        bin,
                        tools,
                        opts,
                        run_as,
                        dir,
                    });
                }
                Err(e) => last_err = e,
            }
        }
        Err(last_err)
    }

    /// A physical streaming standby of `primary` (`pg_basebackup -R`), running on its own port:
    /// the same system identifier, none of the primary's logical slots (before PostgreSQL 17's
    /// failover slots), promoted with `SELECT pg_promote()`.
    pub fn standby_of(primary: &Postgres) -> Result<Postgres> {
        let run_as = primary.run_as;
        let dir = tempfile::Builder::new()
            .prefix("ferry-pg-standby-")
            .tempdir()
            .map_err(|e| e.to_string())?;
        run_as.own(dir.path())?;
        let mut cmd = Command::new(primary.tools.join("pg_basebackup"));
        cmd.arg("-D")
            .arg(dir.path().join("data"))
            .args([
                "-R",
                "-X",
                "stream",
                "--no-sync",
                "-h",
                "127.0.0.1",
                "-U",
                "postgres",
            ])
            .args(["-p", &primary.port.to_string()]);
        run_as.apply(&mut cmd);
        process::run(&mut cmd, "pg_basebackup")?;
        let mut last_err = String::new();
        for _ in 0..3 {
            let port = process::free_port();
            match spawn_server(
                &primary.bin,
                &primary.tools,
                dir.path(),
                port,
                &primary.opts,
                run_as,
            ) {
                Ok(process) => {
                    return Ok(Postgres {
                        process,
                        port,
                        bin: primary.bin.clone(),
                        tools: primary.tools.clone(),
                        opts: primary.opts.clone(),
                        run_as,
                        dir,
                    });
                }
                Err(e) => last_err = e,
            }
        }
        Err(last_err)
    }

    /// A physical streaming standby of `primary` made from a copy of its data directory taken
    /// while it is stopped (for server versions whose `pg_basebackup` this machine lacks: the
    /// fetched ones bring only the server). `conf` goes into the standby's
    /// `postgresql.auto.conf` beside its `primary_conninfo` (with `dbname=postgres`, which slot
    /// synchronization needs).
    pub fn cold_standby_of(primary: &mut Postgres, conf: &[(&str, &str)]) -> Result<Postgres> {
        let run_as = primary.run_as;
        let dir = tempfile::Builder::new()
            .prefix("ferry-pg-standby-")
            .tempdir()
            .map_err(|e| e.to_string())?;
        primary.stop();
        let data = dir.path().join("data");
        let copied = process::run(
            Command::new("cp")
                .arg("-a")
                .arg(primary.dir.path().join("data"))
                .arg(&data),
            "cp",
        );
        primary.start_again()?;
        copied?;
        let _ = fs::remove_file(data.join("postmaster.pid"));
        fs::write(data.join("standby.signal"), "").map_err(|e| e.to_string())?;
        let mut auto = fs::read_to_string(data.join("postgresql.auto.conf")).unwrap_or_default();
        auto.push_str(&format!(
            "\nprimary_conninfo = 'host=127.0.0.1 port={} user=postgres dbname=postgres'\n",
            primary.port
        ));
        for (k, v) in conf {
            auto.push_str(&format!("{k} = {v}\n"));
        }
        fs::write(data.join("postgresql.auto.conf"), auto).map_err(|e| e.to_string())?;
        run_as.own(dir.path())?;
        let port = process::free_port();
        let process = spawn_server(
            &primary.bin,
            &primary.tools,
            dir.path(),
            port,
            &primary.opts,
            run_as,
        )?;
        Ok(Postgres {
            process,
            port,
            bin: primary.bin.clone(),
            tools: primary.tools.clone(),
            opts: primary.opts.clone(),
            run_as,
            dir,
        })
    }

    /// Stops the server (fast shutdown: connections are cut, as in a crash of the network or a
    /// restart by an operator) and starts it again on the same port with the same data.
    pub fn restart(&mut self) -> Result<()> {
        self.stop();
        self.start_again()
    }

    /// Stops the server (fast shutdown) and leaves it stopped until [`Self::start_again`].
    pub fn stop(&mut self) {
        self.process.stop(Duration::from_secs(30));
    }

    /// Starts a server [`Self::stop`] stopped, on the same port with the same data.
    pub fn start_again(&mut self) -> Result<()> {
        self.process = spawn_server(
            &self.bin,
            &self.tools,
            self.dir.path(),
            self.port,
            &self.opts,
            self.run_as,
        )?;
        Ok(())
    }

    /// A client of database `postgres`, its connection driven on a task.
    pub async fn connect(&self) -> tokio_postgres::Client {
        let (client, conn) =
            tokio_postgres::connect(&self.conn_str("postgres"), tokio_postgres::NoTls)
                .await
                .unwrap();
        tokio::spawn(conn);
        client
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// Connection URL of the superuser `postgres` to database `db`.
    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    /// A key=value connection string for tokio-postgres.
    pub fn conn_str(&self, db: &str) -> String {
        format!(
            "host=127.0.0.1 port={} user=postgres dbname={db}",
            self.port
        )
    }

    /// Runs SQL through `psql` (for setup that should not depend on the code under test).
    pub fn psql(&self, db: &str, sql: &str) -> Result<String> {
        process::run(
            Command::new(self.tools.join("psql"))
                .args([
                    "-X",
                    "-q",
                    "-At",
                    "-v",
                    "ON_ERROR_STOP=1",
                    "-h",
                    "127.0.0.1",
                ])
                .args([
                    "-U",
                    "postgres",
                    "-p",
                    &self.port.to_string(),
                    "-d",
                    db,
                    "-c",
                    sql,
                ]),
            "psql",
        )
    }

    /// The directory holding data and logs.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn log_text(&self) -> String {
        self.process.log_text()
    }
}

/// Starts `postgres` on `dir/data` and waits until it accepts connections.
fn spawn_server(
    bin: &Path,
    tools: &Path,
    dir: &Path,
    port: u16,
    opts: &PostgresOptions,
    run_as: RunAs,
) -> Result<ServerProcess> {
    let data = dir.join("data");
    let mut cmd = Command::new(bin.join("postgres"));
    cmd.arg("-D")
        .arg(&data)
        .arg("-p")
        .arg(port.to_string())
        .arg("-k")
        .arg(dir);
    let mut settings: Vec<(String, String)> = [
        ("listen_addresses", "127.0.0.1"),
        ("wal_level", "logical"),
        ("max_replication_slots", "32"),
        ("max_wal_senders", "32"),
        ("max_connections", "100"),
        ("fsync", "off"),
        ("shared_buffers", "64MB"),
        ("logging_collector", "off"),
        ("log_min_messages", "warning"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    settings.extend(opts.settings.iter().cloned());
    for (k, v) in &settings {
        cmd.arg("-c").arg(format!("{k}={v}"));
    }
    run_as.apply(&mut cmd);
    let log = dir.join("postgres.log");
    run_as.own(dir)?;
    // SIGINT is PostgreSQL's fast shutdown: roll back, checkpoint, exit.
    let mut process = ServerProcess::spawn("postgres", cmd, log, libc::SIGINT)?;
    let isready = tools.join("pg_isready");
    process.wait_until(Duration::from_secs(60), || {
        Command::new(&isready)
            .args(["-q", "-h", "127.0.0.1", "-U", "postgres", "-p"])
            .arg(port.to_string())
            .status()
            .is_ok_and(|s| s.success())
    })?;
    Ok(process)
}
