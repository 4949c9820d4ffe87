//! A private Apache Kafka broker in KRaft mode (combined broker and controller, one node), run with
//! the machine's Java from the jars `scripts/install-deps` fetched through `tests/kafka/pom.xml`.

use std::fmt::Write as _;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use tempfile::TempDir;

use crate::Result;
use crate::process::{self, ServerProcess};

/// The directory holding Kafka's jars: `FERRY_KAFKA_LIB`, or `tests/kafka/lib` in this repository.
pub fn lib_dir() -> PathBuf {
    std::env::var_os("FERRY_KAFKA_LIB")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("kafka/lib"))
}

/// A running private Kafka broker; stopped (SIGTERM, then SIGKILL) when dropped.
#[derive(Debug)]
pub struct Kafka {
    process: ServerProcess,
    port: u16,
    /// The server's command line, to start it again after [`stop`](Kafka::stop).
    command: Vec<std::ffi::OsString>,
    restarts: usize,
    dir: TempDir,
}

const LOG4J2: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<Configuration status="WARN">
  <Appenders>
    <Console name="out" target="SYSTEM_OUT">
      <PatternLayout pattern="[%d] %p %m (%c)%n"/>
    </Console>
  </Appenders>
  <Loggers>
    <Root level="WARN"><AppenderRef ref="out"/></Root>
    <Logger name="kafka.server.KafkaRaftServer" level="INFO"/>
    <Logger name="kafka.server.BrokerServer" level="INFO"/>
  </Loggers>
</Configuration>
"#;

fn cluster_id() -> Result<String> {
    // An id starting with '-' would be read as an option by kafka-storage's
    // argument parser (Kafka's own Uuid.randomUuid avoids those too).
    loop {
        let id = random_cluster_id()?;
        if !id.starts_with('-') {
            return Ok(id);
        }
    }
}

fn random_cluster_id() -> Result<String> {
    // A Kafka cluster id is a base64url UUID without padding (22 characters).
    let mut bytes = [0u8; 16];
    fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .map_err(|e| e.to_string())?;
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut bits = 0u32;
    let mut nbits = 0;
    let mut out = String::new();
    for b in bytes {
        bits = (bits << 8) | u32::from(b);
        nbits += 8;
        while nbits >= 6 {
            nbits -= 6;
            out.push(ALPHABET[((bits >> nbits) & 63) as usize] as char);
        }
    }
    if nbits > 0 {
        out.push(ALPHABET[((bits << (6 - nbits)) & 63) as usize] as char);
    }
    Ok(out)
}

impl Kafka {
    pub fn start() -> Result<Kafka> {
        let lib = lib_dir();
        let has_jars = fs::read_dir(&lib)
            .map(|d| {
                d.flatten()
                    .any(|e| e.file_name().to_string_lossy().starts_with("kafka_"))
            })
            .unwrap_or(false);
        if !has_jars {
            return Err(format!(
                "Kafka jars not found in {}: run scripts/install-deps",
                lib.display()
            ));
        }
        let java = process::find_bin("java", &[])?;
        let dir = tempfile::Builder::new()
            .prefix("ferry-kafka-")
            .tempdir()
            .map_err(|e| e.to_string())?;
        let log4j = dir.path().join("log4j2.xml");
        fs::write(&log4j, LOG4J2).map_err(|e| e.to_string())?;
        let classpath = format!("{}/*", lib.display());
        let java_cmd = |main: &str| {
            let mut cmd = Command::new(&java);
            cmd.args([
                "-Xms128m",
                "-Xmx512m",
                "-XX:+UseSerialGC",
                "-XX:TieredStopAtLevel=1",
            ])
            .arg("-Djava.awt.headless=true")
            .arg(format!("-Dlog4j2.configurationFile={}", log4j.display()))
            .arg("-cp")
            .arg(&classpath)
            .arg(main);
            cmd
        };

        let mut last_err = String::new();
        for attempt in 0..3 {
            let port = process::free_port();
            let controller = process::free_port();
            let data = dir.path().join(format!("data-{attempt}"));
            let props = dir.path().join(format!("server-{attempt}.properties"));
            let mut p = String::new();
            let _ = write!(
                p,
                "process.roles=broker,controller\n\
                 node.id=1\n\
                 controller.quorum.voters=1@127.0.0.1:{controller}\n\
                 listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller}\n\
                 advertised.listeners=PLAINTEXT://127.0.0.1:{port}\n\
                 controller.listener.names=CONTROLLER\n\
                 inter.broker.listener.name=PLAINTEXT\n\
                 listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT\n\
                 log.dirs={}\n\
                 num.partitions=1\n\
                 offsets.topic.replication.factor=1\n\
                 offsets.topic.num.partitions=1\n\
                 transaction.state.log.replication.factor=1\n\
                 transaction.state.log.min.isr=1\n\
                 transaction.state.log.num.partitions=1\n\
                 share.coordinator.state.topic.replication.factor=1\n\
                 share.coordinator.state.topic.min.isr=1\n\
                 group.initial.rebalance.delay.ms=0\n\
                 auto.create.topics.enable=true\n\
                 log.flush.interval.messages=9223372036854775807\n",
                data.display()
            );
            fs::write(&props, p).map_err(|e| e.to_string())?;
            process::run(
                java_cmd("kafka.tools.StorageTool")
                    .args(["format", "--ignore-formatted", "-t", &cluster_id()?, "-c"])
                    .arg(&props),
                "kafka storage format",
            )?;
            let mut cmd = java_cmd("kafka.Kafka");
            cmd.arg(&props);
            let log = dir.path().join(format!("kafka-{attempt}.log"));
            let mut process = ServerProcess::spawn("kafka", cmd, log.clone(), libc::SIGTERM)?;
            let ready = process.wait_until(Duration::from_secs(120), || {
                process::port_open(port)
                    && fs::read_to_string(&log).is_ok_and(|l| l.contains("Kafka Server started"))
            });
            match ready {
                Ok(()) => {
                    let command = std::iter::once(java.clone().into_os_string())
                        .chain(java_cmd("kafka.Kafka").get_args().map(ToOwned::to_owned))
                        .chain(std::iter::once(props.clone().into_os_string()))
                        .collect();
                    return Ok(Kafka {
                        process,
                        port,
                        command,
                        restarts: 0,
                        dir,
                    });
                }
                Err(e) => last_err = e,
            }
        }
        Err(last_err)
    }

    /// Stops the broker (SIGTERM: a clean shutdown), keeping its data.
    pub fn stop(&mut self) {
        self.process.stop(Duration::from_secs(60));
    }

    /// Starts the broker again on the same port with the same data, after [`stop`](Self::stop).
    pub fn start_again(&mut self) -> Result<()> {
        self.restarts += 1;
        let mut cmd = Command::new(&self.command[0]);
        cmd.args(&self.command[1..]);
        let log = self
            .dir
            .path()
            .join(format!("kafka-restart-{}.log", self.restarts));
        let port = self.port;
        self.process = ServerProcess::spawn("kafka", cmd, log.clone(), libc::SIGTERM)?;
        self.process.wait_until(Duration::from_secs(120), || {
            process::port_open(port)
                && fs::read_to_string(&log).is_ok_and(|l| l.contains("Kafka Server started"))
        })
    }

    /// `host:port` for `bootstrap.servers`.
    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn log_text(&self) -> String {
        self.process.log_text()
    }
}
