//! Spool throughput for 200-byte events: append with group commit, and read back.
//!
//! Run: `cargo bench -p ferry-spool --bench spool` (set `FERRY_BENCH_DIR` to measure another disk,
//! `FERRY_BENCH_MB` to change the volume, default 512). Prints MB/s and events/s, and the same
//! bytes written with plain `write` + `fdatasync` at the same batch size as the peer: the ratio
//! says how much of the disk's ceiling the spool reaches. Timings are noisy; compare ratios.

use std::fs::File;
use std::io::Write;
use std::time::{Duration, Instant};

use ferry_proto::{Event, frame, samples};
use ferry_spool::{Offset, SpoolReader, SpoolWriter, WriterOptions};

const EVENT_BYTES: usize = 200;

fn main() {
    let mb: usize = std::env::var("FERRY_BENCH_MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(512);
    let base = std::env::var_os("FERRY_BENCH_DIR").map(std::path::PathBuf::from);
    let tmp = match &base {
        Some(b) => tempfile::tempdir_in(b),
        None => tempfile::tempdir(),
    }
    .expect("temporary directory");

    let sample = samples::insert(1, 0, EVENT_BYTES);
    let frame_len = frame::encode_to_vec(&sample).expect("encode").len();
    let events = mb * 1_000_000 / frame_len;
    println!(
        "spool bench: {events} events of {frame_len} bytes framed ({mb} MB), dir {}",
        tmp.path().display()
    );

    for batch_bytes in [256usize << 10, 1 << 20, 4 << 20] {
        let batch = (batch_bytes / frame_len).max(1);
        let dir = tmp.path().join(format!("spool-{batch_bytes}"));
        let (mut w, _) = SpoolWriter::open(&dir, WriterOptions::default()).expect("open");
        let evs: Vec<Event> = (0..1024)
            .map(|i| samples::insert(1, i, EVENT_BYTES))
            .collect();
        let start = Instant::now();
        for i in 0..events {
            w.append(&evs[i % evs.len()]).expect("append");
            if (i + 1) % batch == 0 {
                w.commit().expect("commit");
            }
        }
        let end = w.commit().expect("commit");
        let t_spool = start.elapsed();
        drop(w);

        let peer = peer_write(
            &tmp.path().join(format!("peer-{batch_bytes}")),
            end.0,
            batch_bytes,
        );
        report(
            &format!("append, fsync per {:>4} KiB", batch_bytes >> 10),
            end.0,
            events,
            t_spool,
        );
        report("  peer: write+fdatasync", end.0, events, peer);
        println!(
            "  ratio spool/peer throughput: {:.2}",
            peer.as_secs_f64() / t_spool.as_secs_f64()
        );

        let start = Instant::now();
        let mut r = SpoolReader::open(&dir, Offset(0)).expect("reader");
        let mut n = 0usize;
        while let Some((_, ev)) = r.try_next().expect("read") {
            std::hint::black_box(&ev);
            n += 1;
        }
        assert_eq!(n, events);
        report("read (decode + CRC)", end.0, events, start.elapsed());
    }
}

fn peer_write(path: &std::path::Path, total: u64, batch_bytes: usize) -> Duration {
    let buf = vec![0x5au8; batch_bytes];
    let mut f = File::create(path).expect("peer file");
    let start = Instant::now();
    let mut left = total as usize;
    while left > 0 {
        let n = left.min(batch_bytes);
        f.write_all(&buf[..n]).expect("write");
        f.sync_data().expect("fdatasync");
        left -= n;
    }
    start.elapsed()
}

fn report(what: &str, bytes: u64, events: usize, t: Duration) {
    let s = t.as_secs_f64();
    println!(
        "{what:<32} {:>8.1} MB/s {:>11.0} events/s  ({:.2} s)",
        bytes as f64 / 1e6 / s,
        events as f64 / s,
        s
    );
}
