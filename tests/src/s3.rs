//! A private S3-compatible server for the archive's tests: `s3s-fs` (the s3s project's
//! file-system backed S3 server, installed by `scripts/install-deps` into `tests/s3/bin`) on a
//! free loopback port, serving a temporary directory; each directory under it is a bucket.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::Result;
use crate::process::{self, ServerProcess};

pub const ACCESS_KEY: &str = "ferrytest";
pub const SECRET_KEY: &str = "ferrytestsecret";

/// A running S3-compatible server; stopped when dropped.
#[derive(Debug)]
pub struct S3Server {
    process: Option<ServerProcess>,
    dir: tempfile::TempDir,
    port: u16,
}

fn binary() -> Result<PathBuf> {
    let local = Path::new(env!("CARGO_MANIFEST_DIR")).join("s3/bin/s3s-fs");
    if local.exists() {
        return Ok(local);
    }
    process::find_bin("s3s-fs", &[]).map_err(|_| {
        "s3s-fs not found: run scripts/install-deps (it installs tests/s3/bin/s3s-fs)".into()
    })
}

impl S3Server {
    /// Starts the server with one bucket, `bucket`.
    pub fn start(bucket: &str) -> Result<S3Server> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        std::fs::create_dir_all(dir.path().join("data").join(bucket)).map_err(|e| e.to_string())?;
        let port = process::free_port();
        let mut server = S3Server {
            process: None,
            dir,
            port,
        };
        server.start_again()?;
        Ok(server)
    }

    /// Starts it again on the same port and directory (after [`stop`](Self::stop)).
    pub fn start_again(&mut self) -> Result<()> {
        let mut cmd = Command::new(binary()?);
        cmd.args([
            "--host",
            "127.0.0.1",
            "--port",
            &self.port.to_string(),
            "--access-key",
            ACCESS_KEY,
            "--secret-key",
            SECRET_KEY,
        ])
        .arg(self.dir.path().join("data"));
        let log = self.dir.path().join("s3s-fs.log");
        let mut process = ServerProcess::spawn("s3s-fs", cmd, log, libc::SIGTERM)?;
        let port = self.port;
        process.wait_until(Duration::from_secs(30), || process::port_open(port))?;
        self.process = Some(process);
        Ok(())
    }

    /// Stops the server (the data stays).
    pub fn stop(&mut self) {
        self.process = None;
    }

    /// `http://127.0.0.1:<port>`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Where bucket `bucket` keeps its objects on disk.
    pub fn bucket_dir(&self, bucket: &str) -> PathBuf {
        self.dir.path().join("data").join(bucket)
    }
}
