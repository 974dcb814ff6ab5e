//! tape-changer against the real S3 test server: round trips, Amanda's key and header format,
//! loud failures on lost or damaged blocks, the tape cycle, state locking and rebuilding.

mod common;

use common::{Set, one_line};
use harness::{object, random_bytes, sha256_hex};

#[test]
fn label_load_write_read_inventory_erase_round_trip() {
    let set = Set::new("roundtrip", "", "");
    set.tc()
        .args(["label", "--slot", "1", "DailySet1-01"])
        .assert()
        .success();
    assert_eq!(
        object(&set.bucket, &set.key(1, "special-tapestart")).as_deref(),
        Some(&b"AMANDA: TAPESTART DATE X TAPE DailySet1-01\n\x0c\n"[..])
    );
    let out = set.tc().args(["load", "next"]).assert().success();
    let loaded = harness::event(&out.get_output().stdout);
    assert_eq!(loaded["slot"], 1);
    assert_eq!(loaded["how"], "fresh");

    let first = random_bytes(3 * 1024 * 1024 + 123, 1);
    let second = b"small file\n".to_vec();
    let event = set.write(&first, "/home");
    assert_eq!(event["file"], 1);
    assert_eq!(event["blocks"], 4);
    assert_eq!(event["size"], first.len());
    assert_eq!(event["sha256"], sha256_hex(&first));
    assert_eq!(event["tape_started"], true);
    let datestamp = event["datestamp"].as_str().expect("datestamp").to_string();
    assert_eq!(set.write(&second, "/etc")["file"], 2);

    // Amanda's exact layout: label with the run date, header objects, 16-hex-digit block keys.
    let tapestart = object(&set.bucket, &set.key(1, "special-tapestart")).expect("tapestart");
    assert_eq!(
        String::from_utf8_lossy(&tapestart),
        format!("AMANDA: TAPESTART DATE {datestamp} TAPE DailySet1-01\n\x0c\n")
    );
    let header = object(&set.bucket, &set.key(1, "f00000001-filestart")).expect("filestart");
    assert_eq!(
        String::from_utf8_lossy(&header),
        format!(
            "AMANDA: SPLIT_FILE {datestamp} web1 /home  part 1/1  lev 0 comp N program /bin/tar\nTo restore, position tape at start of file and run:\n\tdd if=<tape> bs=32k skip=1 | \n\x0c\n"
        )
    );
    let block3 =
        object(&set.bucket, &set.key(1, "f00000001-b0000000000000003.data")).expect("block 3");
    assert_eq!(block3, first[3 << 20..]);
    assert!(object(&set.bucket, &set.key(1, "f00000001-b0000000000000004.data")).is_none());
    let manifest: serde_json::Value = serde_json::from_slice(
        &object(&set.bucket, &set.key(1, "f00000001-manifest.json")).expect("manifest"),
    )
    .expect("manifest is JSON");
    assert_eq!(manifest["blocks"], 4);
    assert_eq!(manifest["sha256"], sha256_hex(&first));

    let out = set.tc().args(["read", "--file", "1"]).assert().success();
    assert!(out.get_output().stdout == first, "file 1 differs");
    let read_event = harness::event(&out.get_output().stderr);
    assert_eq!(read_event["verified"], "manifest");
    let out = set
        .tc()
        .args(["read", "--label", "DailySet1-01", "--file", "2", "--raw"])
        .assert()
        .success();
    let raw = &out.get_output().stdout;
    assert_eq!(raw.len(), 32 * 1024 + second.len());
    assert!(raw.starts_with(b"AMANDA: SPLIT_FILE "));
    assert_eq!(&raw[32 * 1024..], &second[..]);

    let inventory = set.inventory();
    let slot1 = &inventory["slots"][0];
    assert_eq!(slot1["label"], "DailySet1-01");
    assert_eq!(slot1["files"], 2);
    assert_eq!(slot1["bytes"], first.len() + second.len());
    assert_eq!(slot1["contents"][0]["sha256"], sha256_hex(&first));
    assert_eq!(slot1["contents"][1]["disk"], "/etc");
    assert_eq!(inventory["slots"][1]["label"], serde_json::Value::Null);

    let out = set
        .tc()
        .args(["devcheck", "--slot", "1"])
        .assert()
        .success();
    let text = String::from_utf8_lossy(&out.get_output().stdout).to_string();
    assert!(
        text.starts_with("SUCCESS\nlabel DailySet1-01 time "),
        "{text}"
    );

    // Erase is refused inside the tape cycle, then forced; the bucket stays.
    set.tc().args(["erase", "--slot", "1"]).assert().code(7);
    assert!(object(&set.bucket, &set.key(1, "f00000001-filestart")).is_some());
    set.tc()
        .args(["erase", "--slot", "1", "--force"])
        .assert()
        .success();
    assert!(set.keys().is_empty(), "left: {:?}", set.keys());
    let out = set.tc().args(["devcheck", "--slot", "1"]).assert().code(3);
    assert!(String::from_utf8_lossy(&out.get_output().stdout).contains("VOLUME_UNLABELED"));
}

