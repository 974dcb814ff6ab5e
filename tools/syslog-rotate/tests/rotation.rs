//! Rotation with exact keys: by size, by timestamp (an older message after a newer one), by the
//! grace period, by SIGHUP, at SIGTERM; the index never reusing a key; one stream per object.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::*;
use nix::sys::signal::Signal;

#[test]
fn size_rotation_gives_indexed_keys_and_keeps_every_line() {
    let bucket = new_bucket("size");
    // 35 lines of 100 bytes, 1000 bytes an object uncompressed: 10 + 10 + 10 + 5.
    let input = numbered_lines(0, 35, 100);
    let mut args = base_args(&bucket, "app/log");
    args.extend(["--max-object-size", "1000"]);
    let (status, events, stderr) = run(&args, &input);
    assert!(status.success(), "{stderr}");
    assert_eq!(
        keys(&bucket),
        [
            "app/log-1.log",
            "app/log-2.log",
            "app/log-3.log",
            "app/log.log"
        ]
    );
    let order = [
        "app/log.log",
        "app/log-1.log",
        "app/log-2.log",
        "app/log-3.log",
    ];
    let mut joined = Vec::new();
    for key in order {
        joined.extend(decoded(&bucket, key));
    }
    assert_eq!(joined, input);
    let mut stored = stored(&events);
    assert_eq!(stored.len(), 4);
    let position = |e: &&serde_json::Value| order.iter().position(|k| e["key"] == *k).unwrap();
    stored.sort_by_key(position);
    let lines: Vec<u64> = stored
        .iter()
        .map(|e| e["lines"].as_u64().unwrap())
        .collect();
    assert_eq!(lines, [10, 10, 10, 5]);
    assert_eq!(stored[0]["reason"], "size");
    assert_eq!(stored[3]["reason"], "eof");
    for event in &stored {
        let key = event["key"].as_str().unwrap();
        let raw = object(&bucket, key).unwrap();
        assert_eq!(event["sha256"], harness::sha256_hex(&raw), "{key}");
        assert_eq!(event["compressed_size"], raw.len() as u64);
    }
    assert_eq!(summary(&events)["lines"], 35);
}

#[test]
fn gzip_and_zstd_objects_each_decode_on_their_own_and_size_counts_compressed_bytes() {
    for (compression, ext) in [("gzip", ".gz"), ("zstd", ".zst")] {
        let bucket = new_bucket(compression);
        // Pseudo-random hex lines compress to about half: 6 MiB in, objects of about 1 MiB stored.
        let mut input = Vec::new();
        let noise = harness::random_bytes(3 << 20, 7);
        for (n, chunk) in noise.chunks(50).enumerate() {
            input.extend_from_slice(format!("{n} {}\n", hex::encode(chunk)).as_bytes());
        }
        let mut args = base_args(&bucket, "z/data");
        args.extend(["--compression", compression, "--max-object-size", "1MiB"]);
        let (status, events, stderr) = run(&args, &input);
        assert!(status.success(), "{stderr}");
        let mut stored = stored(&events);
        assert!(stored.len() >= 3, "{compression}: {} objects", stored.len());
        // Events come as uploads complete; put them in index order.
        let index_of = |key: &str| -> usize {
            let stem = key.trim_end_matches(&format!(".log{ext}")[..]);
            stem.strip_prefix("z/data-")
                .map_or(0, |n| n.parse().unwrap())
        };
        stored.sort_by_key(|e| index_of(e["key"].as_str().unwrap()));
        let mut joined = Vec::new();
        for (index, event) in stored.iter().enumerate() {
            let key = event["key"].as_str().unwrap();
            let expected = if index == 0 {
                format!("z/data.log{ext}")
            } else {
                format!("z/data-{index}.log{ext}")
            };
            assert_eq!(key, expected);
            let raw = object(&bucket, key).unwrap();
            let size = raw.len() as u64;
            if index + 1 < stored.len() {
                // Finished by size: at least the limit, and not far past it.
                assert!(size >= 1 << 20, "{key}: {size}");
                assert!(size < (1 << 20) + (256 << 10), "{key}: {size}");
            }
            let plain = decode(key, &raw);
            assert_eq!(plain.len() as u64, event["size"].as_u64().unwrap());
            joined.extend(plain);
        }
        assert_eq!(joined, input, "{compression}");
    }
}

