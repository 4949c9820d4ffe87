//! A private MariaDB server: `mariadb-install-db` into a temporary directory, `mariadbd` on a free
//! loopback port with the row binlog ferry needs (`binlog_format=ROW`, `binlog_row_image=FULL`,
//! `binlog_row_metadata=FULL`) and a unique `server_id`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use tempfile::TempDir;

use crate::Result;
use crate::process::{self, RunAs, ServerProcess};

/// User and password of the account the harness creates, with every privilege.
pub const USER: &str = "ferry";
pub const PASSWORD: &str = "ferry-test";

static NEXT_SERVER_ID: AtomicU32 = AtomicU32::new(1);

fn sbin() -> Vec<PathBuf> {
    vec![PathBuf::from("/usr/sbin"), PathBuf::from("/usr/local/sbin")]
}

/// A running private MariaDB server; stopped (SIGTERM, a clean shutdown) when dropped.
#[derive(Debug)]
pub struct MariaDb {
    process: ServerProcess,
    /// How to start `mariadbd` again ([`Self::restart`]).
    spawn: Spawn,
    port: u16,
    server_id: u32,
    socket: PathBuf,
    client: PathBuf,
    dir: TempDir,
}

impl MariaDb {
    pub fn start() -> Result<MariaDb> {
        Self::start_with(&[])
    }

    /// A server with extra `mariadbd` arguments (TLS settings, say).
    pub fn start_with(extra: &[String]) -> Result<MariaDb> {
        let install = process::find_bin("mariadb-install-db", &sbin())?;
        let mariadbd = process::find_bin("mariadbd", &sbin())?;
        let client = process::find_bin("mariadb", &[])?;
        let run_as = RunAs::service_user("mysql")?;
        let dir = tempfile::Builder::new()
            .prefix("ferry-maria-")
            .tempdir()
            .map_err(|e| e.to_string())?;
        let data = dir.path().join("data");
        let binlog = dir.path().join("binlog");
        std::fs::create_dir_all(&binlog).map_err(|e| e.to_string())?;
        // A private tmpdir: a starting server deletes the `#sql*` files it finds in its tmpdir,
        // which in a shared /tmp are another server's bootstrap tables.
        let tmp = dir.path().join("tmp");
        std::fs::create_dir_all(&tmp).map_err(|e| e.to_string())?;
        run_as.own(dir.path())?;

        let mut cmd = Command::new(&install);
        cmd.arg("--no-defaults")
            .arg(format!("--datadir={}", data.display()))
            .args([
                "--auth-root-authentication-method=normal",
                "--skip-test-db",
                "--skip-name-resolve",
            ])
            .env("TMPDIR", &tmp);
        run_as.apply(&mut cmd);
        process::run(&mut cmd, "mariadb-install-db")?;

        // Unique per process and per server, so replicas of several test servers never clash.
        let server_id = (std::process::id() % 100_000) * 100
            + NEXT_SERVER_ID.fetch_add(1, Ordering::Relaxed) % 100;
        let socket = dir.path().join("mysqld.sock");
        let mut last_err = String::new();
        for _ in 0..3 {
            let port = process::free_port();
            let spawn = Spawn {
                mariadbd: mariadbd.clone(),
                args: vec![
                    "--no-defaults".into(),
                    format!("--datadir={}", data.display()),
                    format!("--socket={}", socket.display()),
                    format!("--pid-file={}", dir.path().join("mysqld.pid").display()),
                    format!("--port={port}"),
                    format!("--tmpdir={}", tmp.display()),
                    format!("--log-bin={}", binlog.join("mysql-bin").display()),
                    format!("--server-id={server_id}"),
                    "--bind-address=127.0.0.1".into(),
                    "--skip-name-resolve".into(),
                    "--binlog-format=ROW".into(),
                    "--binlog-row-image=FULL".into(),
                    "--binlog-row-metadata=FULL".into(),
                    "--innodb-buffer-pool-size=64M".into(),
                    "--innodb-flush-log-at-trx-commit=2".into(),
                    "--sync-binlog=0".into(),
                    "--max-connections=200".into(),
                ]
                .into_iter()
                .chain(extra.iter().cloned())
                .collect(),
                run_as,
                dir: dir.path().to_owned(),
                socket: socket.clone(),
                port,
            };
            let process = match spawn.run() {
                Ok(p) => p,
                Err(e) => {
                    last_err = e;
                    continue;
                }
            };
            let server = MariaDb {
                process,
                spawn,
                port,
                server_id,
                socket,
                client,
                dir,
            };
            server.sql_as_root(&format!(
                "CREATE USER '{USER}'@'%' IDENTIFIED BY '{PASSWORD}'; \
                 GRANT ALL PRIVILEGES ON *.* TO '{USER}'@'%' WITH GRANT OPTION;"
            ))?;
            return Ok(server);
        }
        Err(last_err)
    }