#[test]
fn a_300_mib_file_spans_many_blocks() {
    let set = Set::new("big", "", "BLOCK_SIZE = \"8MiB\"\nNB_THREADS_BACKUP = 4");
    set.label_and_load(2);
    let data = random_bytes(300 << 20, 300);
    let event = set.write(&data, "/var");
    assert_eq!(event["blocks"], 38);
    assert_eq!(event["sha256"], sha256_hex(&data));
    let blocks = set.keys().iter().filter(|k| k.ends_with(".data")).count();
    assert_eq!(blocks, 38);
    let out = set
        .tc()
        .args(["read", "--slot", "2", "--file", "1"])
        .assert()
        .success();
    assert_eq!(out.get_output().stdout.len(), data.len());
    assert_eq!(sha256_hex(&out.get_output().stdout), sha256_hex(&data));
}

#[test]
fn a_missing_or_damaged_block_fails_the_read_loudly() {
    let set = Set::new("lostblock", "", "");
    set.label_and_load(1);
    let data = random_bytes(5 << 20, 5);
    set.write(&data, "/home");
    set.write(&data, "/srv");

    // Block 2 of file 1 lost: Amanda would stop after two blocks without a word.
    set.delete(&set.key(1, "f00000001-b0000000000000002.data"));
    let out = set.tc().args(["read", "--file", "1"]).assert().code(5);
    let line = one_line(&out.get_output().stderr);
    assert!(
        line.contains("block 2 of file 1") && line.contains("missing"),
        "{line}"
    );
    assert!(
        out.get_output().stdout.len() <= 2 << 20,
        "wrote past the hole"
    );

    // Block 3 of file 2 replaced by other bytes of the same size.
    set.put(
        &set.key(1, "f00000002-b0000000000000003.data"),
        &random_bytes(1 << 20, 77),
    );
    let out = set.tc().args(["read", "--file", "2"]).assert().code(5);
    let line = one_line(&out.get_output().stderr);
    assert!(
        line.contains("block 3 of file 2") && line.contains("damaged"),
        "{line}"
    );
    assert!(out.get_output().stdout.len() <= 3 << 20);

    // Without a manifest (as Amanda writes files) a gap before later blocks is still refused.
    set.delete(&set.key(1, "f00000001-manifest.json"));
    let out = set.tc().args(["read", "--file", "1"]).assert().code(5);
    let line = one_line(&out.get_output().stderr);
    assert!(
        line.contains("block 2 is missing but block 3 exists"),
        "{line}"
    );
    assert!(out.get_output().stdout.is_empty());

    // A file header that is not Amanda's.
    set.put(
        &set.key(1, "f00000002-filestart"),
        b"#!/bin/sh\necho hello\n",
    );
    let out = set.tc().args(["read", "--file", "2"]).assert().code(5);
    assert!(one_line(&out.get_output().stderr).contains("not an Amanda header"));
    assert!(out.get_output().stdout.is_empty());

    // A file that is not there.
    let out = set.tc().args(["read", "--file", "9"]).assert().code(3);
    assert!(one_line(&out.get_output().stderr).contains("has no file 9 (it holds 2 files)"));
}

