//! A damaged spool is not a torn write: with a byte flipped in the middle of the active segment
//! (`ack = "spooled"`, nothing applied), `ferry run` refuses to start, names the segment, the
//! offset and the positions, and deletes nothing; with a byte flipped in a sealed segment that a
//! sink has not applied yet (`ack = "applied"`), the sink halts naming it and the replica keeps
//! exactly what came before the damage.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ferry_tests::Postgres;
use ferry_tests::ferry::FerryConfig;

fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    v.sort();
    v
}

/// Flips one byte in the middle of `seg`; returns the bytes as they are now.
fn flip_middle(seg: &Path) -> Vec<u8> {
    let mut bytes = std::fs::read(seg).unwrap();
    let i = bytes.len() / 2;
    bytes[i] ^= 0x20;
    std::fs::write(seg, &bytes).unwrap();
    bytes
}

/// Waits until `dir`'s spool holds `what` (checked through `ferry log dump`).
fn wait_spooled(config: &FerryConfig, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, out, _) = ferry_tests::ferry::command(&[
            "log",
            "dump",
            "--config",
            config.path().to_str().unwrap(),
        ])
        .unwrap();
        if out.contains(what) {
            return;
        }
        assert!(Instant::now() < deadline, "{what} never reached the spool");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flipped_byte_in_the_active_segment_stops_ferry_and_deletes_nothing() {
    let source = Postgres::start().unwrap();
    let s = source.connect().await;
    s.batch_execute("CREATE TABLE t (id int PRIMARY KEY, v text)")
        .await
        .unwrap();
    let config = FerryConfig::postgres(&source.url("postgres"), "").unwrap();
    let run = config.start(0).unwrap();
    // The slot exists once the (empty) snapshot is spooled.
    wait_spooled(&config, "\"kind\":\"commit\"");
    s.batch_execute(
        "INSERT INTO t SELECT g, repeat('x', 40) FROM generate_series(1, 20000) g;
         SELECT pg_logical_emit_message(true, 'ferry-test', 'done');",
    )
    .await
    .unwrap();
    wait_spooled(&config, "ferry-test");
    run.stop().unwrap();

    let segs = segments(&config.spool_dir());
    let active = segs.last().unwrap().clone();
    let damaged = flip_middle(&active);

    let (code, log) = config
        .start(1)
        .unwrap()
        .wait_exit(Duration::from_secs(30))
        .unwrap();
    assert_ne!(code, 0, "ferry ran on a damaged spool:\n{log}");
    assert!(log.contains("is damaged at offset"), "{log}");
    assert!(log.contains(&active.display().to_string()), "{log}");
    assert!(log.contains("deleted nothing"), "{log}");
    assert!(!log.contains("cutting a write"), "{log}");
    assert_eq!(
        std::fs::read(&active).unwrap(),
        damaged,
        "the segment was changed"
    );
    assert_eq!(segments(&config.spool_dir()), segs);

    // `ferry log dump` shows the damage and the frames after it, and exits 1.
    let (code, out, err) =
        ferry_tests::ferry::command(&["log", "dump", "--config", config.path().to_str().unwrap()])
            .unwrap();
    assert_eq!(code, 1, "{err}");
    assert!(out.contains("\"kind\":\"damaged\""), "{out:.2000}");
    assert!(
        out.contains("ferry-test"),
        "the frames after the damage are shown"
    );
    assert!(err.contains("damaged"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flipped_byte_in_a_sealed_segment_halts_the_sink_that_meets_it() {
    let source = Postgres::start().unwrap();
    let mut replica = Postgres::start().unwrap();
    let (s, r) = (source.connect().await, replica.connect().await);
    let ddl = "CREATE TABLE t (id int PRIMARY KEY, v text)";
    s.batch_execute(ddl).await.unwrap();
    r.batch_execute(ddl).await.unwrap();
    let config =
        FerryConfig::pg_to_pg(&source.url("postgres"), &replica.url("postgres"), "", "").unwrap();
    // Small segments, so the unapplied rows span sealed segments.
    let text = std::fs::read_to_string(config.path())
        .unwrap()
        .replace("[spool]\n", "[spool]\nsegment_mb = 1\n");
    std::fs::write(config.path(), text).unwrap();
    let run = config.start(0).unwrap();
    s.batch_execute("INSERT INTO t VALUES (0, 'before')")
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let n: i64 = r
            .query_one("SELECT count(*) FROM t", &[])
            .await
            .unwrap()
            .get(0);
        if n == 1 {
            break;
        }
        assert!(Instant::now() < deadline, "{}", run.log_text());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The replica goes away; 100 transactions of 100 rows pile up in the spool, unapplied.
    drop(r);
    replica.stop();
    for i in 0..100 {
        s.batch_execute(&format!(
            "INSERT INTO t SELECT g, repeat('y', 300) FROM generate_series({}, {}) g",
            i * 100 + 1,
            i * 100 + 100
        ))
        .await
        .unwrap();
    }
    s.batch_execute("SELECT pg_logical_emit_message(true, 'ferry-test', 'done')")
        .await
        .unwrap();
    wait_spooled(&config, "ferry-test");
    run.stop().unwrap();
    let segs = segments(&config.spool_dir());
    assert!(segs.len() >= 3, "expected sealed segments: {segs:?}");
    let sealed = segs[segs.len() - 2].clone();
    let damaged = flip_middle(&sealed);

    replica.start_again().unwrap();
    let run = config.start(1).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !run.log_text().contains("sink halted") {
        assert!(
            Instant::now() < deadline,
            "the sink never met the damage:\n{}",
            run.log_text()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // A halted sink keeps the source running (other sinks go on); ferry then exits 1.
    let (code, log) = run.terminate().unwrap();
    assert_eq!(code, 1, "a halted sink must make ferry exit 1:\n{log}");
    assert!(log.contains("corrupt data in"), "{log}");
    assert!(log.contains(&sealed.display().to_string()), "{log}");
    assert!(!log.contains("replaying it change by change"), "{log}");
    assert_eq!(
        std::fs::read(&sealed).unwrap(),
        damaged,
        "the segment was changed"
    );
    // The replica has whole transactions from before the damage only.
    let r = replica.connect().await;
    let n: i64 = r
        .query_one("SELECT count(*) FROM t", &[])
        .await
        .unwrap()
        .get(0);
    assert!(n < 10001 && (n - 1) % 100 == 0, "{n} rows on the replica");
}