    /// A server that replicates `primary` natively by GTID from now on (`log_slave_updates`, so
    /// its own binlog holds what it applies and ferry can continue on it after a failover).
    pub async fn replica_of(primary: &MariaDb) -> Result<MariaDb> {
        use mysql_async::prelude::Queryable;
        let replica = MariaDb::start_with(&["--log-slave-updates".into()])?;
        let mut p = primary.connect().await;
        let at: Option<String> = p
            .query_first("SELECT @@global.gtid_binlog_pos")
            .await
            .map_err(|e| e.to_string())?;
        let mut r = replica.connect().await;
        // From the primary's position now: what came before (its accounts) is not replayed.
        r.query_drop(format!(
            "SET GLOBAL gtid_slave_pos = '{}'; \
             CHANGE MASTER TO master_host = '127.0.0.1', master_port = {}, \
               master_user = '{USER}', master_password = '{PASSWORD}', \
               master_use_gtid = slave_pos; \
             START SLAVE",
            at.unwrap_or_default(),
            primary.port()
        ))
        .await
        .map_err(|e| e.to_string())?;
        Ok(replica)
    }

    /// Waits until this replica has applied everything `primary` has logged.
    pub async fn caught_up_with(&self, primary: &MariaDb) -> Result<()> {
        use mysql_async::prelude::Queryable;
        let at: Option<String> = primary
            .connect()
            .await
            .query_first("SELECT @@global.gtid_binlog_pos")
            .await
            .map_err(|e| e.to_string())?;
        let waited: Option<i64> = self
            .connect()
            .await
            .exec_first("SELECT MASTER_GTID_WAIT(?, 60)", (at.unwrap_or_default(),))
            .await
            .map_err(|e| e.to_string())?;
        match waited {
            Some(0) => Ok(()),
            other => Err(format!("the replica did not catch up: {other:?}")),
        }
    }

    /// Makes a replica a primary: replication stopped and forgotten.
    pub async fn promote(&self) -> Result<()> {
        use mysql_async::prelude::Queryable;
        self.connect()
            .await
            .query_drop("STOP SLAVE; RESET SLAVE ALL")
            .await
            .map_err(|e| e.to_string())
    }

    /// Stops the server (SIGTERM, a clean shutdown) and starts it again on the same port with the
    /// same data, as an operator's restart.
    pub fn restart(&mut self) -> Result<()> {
        self.stop();
        self.start_again()
    }

    /// Stops the server and leaves it stopped until [`Self::start_again`].
    pub fn stop(&mut self) {
        self.process.stop(Duration::from_secs(60));
    }

    /// Starts a server [`Self::stop`] stopped.
    pub fn start_again(&mut self) -> Result<()> {
        self.process = self.spawn.run()?;
        Ok(())
    }

    /// A connection as the harness's user, without a default database.
    pub async fn connect(&self) -> mysql_async::Conn {
        mysql_async::Conn::new(mysql_async::Opts::from_url(&self.url("")).unwrap())
            .await
            .unwrap()
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    pub fn server_id(&self) -> u32 {
        self.server_id
    }

    /// URL of the harness's privileged account, database `db` (empty for none).
    pub fn url(&self, db: &str) -> String {
        format!("mysql://{USER}:{PASSWORD}@127.0.0.1:{}/{db}", self.port)
    }

    /// Runs SQL as root over the server's socket with the `mariadb` client.
    pub fn sql_as_root(&self, sql: &str) -> Result<String> {
        process::run(
            Command::new(&self.client)
                .arg("--no-defaults")
                .arg(format!("--socket={}", self.socket.display()))
                .args(["-uroot", "--batch", "--skip-column-names", "-e", sql]),
            "mariadb client",
        )
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn log_text(&self) -> String {
        self.process.log_text()
    }
}

/// What starts `mariadbd` on its port and data directory.
#[derive(Debug)]
struct Spawn {
    mariadbd: PathBuf,
    args: Vec<String>,
    run_as: RunAs,
    dir: PathBuf,
    socket: PathBuf,
    port: u16,
}

impl Spawn {
    /// Starts the server and waits until it accepts connections.
    fn run(&self) -> Result<ServerProcess> {
        let mut cmd = Command::new(&self.mariadbd);
        cmd.args(&self.args);
        self.run_as.apply(&mut cmd);
        let log = self.dir.join("mariadb.log");
        self.run_as.own(&self.dir)?;
        let mut process = ServerProcess::spawn("mariadbd", cmd, log, libc::SIGTERM)?;
        let (sock, port) = (self.socket.clone(), self.port);
        process.wait_until(Duration::from_secs(60), || {
            sock.exists() && process::port_open(port)
        })?;
        Ok(process)
    }
}
