//! The configuration examples under `examples/`: each, pointed at the harness's real servers (only
//! its addresses, credentials and directories changed), passes `ferry check`.

#![allow(clippy::unwrap_used)]

use std::path::Path;

use ferry_tests::ferry::command;
use ferry_tests::{Kafka, MariaDb, Postgres};
use mysql_async::prelude::Queryable;

/// The example with its `url`s (source first, then sinks), `brokers`, `dir` and `listen` set.
fn adapt(example: &str, urls: &[String], brokers: &str, dir: &Path) -> String {
    let mut urls = urls.iter();
    example
        .lines()
        .map(|l| {
            let key = l.split('=').next().unwrap_or("").trim();
            match key {
                "url" => format!("url = \"{}\"", urls.next().unwrap()),
                "brokers" => format!("brokers = \"{brokers}\""),
                "dir" => format!("dir = \"{}\"", dir.display()),
                "listen" => format!(
                    "listen = \"127.0.0.1:{}\"",
                    ferry_tests::process::free_port()
                ),
                _ => l.to_owned(),
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn check(name: &str, urls: &[String], brokers: &str) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let text = std::fs::read_to_string(root.join("examples").join(name)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(name);
    std::fs::write(
        &path,
        adapt(&text, urls, brokers, &dir.path().join("spool")),
    )
    .unwrap();
    let (code, out, err) = command(&["check", "--config", path.to_str().unwrap()]).unwrap();
    assert_eq!(code, 0, "{name}:\n{out}{err}");
    assert!(out.contains("ok: "), "{name}: {out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_pair_example_passes_ferry_check_against_real_servers() {
    let pg = Postgres::start().unwrap();
    let replica = Postgres::start().unwrap();
    let maria = MariaDb::start().unwrap();
    let maria_replica = MariaDb::start().unwrap();
    let kafka = Kafka::start().unwrap();
    pg.psql("postgres", "CREATE TABLE t (id int PRIMARY KEY, v text)")
        .unwrap();
    replica
        .psql("postgres", "CREATE TABLE t (id int PRIMARY KEY, v text)")
        .unwrap();
    let mut c = mysql_async::Conn::new(mysql_async::Opts::from_url(&maria.url("")).unwrap())
        .await
        .unwrap();
    c.query_drop("CREATE DATABASE app; CREATE TABLE app.t (id int PRIMARY KEY, v text)")
        .await
        .unwrap();
    let pg_url = pg.url("postgres");
    let replica_url = replica.url("postgres");
    check("pg-to-pg.toml", &[pg_url.clone(), replica_url.clone()], "");
    check("pg-capture.toml", std::slice::from_ref(&pg_url), "");
    check(
        "pg-to-kafka.toml",
        std::slice::from_ref(&pg_url),
        &kafka.bootstrap(),
    );
    check(
        "ferry.toml",
        &[pg_url, replica_url.clone()],
        &kafka.bootstrap(),
    );
    check("mariadb-to-pg.toml", &[maria.url("app"), replica_url], "");
    check(
        "mariadb-to-mariadb.toml",
        &[maria.url("app"), maria_replica.url("")],
        "",
    );
}

/// Docker does not run here: the compose file and the Dockerfile are checked against the binary
/// and the configuration they name instead.
#[test]
fn the_compose_file_and_dockerfile_match_the_binary_and_the_config() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let compose = std::fs::read_to_string(root.join("docker-compose.yml")).unwrap();
    let dockerfile = std::fs::read_to_string(root.join("Dockerfile")).unwrap();
    // The image runs `ferry run --config /etc/ferry/ferry.toml` as a non-root user, spool on a volume.
    assert!(dockerfile.contains(r#"CMD ["run", "--config", "/etc/ferry/ferry.toml"]"#));
    assert!(dockerfile.contains("USER ferry"));
    assert!(dockerfile.contains("VOLUME /var/lib/ferry"));
    // The compose file mounts that config from the repository, and the spool volume.
    assert!(compose.contains("./docker/ferry.toml:/etc/ferry/ferry.toml:ro"));
    assert!(compose.contains("ferry-spool:/var/lib/ferry"));
    let config = std::fs::read_to_string(root.join("docker/ferry.toml")).unwrap();
    assert!(config.contains("dir = \"/var/lib/ferry\""));
    // The port it publishes and probes is the endpoint's, which answers /readyz.
    assert!(config.contains("listen = \"0.0.0.0:9187\""));
    assert!(compose.contains("\"9187:9187\""));
    assert!(compose.contains("/dev/tcp/127.0.0.1/9187"));
    assert!(compose.contains("GET /readyz"));
    assert!(dockerfile.contains("EXPOSE 9187"));
    // The mounted config is valid for this binary (its ${VAR}s set as compose sets them).
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ferry.toml");
    std::fs::write(&path, &config).unwrap();
    let bin = ferry_tests::ferry::bin().unwrap();
    let out = std::process::Command::new(bin)
        .args(["log", "dump", "--config", path.to_str().unwrap()])
        .env("PGPASSWORD", "x")
        .env("REPLICA_PASSWORD", "y")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    // It parses (the spool directory does not exist here, which is what it reports).
    assert!(!err.contains("ferry.toml:"), "{err}");
}