#[test]
fn timestamp_rotation_compares_message_times_and_never_reopens() {
    let bucket = new_bucket("timestamp");
    // syslog-ng's own example: Apr01 sorts before Mar31 as text, but is newer.
    let input = b"<13>Mar 31 23:59:00 h1 app: A\n\
<13>Apr  1 00:01:00 h1 app: B\n\
<13>Mar 31 23:58:00 h1 app: C older\n\
<13>Apr  1 00:02:00 h1 app: D\n\
<13>Mar 31 23:57:00 h1 app: E older still\n";
    let mut args = base_args(&bucket, "${HOST}/");
    args.extend([
        "--input-format",
        "rfc3164",
        "--object-key-timestamp",
        "${MONTH_ABBREV}${DAY}",
    ]);
    let (status, events, stderr) = run(&args, input);
    assert!(status.success(), "{stderr}");
    assert_eq!(
        keys(&bucket),
        ["h1/Apr01.log", "h1/Mar31-1.log", "h1/Mar31.log"]
    );
    assert_eq!(decoded(&bucket, "h1/Mar31.log"), b"A\n");
    assert_eq!(decoded(&bucket, "h1/Apr01.log"), b"B\nD\n");
    assert_eq!(
        decoded(&bucket, "h1/Mar31-1.log"),
        b"C older\nE older still\n"
    );
    let first = stored(&events)
        .into_iter()
        .find(|e| e["key"] == "h1/Mar31.log")
        .expect("event for h1/Mar31.log");
    assert_eq!(first["reason"], "timestamp");
    assert_eq!(
        first["first_message_time"],
        format!("{}-03-31T23:59:00.000000Z", year())
    );
}

fn year() -> i32 {
    use chrono::Datelike;
    chrono::Utc::now().year()
}

#[test]
fn grace_period_finishes_idle_objects() {
    let bucket = new_bucket("grace");
    let mut args = base_args(&bucket, "g/log");
    args.extend(["--flush-grace-period", "1s"]);
    let mut running = Running::start(&args);
    running.write(b"one\ntwo\n");
    let event = running.next_event();
    assert_eq!(event["key"], "g/log.log");
    assert_eq!(event["reason"], "grace");
    assert_eq!(event["lines"], 2);
    running.write(b"three\n");
    let (status, events, stderr) = running.finish();
    assert!(status.success(), "{stderr}");
    assert_eq!(stored(&events)[0]["key"], "g/log-1.log");
    assert_eq!(decoded(&bucket, "g/log.log"), b"one\ntwo\n");
    assert_eq!(decoded(&bucket, "g/log-1.log"), b"three\n");
}

#[test]
fn sighup_finishes_every_open_object_now() {
    let bucket = new_bucket("hup");
    let mut args = base_args(&bucket, "${PROGRAM}");
    args.extend(["--input-format", "rfc3164", "--compression", "gzip"]);
    let mut running = Running::start(&args);
    running.write(b"Mar  1 10:00:00 h a: 1\nMar  1 10:00:00 h b: 2\n");
    std::thread::sleep(Duration::from_millis(500));
    running.signal(Signal::SIGHUP);
    let mut first: Vec<String> = (0..2)
        .map(|_| {
            let event = running.next_event();
            assert_eq!(event["reason"], "hup");
            event["key"].as_str().unwrap().to_string()
        })
        .collect();
    first.sort();
    assert_eq!(first, ["a.log.gz", "b.log.gz"]);
    running.write(b"Mar  1 10:00:01 h a: 3\n");
    let (status, events, stderr) = running.finish();
    assert!(status.success(), "{stderr}");
    assert_eq!(stored(&events)[0]["key"], "a-1.log.gz");
    assert_eq!(decoded(&bucket, "a.log.gz"), b"1\n");
    assert_eq!(decoded(&bucket, "a-1.log.gz"), b"3\n");
}

