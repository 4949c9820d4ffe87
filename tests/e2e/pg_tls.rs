//! TLS to the source PostgreSQL server, end to end: a server with a certificate from a CA made
//! here, and `ferry run` with each `sslmode`. The server's pg_hba rejects every connection over
//! 127.0.0.1 that is not TLS, so a run that captures rows proves that both the tokio-postgres
//! connections (queries, snapshot) and ferry's own replication connection used TLS; the walsender
//! is also checked in `pg_stat_ssl`. Verification failures (unknown CA, host name not in the
//! certificate) and `require` against a server without TLS must stop ferry with a clear error.

#![allow(clippy::unwrap_used)]

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ferry_proto::Event;
use ferry_spool::{Offset, read_all};
use ferry_tests::Postgres;
use ferry_tests::ferry::FerryConfig;
use ferry_tests::postgres::PostgresOptions;
use ferry_tests::process::RunAs;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};

/// A CA certificate (PEM) and its key.
fn make_ca(name: &str) -> (String, KeyPair, CertificateParams) {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.distinguished_name.push(DnType::CommonName, name);
    let cert = params.self_signed(&key).unwrap();
    (cert.pem(), key, params)
}

/// Certificates in a directory the server user can read: `ca.pem` (the server's CA),
/// `other-ca.pem` (an unrelated CA), `server.pem` and `server.key` (valid for 127.0.0.1 only).
struct Certs {
    dir: tempfile::TempDir,
}

impl Certs {
    fn new() -> Certs {
        let dir = tempfile::Builder::new()
            .prefix("ferry-tls-")
            .tempdir()
            .unwrap();
        let (ca_pem, ca_key, ca_params) = make_ca("ferry test CA");
        let (other_pem, _, _) = make_ca("some other CA");
        let server_key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec!["127.0.0.1".to_owned()]).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, "ferry test server");
        let issuer = Issuer::from_params(&ca_params, &ca_key);
        let server = params.signed_by(&server_key, &issuer).unwrap();
        let p = dir.path();
        fs::write(p.join("ca.pem"), ca_pem).unwrap();
        fs::write(p.join("other-ca.pem"), other_pem).unwrap();
        fs::write(p.join("server.pem"), server.pem()).unwrap();
        fs::write(p.join("server.key"), server_key.serialize_pem()).unwrap();
        fs::set_permissions(p.join("server.key"), fs::Permissions::from_mode(0o600)).unwrap();
        // Only TLS over TCP; the Unix socket stays open for nothing but is harmless.
        fs::write(
            p.join("pg_hba.conf"),
            "local all all trust\n\
             hostnossl all all 127.0.0.1/32 reject\n\
             hostssl all all 127.0.0.1/32 trust\n",
        )
        .unwrap();
        RunAs::service_user("postgres").unwrap().own(p).unwrap();
        Certs { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn start_server(&self) -> Postgres {
        let setting = |k: &str, v: PathBuf| (k.to_owned(), v.display().to_string());
        Postgres::start_with(PostgresOptions {
            settings: vec![
                ("ssl".to_owned(), "on".to_owned()),
                setting("ssl_cert_file", self.path("server.pem")),
                setting("ssl_key_file", self.path("server.key")),
                setting("hba_file", self.path("pg_hba.conf")),
            ],
            ..Default::default()
        })
        .unwrap()
    }
}

fn inserts(dir: &Path) -> usize {
    if !dir.exists() {
        return 0;
    }
    read_all(dir, Offset(0))
        .unwrap()
        .into_iter()
        .filter(|(_, e)| matches!(e, Event::Insert(_)))
        .count()
}