#[test]
fn the_tape_cycle_chooses_like_amanda() {
    let set = Set::new("cycle", "tapecycle = 2\nautolabel = \"DailySet1-%%\"", "");
    let mut chosen = Vec::new();
    for (run, stamp) in [
        "20260101000000",
        "20260102000000",
        "20260103000000",
        "20260104000000",
        "20260105000000",
    ]
    .iter()
    .enumerate()
    {
        let out = set.tc().args(["load", "next"]).assert().success();
        let event = harness::event(&out.get_output().stdout);
        chosen.push((
            event["slot"].as_u64().expect("slot"),
            event["how"].as_str().expect("how").to_string(),
        ));
        set.tc()
            .args(["write", "--host", "h", "--disk", "/d", "--datestamp", stamp])
            .write_stdin(format!("run {run}"))
            .assert()
            .success();
    }
    let how = |s: &str| s.to_string();
    assert_eq!(
        chosen,
        vec![
            (1, how("autolabel")),
            (2, how("autolabel")),
            (3, how("autolabel")),
            (1, how("reuse")),
            (2, how("reuse")),
        ]
    );
    // Slot 1 was started over: one file, the new date.
    let inventory = set.inventory();
    assert_eq!(inventory["slots"][0]["datestamp"], "20260104000000");
    assert_eq!(inventory["slots"][0]["files"], 1);
    let out = set
        .tc()
        .args(["read", "--slot", "1", "--file", "1"])
        .assert()
        .success();
    assert_eq!(out.get_output().stdout, b"run 3");

    // Relabelling the newest tape (slot 2, inside the cycle) is refused, then forced.
    let out = set
        .tc()
        .args(["label", "--slot", "2", "DailySet1-22"])
        .assert()
        .code(7);
    assert!(one_line(&out.get_output().stderr).contains("inside the tape cycle"));
    assert!(object(&set.bucket, &set.key(2, "f00000001-filestart")).is_some());
    set.tc()
        .args(["label", "--slot", "2", "DailySet1-22", "--force"])
        .assert()
        .success();
    assert!(object(&set.bucket, &set.key(2, "f00000001-filestart")).is_none());

    // tapecycle 3 with every slot written, no blank tape: nothing may be overwritten.
    std::fs::write(
        &set.config,
        std::fs::read_to_string(&set.config)
            .expect("config")
            .replace("tapecycle = 2", "tapecycle = 4"),
    )
    .expect("config");
    set.tc()
        .args(["label", "--slot", "2", "DailySet1-02", "--force"])
        .assert()
        .success();
    set.tc().args(["load", "2"]).assert().success();
    set.tc()
        .args([
            "write",
            "--host",
            "h",
            "--disk",
            "/d",
            "--datestamp",
            "20260106000000",
        ])
        .write_stdin("x")
        .assert()
        .success();
    let out = set.tc().args(["load", "next"]).assert().code(7);
    assert!(one_line(&out.get_output().stderr).contains("inside the tape cycle"));
}

/// A config of three slots with `autolabel` (and no labelstr: MATCH-AUTOLABEL), and slot 1
/// holding a tape-start object that is not an Amanda header.
fn autolabel_set(name: &str, autolabel: &str, extra: &str) -> Set {
    let set = Set::new(name, "", "");
    std::fs::write(
        &set.config,
        format!(
            "slots = \"s3:{}/DailySet1/slot-{{01..03}}/\"\nautolabel = '{autolabel}'\n{extra}\n[device]\nBLOCK_SIZE = \"1MiB\"\n",
            set.bucket
        ),
    )
    .expect("config");
    set.put(&set.key(1, "special-tapestart"), b"PK\x03\x04 a zip file");
    set
}