#[test]
fn sigterm_stores_everything_and_exits_0() {
    let bucket = new_bucket("term");
    let mut running = Running::start(&base_args(&bucket, "t"));
    let input = numbered_lines(0, 1000, 80);
    running.write(&input);
    std::thread::sleep(Duration::from_millis(500));
    running.signal(Signal::SIGTERM);
    // stdin stays open: the signal alone must end the run.
    let event = running.next_event();
    assert_eq!(event["reason"], "signal");
    let status = running.child.wait().expect("wait");
    assert!(status.success(), "{status:?}");
    assert_eq!(decoded(&bucket, "t.log"), input);
    assert_eq!(open_uploads(&bucket), 0);
}

#[test]
fn index_skips_existing_objects_and_uploads_in_progress() {
    let bucket = new_bucket("index");
    let put = |key: &str| {
        block_on(
            client()
                .put_object()
                .bucket(&bucket)
                .key(key)
                .body(b"old".to_vec().into())
                .send(),
        )
        .expect("put");
    };
    put("k.log");
    put("k-3.log");
    put("k-x.log");
    block_on(
        client()
            .create_multipart_upload()
            .bucket(&bucket)
            .key("k-5.log")
            .send(),
    )
    .expect("create upload");
    let (status, events, stderr) = run(&base_args(&bucket, "k"), b"new\n");
    assert!(status.success(), "{stderr}");
    assert_eq!(stored(&events)[0]["key"], "k-6.log");
    let (status, events, _) = run(&base_args(&bucket, "k"), b"newer\n");
    assert!(status.success());
    assert_eq!(stored(&events)[0]["key"], "k-7.log");
    assert_eq!(object(&bucket, "k.log").unwrap(), b"old");
    assert_eq!(object(&bucket, "k-3.log").unwrap(), b"old");
    assert_eq!(object(&bucket, "k-6.log").unwrap(), b"new\n");
}

#[test]
fn max_object_age_finishes_an_object_that_keeps_receiving() {
    let bucket = new_bucket("age");
    let mut args = base_args(&bucket, "a");
    args.extend(["--max-object-age", "1s"]);
    let mut running = Running::start(&args);
    for n in 0..15 {
        running.write(format!("{n}\n").as_bytes());
        std::thread::sleep(Duration::from_millis(100));
    }
    let (status, events, stderr) = running.finish();
    assert!(status.success(), "{stderr}");
    let stored = stored(&events);
    assert!(stored.len() >= 2, "{events:?}");
    assert!(stored.iter().any(|e| e["reason"] == "age"), "{events:?}");
    let mut joined = Vec::new();
    for key in ["a.log", "a-1.log"] {
        joined.extend(decoded(&bucket, key));
    }
    if stored.len() > 2 {
        joined.extend(decoded(&bucket, "a-2.log"));
    }
    let expected: String = (0..15).map(|n| format!("{n}\n")).collect();
    assert_eq!(String::from_utf8(joined).unwrap(), expected);
}

#[test]
fn max_open_objects_finishes_the_longest_idle_one() {
    let bucket = new_bucket("openlimit");
    let mut args = base_args(&bucket, "${PROGRAM}");
    args.extend(["--input-format", "rfc3164", "--max-open-objects", "2"]);
    let input = b"Mar  1 10:00:00 h a: 1\nMar  1 10:00:00 h b: 2\nMar  1 10:00:00 h c: 3\nMar  1 10:00:00 h b: 4\nMar  1 10:00:00 h a: 5\n";
    let (status, events, stderr) = run(&args, input);
    assert!(status.success(), "{stderr}");
    // c opens while a and b are open: a (idle longest) is finished; a again finishes c.
    assert_eq!(keys(&bucket), ["a-1.log", "a.log", "b.log", "c.log"]);
    assert_eq!(decoded(&bucket, "a.log"), b"1\n");
    assert_eq!(decoded(&bucket, "b.log"), b"2\n4\n");
    assert_eq!(decoded(&bucket, "c.log"), b"3\n");
    assert_eq!(decoded(&bucket, "a-1.log"), b"5\n");
    let limited: Vec<_> = stored(&events)
        .into_iter()
        .filter(|e| e["reason"] == "open-limit")
        .map(|e| e["key"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(limited.len(), 2, "{events:?}");
}
