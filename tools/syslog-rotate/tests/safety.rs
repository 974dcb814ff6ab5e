//! Losing nothing: kill -9 with a spool and a restart store every line exactly once and leave no
//! upload behind; a 10% fault rate between the tool and S3 loses nothing.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use nix::sys::signal::Signal;

/// Lines "r<run> <n> <hex>" of about 110 bytes that gzip cannot shrink much.
fn noisy_lines(run: u32, from: usize, count: usize) -> Vec<u8> {
    let noise = harness::random_bytes(count * 50, u64::from(run) * 1_000_003 + from as u64);
    let mut out = Vec::with_capacity(count * 120);
    for (i, chunk) in noise.chunks(50).enumerate() {
        out.extend_from_slice(
            format!("r{run} {:08} {}\n", from + i, hex::encode(chunk)).as_bytes(),
        );
    }
    out
}

fn year() -> String {
    let out = std::process::Command::new("date")
        .args(["-u", "+%Y"])
        .output()
        .expect("date");
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

fn spool_data_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .filter(|e| e.file_name().to_string_lossy().ends_with(".data"))
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

fn wait_for(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Every line of every object in the bucket, with how often it occurs.
fn line_counts(bucket: &str) -> HashMap<Vec<u8>, usize> {
    let mut counts = HashMap::new();
    for key in keys(bucket) {
        for line in decoded(bucket, &key).split(|b| *b == b'\n') {
            if !line.is_empty() {
                *counts.entry(line.to_vec()).or_insert(0) += 1;
            }
        }
    }
    counts
}

#[test]
fn kill_9_mid_upload_then_restart_stores_every_line_exactly_once() {
    let bucket = new_bucket("kill9");
    let spool = tempfile::tempdir().expect("tempdir");
    let spool_dir = spool.path().to_str().unwrap().to_string();
    let mut args = base_args(&bucket, "s/${R_YEAR}");
    args.extend([
        "--compression",
        "gzip",
        "--compresslevel",
        "1",
        "--spool-dir",
        &spool_dir,
    ]);

    // About 8 MiB of gzip: one 5 MiB part is uploaded, the rest is still open at the kill.
    let before = noisy_lines(1, 0, 130_000);
    let mut running = Running::start(&args);
    running.write(&before);
    wait_for("the first part", Duration::from_secs(30), || {
        open_uploads(&bucket) >= 1
    });
    wait_for(
        "the spool to hold every line",
        Duration::from_secs(30),
        || spool_data_bytes(spool.path()) == before.len() as u64,
    );
    running.signal(Signal::SIGKILL);
    let _ = running.child.wait();
    assert!(keys(&bucket).is_empty(), "nothing finished before the kill");
    assert_eq!(
        open_uploads(&bucket),
        1,
        "the killed run left its upload open"
    );

    // Restart with the same spool and more input.
    let after = noisy_lines(2, 0, 1000);
    let (status, events, stderr) = run(&args, &after);
    assert!(status.success(), "{stderr}");
    let stored = stored(&events);
    let recovered: Vec<_> = stored
        .iter()
        .filter(|e| e["reason"] == "recovered")
        .collect();
    assert_eq!(recovered.len(), 1, "{events:?}");
    assert_eq!(recovered[0]["lines"], 130_000);
    assert_eq!(
        recovered[0]["key"],
        format!("s/{}.log.gz", year()),
        "its reserved key"
    );
    assert_eq!(summary(&events)["recovered"], 1);
    assert_eq!(open_uploads(&bucket), 0, "no upload left behind");

    let counts = line_counts(&bucket);
    let expected: Vec<&[u8]> = before
        .split(|b| *b == b'\n')
        .chain(after.split(|b| *b == b'\n'))
        .filter(|l| !l.is_empty())
        .collect();
    assert_eq!(counts.len(), expected.len(), "every line present");
    for line in expected {
        assert_eq!(
            counts.get(line),
            Some(&1),
            "{}",
            String::from_utf8_lossy(line)
        );
    }
    // Two objects: the recovered one under its reserved key, and the new one after it.
    let keys = keys(&bucket);
    assert_eq!(keys.len(), 2, "{keys:?}");
    let leftovers: Vec<_> = std::fs::read_dir(spool.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n != "lock")
        .collect();
    assert!(leftovers.is_empty(), "spool emptied: {leftovers:?}");
}

#[test]
fn restart_after_the_object_was_stored_but_before_the_spool_was_cleared_stores_nothing_twice() {
    let bucket = new_bucket("storedtwice");
    let spool = tempfile::tempdir().expect("tempdir");
    let spool_dir = spool.path().to_str().unwrap().to_string();
    let mut args = base_args(&bucket, "d");
    args.extend(["--spool-dir", &spool_dir]);
    // A clean run, then put its spool entry back as if the crash came right after completion.
    let mut running = Running::start(&args);
    running.write(b"only once\n");
    wait_for("the spool entry", Duration::from_secs(10), || {
        spool_data_bytes(spool.path()) == 10
    });
    let saved: Vec<(std::path::PathBuf, Vec<u8>)> = std::fs::read_dir(spool.path())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name() != "lock")
        .map(|e| (e.path(), std::fs::read(e.path()).unwrap()))
        .collect();
    let (status, _, stderr) = running.finish();
    assert!(status.success(), "{stderr}");
    assert_eq!(keys(&bucket), ["d.log"]);
    for (path, content) in &saved {
        std::fs::write(path, content).unwrap();
    }
    let (status, events, stderr) = run(&args, b"");
    assert!(status.success(), "{stderr}");
    assert!(stored(&events).is_empty(), "{events:?}");
    assert_eq!(keys(&bucket), ["d.log"]);
    assert_eq!(decoded(&bucket, "d.log"), b"only once\n");
    assert_eq!(spool_data_bytes(spool.path()), 0);
}

#[test]
fn ten_percent_faults_lose_nothing() {
    let proxy = harness::FaultProxy::start(&["--error-rate", "0.1", "--seed", "6"]);
    let bucket = new_bucket("faults");
    // Many small objects (PutObject) and two multipart ones.
    let small = noisy_lines(3, 0, 5000);
    let mut args = base_args(&bucket, "small");
    args.extend(["--endpoint-url", &proxy.url, "--max-object-size", "16KiB"]);
    let (status, events, stderr) = run(&args, &small);
    assert!(status.success(), "{stderr}");
    assert!(stored(&events).len() >= 10);
    let big = noisy_lines(4, 0, 110_000);
    let mut args = base_args(&bucket, "big");
    args.extend(["--endpoint-url", &proxy.url, "--max-object-size", "6MiB"]);
    let (status, events, stderr) = run(&args, &big);
    assert!(status.success(), "{stderr}");
    assert!(
        stored(&events)
            .iter()
            .any(|e| e["parts"].as_u64() == Some(2))
    );
    let stats = proxy.stats();
    let faults =
        stats["errors_500"].as_u64().unwrap_or(0) + stats["errors_503"].as_u64().unwrap_or(0);
    assert!(faults >= 3, "the proxy injected faults: {stats}");

    let counts = line_counts(&bucket);
    let expected: Vec<&[u8]> = small
        .split(|b| *b == b'\n')
        .chain(big.split(|b| *b == b'\n'))
        .filter(|l| !l.is_empty())
        .collect();
    assert_eq!(counts.len(), expected.len());
    for line in expected {
        assert_eq!(counts.get(line), Some(&1));
    }
    assert_eq!(open_uploads(&bucket), 0);
}

#[test]
fn a_full_spool_finishes_objects_early_and_loses_nothing() {
    let bucket = new_bucket("spoolfull");
    let spool = tempfile::tempdir().expect("tempdir");
    let spool_dir = spool.path().to_str().unwrap().to_string();
    let mut args = base_args(&bucket, "f");
    args.extend(["--spool-dir", &spool_dir, "--spool-max-size", "512KiB"]);
    let input = noisy_lines(5, 0, 30_000); // about 3.3 MiB
    let (status, events, stderr) = run(&args, &input);
    assert!(status.success(), "{stderr}");
    let stored = stored(&events);
    assert!(
        stored
            .iter()
            .filter(|e| e["reason"] == "spool-full")
            .count()
            >= 3,
        "{events:?}"
    );
    let counts = line_counts(&bucket);
    assert_eq!(counts.len(), 30_000);
    assert!(counts.values().all(|n| *n == 1));
    assert_eq!(spool_data_bytes(spool.path()), 0);
}

#[test]
fn a_permanent_error_exits_non_zero_and_keeps_the_spool_for_the_next_run() {
    let bucket = new_bucket("permanent");
    let spool = tempfile::tempdir().expect("tempdir");
    let spool_dir = spool.path().to_str().unwrap().to_string();
    let mut args = base_args(&bucket, "p");
    args.extend(["--spool-dir", &spool_dir]);
    // Crash with lines in the spool.
    let mut running = Running::start(&args);
    let input = numbered_lines(0, 100, 50);
    running.write(&input);
    wait_for("the spool", Duration::from_secs(10), || {
        spool_data_bytes(spool.path()) == input.len() as u64
    });
    running.signal(Signal::SIGKILL);
    let _ = running.child.wait();

    // Wrong credentials: access denied, exit 4, one line, and the spool untouched.
    let output = std::process::Command::new(harness::bin(TOOL))
        .args(&args)
        .env("AWS_SECRET_ACCESS_KEY", "wrong-secret")
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(4), "{stderr}");
    let last = stderr.trim_end().lines().last().unwrap_or_default();
    assert!(last.starts_with("syslog-rotate: "), "{stderr}");
    assert_eq!(spool_data_bytes(spool.path()), input.len() as u64);
    assert!(keys(&bucket).is_empty());

    // The next good run stores it.
    let (status, events, stderr) = run(&args, b"");
    assert!(status.success(), "{stderr}");
    assert_eq!(stored(&events)[0]["reason"], "recovered");
    assert_eq!(decoded(&bucket, "p.log"), input);
}