/// `load next`, then a write dated `stamp`; returns the `loaded` event.
fn load_next_and_write(set: &Set, stamp: &str) -> serde_json::Value {
    let out = set.tc().args(["load", "next"]).assert().success();
    let loaded = harness::event(&out.get_output().stdout);
    set.tc()
        .args(["write", "--host", "h", "--disk", "/d", "--datestamp", stamp])
        .write_stdin(format!("dump of {stamp}"))
        .assert()
        .success();
    loaded
}

#[test]
fn autolabel_numbers_and_conditions_are_amandas() {
    // "T-%%" empty non-amanda: the foreign slot may be labelled, with the lowest free number.
    let set = autolabel_set("autolabel", "\"T-%%\" empty non-amanda", "");
    set.tc().args(["load", "3"]).assert().success();
    let first = load_next_and_write(&set, "20260101000000");
    assert_eq!(
        serde_json::json!([first["slot"], first["how"], first["label"]]),
        serde_json::json!([1, "autolabel", "T-01"])
    );
    assert_eq!(
        object(&set.bucket, &set.key(1, "special-tapestart")).as_deref(),
        Some(&b"AMANDA: TAPESTART DATE 20260101000000 TAPE T-01\n\x0c\n"[..])
    );
    let second = load_next_and_write(&set, "20260102000000");
    assert_eq!(
        serde_json::json!([second["slot"], second["how"], second["label"]]),
        serde_json::json!([2, "autolabel", "T-02"])
    );
    // MATCH-AUTOLABEL (the default labelstr with autolabel): T- and two digits, nothing else.
    let out = set
        .tc()
        .args(["label", "--slot", "3", "T-7"])
        .assert()
        .code(2);
    assert!(
        one_line(&out.get_output().stderr)
            .contains("does not match labelstr MATCH-AUTOLABEL (autolabel 'T-%%')")
    );

    // The default conditions (volume-error empty): the non-Amanda slot is never chosen, and a
    // number a tape already has is skipped (slot 3 gets T-02, not its slot number).
    let set = autolabel_set("autolabel-default", "T-%%", "tapecycle = 2");
    set.tc()
        .args(["label", "--slot", "2", "T-01"])
        .assert()
        .success();
    let mut chosen = Vec::new();
    for stamp in [
        "20260101000000",
        "20260102000000",
        "20260103000000",
        "20260104000000",
    ] {
        let loaded = load_next_and_write(&set, stamp);
        chosen.push(format!(
            "{} {} {}",
            loaded["slot"],
            loaded["how"].as_str().expect("how"),
            loaded["label"].as_str().expect("label")
        ));
    }
    assert_eq!(
        chosen,
        [
            "2 fresh T-01",
            "3 autolabel T-02",
            "2 reuse T-01",
            "3 reuse T-02"
        ]
    );
    assert_eq!(
        object(&set.bucket, &set.key(1, "special-tapestart")).as_deref(),
        Some(&b"PK\x03\x04 a zip file"[..])
    );
    let inventory = set.inventory();
    assert_eq!(inventory["slots"][0]["label"], serde_json::Value::Null);
    assert!(
        inventory["slots"][0]["error"]
            .as_str()
            .is_some_and(|e| e.contains("not an Amanda header")),
        "{inventory}"
    );

    // A template Amanda cannot use here: one line, exit 2, nothing touched.
    let out = set
        .tc()
        .args(["--autolabel", "$b-%%", "load", "next"])
        .assert()
        .code(2);
    assert!(one_line(&out.get_output().stderr).contains("$b (the barcode) has no meaning"));
}