fn wait_for_inserts(dir: &Path, n: usize, ferry: &mut ferry_tests::ferry::FerryRun) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while inserts(dir) < n {
        ferry.check_alive().unwrap();
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {n} inserts:\n{}",
            ferry.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Runs ferry with `url` on its own slot: the rows already in `t` arrive through the snapshot,
/// one more through the replication stream. Returns whether the walsender's connection is TLS.
fn captures(pg: &Postgres, url: &str, slot: &str) -> bool {
    let before: usize = pg
        .psql("postgres", "SELECT count(*) FROM t")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let config = FerryConfig::postgres(url, &format!("slot = \"{slot}\"")).unwrap();
    let mut ferry = config.start(0).unwrap();
    wait_for_inserts(&config.spool_dir(), before, &mut ferry);
    pg.psql("postgres", "INSERT INTO t (v) VALUES ('streamed')")
        .unwrap();
    wait_for_inserts(&config.spool_dir(), before + 1, &mut ferry);
    let ssl = pg
        .psql(
            "postgres",
            &format!(
                "SELECT s.ssl FROM pg_stat_replication r JOIN pg_stat_ssl s USING (pid) \
                 JOIN pg_replication_slots l ON l.active_pid = r.pid WHERE l.slot_name = '{slot}'"
            ),
        )
        .unwrap();
    ferry.stop().unwrap();
    match ssl.trim() {
        "t" => true,
        "f" => false,
        other => panic!("no walsender for slot {slot}: {other:?}"),
    }
}

/// Runs ferry with `url`, which must fail: its log.
fn fails(url: &str) -> String {
    let config = FerryConfig::postgres(url, "slot = \"never\"").unwrap();
    let (code, log) = config
        .start(0)
        .unwrap()
        .wait_exit(Duration::from_secs(30))
        .unwrap();
    assert_eq!(code, 1, "{log}");
    log
}

fn setup(pg: &Postgres) {
    pg.psql(
        "postgres",
        "CREATE TABLE t (id serial PRIMARY KEY, v text); INSERT INTO t (v) VALUES ('snapshot')",
    )
    .unwrap();
}

#[test]
fn tls_modes_against_a_tls_server() {
    let certs = Certs::new();
    let pg = certs.start_server();
    setup(&pg);
    let ca = certs.path("ca.pem").display().to_string();
    let other = certs.path("other-ca.pem").display().to_string();
    let port = pg.port();
    let url = |host: &str, q: &str| format!("postgres://postgres@{host}:{port}/postgres?{q}");

    // Chain and host name verified.
    assert!(captures(
        &pg,
        &url(
            "127.0.0.1",
            &format!("sslmode=verify-full&sslrootcert={ca}")
        ),
        "full"
    ));
    // The certificate names 127.0.0.1 only: verify-ca accepts it for "localhost", verify-full
    // does not.
    assert!(captures(
        &pg,
        &url("localhost", &format!("sslmode=verify-ca&sslrootcert={ca}")),
        "ca"
    ));
    let log = fails(&url(
        "localhost",
        &format!("sslmode=verify-full&sslrootcert={ca}"),
    ));
    assert!(log.contains("certificate not valid for name"), "{log}");
    // A certificate from an unknown CA.
    let log = fails(&url(
        "127.0.0.1",
        &format!("sslmode=verify-full&sslrootcert={other}"),
    ));
    assert!(log.contains("invalid peer certificate"), "{log}");
    assert!(log.contains("UnknownIssuer"), "{log}");
    // require and prefer encrypt without checking the certificate.
    assert!(captures(&pg, &url("127.0.0.1", "sslmode=require"), "req"));
    assert!(captures(
        &pg,
        &url("127.0.0.1", "application_name=x"),
        "pref"
    ));
    // The server rejects plain connections.
    let log = fails(&url("127.0.0.1", "sslmode=disable"));
    assert!(log.contains("no encryption"), "{log}");
}

#[test]
fn tls_modes_against_a_server_without_tls() {
    let pg = Postgres::start().unwrap();
    setup(&pg);
    let url = |q: &str| format!("{}?{q}", pg.url("postgres"));
    assert!(!captures(&pg, &url("sslmode=prefer"), "pref"));
    let log = fails(&url("sslmode=require"));
    assert!(log.contains("server does not support TLS"), "{log}");
}

/// TLS to a PostgreSQL replica: the sink, `verify` and `check` connect as the sink URL's
/// `sslmode` says (the replica rejects plain connections), and a certificate from an unknown CA
/// is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_to_the_replica_sink() {
    let certs = Certs::new();
    let replica = certs.start_server();
    let source = Postgres::start().unwrap();
    setup(&source);
    replica
        .psql("postgres", "CREATE TABLE t (id serial PRIMARY KEY, v text)")
        .unwrap();
    let ca = certs.path("ca.pem").display().to_string();
    let other = certs.path("other-ca.pem").display().to_string();
    let sink_url = |ca: &str| {
        format!(
            "postgres://postgres@127.0.0.1:{}/postgres?sslmode=verify-full&sslrootcert={ca}",
            replica.port()
        )
    };
    let config = FerryConfig::pg_to_pg(&source.url("postgres"), &sink_url(&ca), "", "").unwrap();
    let mut ferry = config.start(0).unwrap();
    source
        .psql("postgres", "INSERT INTO t (v) VALUES ('streamed')")
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while replica
        .psql("postgres", "SELECT count(*) FROM t")
        .unwrap()
        .trim()
        != "2"
    {
        ferry.check_alive().unwrap();
        assert!(Instant::now() < deadline, "{}", ferry.log_text());
        std::thread::sleep(Duration::from_millis(100));
    }
    let path = config.path().display().to_string();
    let (code, out, err) = ferry_tests::ferry::command(&["verify", "--config", &path]).unwrap();
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("equal"), "{out}");
    ferry.stop().unwrap();

    let text = fs::read_to_string(config.path()).unwrap();
    fs::write(config.path(), text.replace(&ca, &other)).unwrap();
    let (code, out, err) = ferry_tests::ferry::command(&["check", "--config", &path]).unwrap();
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        out.contains("error: cannot connect to sink replica"),
        "{out}"
    );
    assert!(out.contains("UnknownIssuer"), "{out}");
}