#[test]
fn recovery_never_overwrites_an_object_another_writer_put_at_the_reserved_key() {
    let bucket = new_bucket("taken");
    let spool = tempfile::tempdir().expect("tempdir");
    let spool_dir = spool.path().to_str().unwrap().to_string();
    let mut args = base_args(&bucket, "t");
    args.extend(["--spool-dir", &spool_dir]);
    let mut running = Running::start(&args);
    let input = numbered_lines(0, 20, 40);
    running.write(&input);
    wait_for("the spool", Duration::from_secs(10), || {
        spool_data_bytes(spool.path()) == input.len() as u64
    });
    running.signal(Signal::SIGKILL);
    let _ = running.child.wait();
    // Someone else stores an object at the key the spool had reserved.
    block_on(
        client()
            .put_object()
            .bucket(&bucket)
            .key("t.log")
            .body(b"someone else's\n".to_vec().into())
            .send(),
    )
    .expect("put");
    let (status, events, stderr) = run(&args, b"");
    assert!(status.success(), "{stderr}");
    assert_eq!(stored(&events)[0]["key"], "t-1.log");
    assert_eq!(decoded(&bucket, "t.log"), b"someone else's\n");
    assert_eq!(decoded(&bucket, "t-1.log"), input);
    assert_eq!(spool_data_bytes(spool.path()), 0);
}
