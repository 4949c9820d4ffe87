//! The spool keeps exactly what the slowest sink still needs, under `ack = "spooled"` as under
//! `ack = "applied"`: two sinks run at once, one's replica stops for a while, the spool grows
//! and its oldest segment still holds the stopped sink's position; once that sink catches up, the
//! segments every sink has applied are deleted.

#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::time::{Duration, Instant};

use ferry_tests::Postgres;
use ferry_tests::ferry::FerryConfig;

fn segments(dir: &Path) -> Vec<u64> {
    let mut v: Vec<u64> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| {
            let name = e.unwrap().file_name().into_string().unwrap();
            name.strip_suffix(".seg")?.parse().ok()
        })
        .collect();
    v.sort_unstable();
    v
}

fn cursor(dir: &Path, sink: &str) -> Option<u64> {
    std::fs::read_to_string(dir.join("cursors").join(sink))
        .ok()?
        .trim()
        .parse()
        .ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_ack_spooled_the_spool_keeps_what_the_slowest_sink_needs_and_no_more() {
    let source = Postgres::start().unwrap();
    let fast = Postgres::start().unwrap();
    let mut slow = Postgres::start().unwrap();
    let s = source.connect().await;
    s.batch_execute("CREATE TABLE t (id int PRIMARY KEY, v text)")
        .await
        .unwrap();
    let config = FerryConfig::pg_to_pg(
        &source.url("postgres"),
        &fast.url("postgres"),
        "",
        "create_tables = true",
    )
    .unwrap();
    let text = std::fs::read_to_string(config.path())
        .unwrap()
        .replace("[spool]\n", "[spool]\nack = \"spooled\"\nsegment_mb = 1\n");
    std::fs::write(
        config.path(),
        format!(
            "{text}\n[[sink]]\nname = \"slow\"\ntype = \"postgres\"\nurl = \"{}\"\n\
             create_tables = true\n",
            slow.url("postgres")
        ),
    )
    .unwrap();
    let mut ferry = config.start(0).unwrap();
    let (f, sl) = (fast.connect().await, slow.connect().await);
    s.batch_execute("INSERT INTO t VALUES (0, 'first')")
        .await
        .unwrap();
    ferry.wait_rows(&f, "t", 1).await;
    ferry.wait_rows(&sl, "t", 1).await;

    // The slow sink's replica goes away while 6 MB of changes arrive.
    drop(sl);
    slow.stop();
    for i in 0..60 {
        s.batch_execute(&format!(
            "INSERT INTO t SELECT g, repeat('x', 1000) FROM generate_series({}, {}) g",
            i * 100 + 1,
            i * 100 + 100
        ))
        .await
        .unwrap();
    }
    ferry.wait_rows(&f, "t", 6001).await;
    let spool = config.spool_dir();
    // Truncation runs every 10 s: give it two rounds, then the spool still holds what the slow
    // sink needs, from the segment its position is in.
    tokio::time::sleep(Duration::from_secs(21)).await;
    let held = segments(&spool);
    let slow_at = cursor(&spool, "slow").unwrap();
    assert!(
        held.len() >= 5,
        "the spool holds the slow sink's backlog: {held:?}"
    );
    assert!(
        held[0] <= slow_at && held[1] > slow_at,
        "{held:?} for the slow sink at {slow_at}"
    );

    // It catches up: the segments every sink has applied are deleted.
    slow.start_again().unwrap();
    let sl = slow.connect().await;
    ferry.wait_rows(&sl, "t", 6001).await;
    let deadline = Instant::now() + Duration::from_secs(45);
    loop {
        let held = segments(&spool);
        if held.len() <= 2 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the spool kept {held:?} after every sink applied it\n{}",
            ferry.log_text()
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    ferry.stop().unwrap();
}