#[test]
fn two_concurrent_writes_take_turns_on_the_state() {
    let set = Set::new("lock", "", "");
    set.label_and_load(1);
    let a = random_bytes(3 << 20, 11);
    let b = random_bytes(3 << 20, 12);
    let spawn = |data: &Vec<u8>, disk: &str| {
        let mut child = std::process::Command::new(harness::bin("tape-changer"))
            .arg("-c")
            .arg(&set.config)
            .args(["write", "--host", "web1", "--disk", disk])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn");
        let mut stdin = child.stdin.take().expect("stdin");
        let data = data.clone();
        let feeder = std::thread::spawn(move || {
            use std::io::Write;
            stdin.write_all(&data).expect("feed");
        });
        (child, feeder)
    };
    let (first, feed_a) = spawn(&a, "/a");
    let (second, feed_b) = spawn(&b, "/b");
    feed_a.join().expect("feeder");
    feed_b.join().expect("feeder");
    let outputs = [
        first.wait_with_output().expect("wait"),
        second.wait_with_output().expect("wait"),
    ];
    let mut files: Vec<u64> = outputs
        .iter()
        .map(|o| {
            assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
            harness::event(&o.stdout)["file"].as_u64().expect("file")
        })
        .collect();
    files.sort();
    assert_eq!(files, vec![1, 2]);
    let inventory = set.inventory();
    assert_eq!(inventory["slots"][0]["files"], 2);
    for file in 1..=2 {
        let out = set
            .tc()
            .args(["read", "--file", &file.to_string()])
            .assert()
            .success();
        let got = &out.get_output().stdout;
        assert!(*got == a || *got == b, "file {file} is neither input");
    }
}

#[test]
fn inventory_rescan_rebuilds_the_state_from_s3() {
    let set = Set::new("rescan", "", "");
    set.label_and_load(3);
    let data = random_bytes(1_500_000, 3);
    set.write(&data, "/home");
    let before = set.inventory();

    // Lost state: rebuilt from S3 with the same contents (the loaded slot is not on S3).
    std::fs::remove_file(set.state_file()).expect("remove state");
    let rebuilt = set.inventory();
    assert_eq!(rebuilt["slots"], before["slots"]);
    // Garbage state: the same.
    std::fs::write(set.state_file(), "{ not json").expect("garbage");
    assert_eq!(set.inventory()["slots"], before["slots"]);

    // A file added behind our back (as Amanda would) shows after --rescan.
    set.tc().args(["load", "3"]).assert().success();
    let stale = set.state_file();
    let saved = std::fs::read_to_string(&stale).expect("state");
    set.write(b"second", "/etc");
    std::fs::write(&stale, saved).expect("put back the old state");
    assert_eq!(set.inventory()["slots"][2]["files"], 1);
    let out = set
        .tc()
        .args(["inventory", "--rescan", "--json"])
        .assert()
        .success();
    let fresh = harness::event(&out.get_output().stdout);
    assert_eq!(fresh["slots"][2]["files"], 2);
    assert_eq!(
        fresh["slots"][2]["contents"][0]["sha256"],
        sha256_hex(&data)
    );
    assert_eq!(
        fresh["slots"][2]["contents"][1]["sha256"],
        sha256_hex(b"second")
    );
}

#[test]
fn bad_input_gets_one_line_and_changes_nothing() {
    let set = Set::new("badinput", "tape_length = \"2MiB\"", "");
    // A slot string that does not parse.
    let out = set
        .tc()
        .args(["--slots", "s3:bkt/slot-{01,02", "inventory"])
        .assert()
        .code(2);
    assert!(one_line(&out.get_output().stderr).contains("without a matching"));
    // A label that does not match labelstr.
    let out = set
        .tc()
        .args(["label", "--slot", "1", "Weekly-01"])
        .assert()
        .code(2);
    assert!(one_line(&out.get_output().stderr).contains("does not match labelstr"));
    // A missing slot.
    let out = set
        .tc()
        .args(["label", "--slot", "9", "DailySet1-09"])
        .assert()
        .code(2);
    assert!(one_line(&out.get_output().stderr).contains("no slot 9"));
    assert!(set.keys().is_empty());
    // Write with nothing loaded.
    let out = set
        .tc()
        .args(["write", "--host", "h", "--disk", "/d"])
        .write_stdin("x")
        .assert()
        .code(2);
    assert!(one_line(&out.get_output().stderr).contains("no tape loaded"));

    // A full tape: the file that does not fit leaves nothing behind.
    set.label_and_load(1);
    set.write(&random_bytes(1 << 20, 1), "/a");
    let keys_before = set.keys();
    let out = set
        .tc()
        .args(["write", "--host", "h", "--disk", "/b"])
        .write_stdin(random_bytes(3 << 20, 2))
        .assert()
        .code(6);
    assert!(one_line(&out.get_output().stderr).contains("is full"));
    assert_eq!(set.keys(), keys_before);
    assert_eq!(set.inventory()["slots"][0]["files"], 1);

    // A header that is not Amanda's.
    set.put(
        &set.key(2, "special-tapestart"),
        b"PK\x03\x04 this is a zip file",
    );
    let out = set.tc().args(["devcheck", "--slot", "2"]).assert().code(5);
    assert!(String::from_utf8_lossy(&out.get_output().stdout).contains("VOLUME_ERROR"));
    assert!(one_line(&out.get_output().stderr).contains("not an Amanda header"));
    let out = set
        .tc()
        .args(["label", "--slot", "2", "DailySet1-02"])
        .assert()
        .code(5);
    assert!(one_line(&out.get_output().stderr).contains("without --force"));
    assert_eq!(
        object(&set.bucket, &set.key(2, "special-tapestart")).as_deref(),
        Some(&b"PK\x03\x04 this is a zip file"[..])
    );
}

/// Starts a slow write, waits until a block is stored, sends `signal`; returns the exit status
/// and the keys left in the bucket.
fn interrupt_a_write(
    label: &str,
    signal: nix::sys::signal::Signal,
) -> (Option<i32>, Vec<String>, Set) {
    let set = Set::new(
        label,
        "",
        "MAX_SEND_SPEED = \"256KiB\"\nNB_THREADS_BACKUP = 1",
    );
    set.label_and_load(1);
    let mut child = std::process::Command::new(harness::bin("tape-changer"))
        .arg("-c")
        .arg(&set.config)
        .args(["write", "--host", "web1", "--disk", "/slow"])
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut stdin = child.stdin.take().expect("stdin");
    let feeder = std::thread::spawn(move || {
        use std::io::Write;
        let _ = stdin.write_all(&random_bytes(8 << 20, 9));
    });
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !set.keys().iter().any(|k| k.ends_with(".data")) {
        assert!(std::time::Instant::now() < deadline, "no block was written");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), signal).expect("kill");
    let out = child.wait_with_output().expect("wait");
    drop(feeder);
    let keys = set.keys();
    (out.status.code(), keys, set)
}

#[test]
fn sigterm_during_a_write_leaves_no_blocks() {
    let (code, keys, set) = interrupt_a_write("sigterm", nix::sys::signal::Signal::SIGTERM);
    assert_eq!(code, Some(143));
    assert_eq!(keys, vec![set.key(1, "special-tapestart")]);
}

#[test]
fn sigint_during_a_write_leaves_no_blocks() {
    let (code, keys, set) = interrupt_a_write("sigint", nix::sys::signal::Signal::SIGINT);
    assert_eq!(code, Some(130));
    assert_eq!(keys, vec![set.key(1, "special-tapestart")]);
    // The tape is usable: the next write is file 1.
    assert_eq!(set.write(b"after", "/x")["file"], 1);
}
