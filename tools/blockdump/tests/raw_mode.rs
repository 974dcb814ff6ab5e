//! Raw mode: images and loop devices dumped and restored byte for byte with every compression,
//! the standard decoders read the output, holes cost nothing, damaged streams fail restore.

mod common;

use std::fs;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

/// A 48 MiB sparse image: random data, text, a written run of zeros, holes, data at the end.
fn sample_image(dir: &Path) -> PathBuf {
    let path = dir.join("disk.img");
    let file = fs::File::create(&path).expect("image");
    file.set_len(48 << 20).expect("len");
    file.write_all_at(&random_bytes(2 << 20, 1), 0)
        .expect("write");
    let text: Vec<u8> = (0..40_000)
        .flat_map(|i| format!("log line {i}: all is well\n").into_bytes())
        .collect();
    file.write_all_at(&text, 5 << 20).expect("write");
    file.write_all_at(&vec![0u8; 3 << 20], 12 << 20)
        .expect("zeros");
    file.write_all_at(&random_bytes(12345, 2), (48 << 20) - 12345)
        .expect("tail");
    path
}

fn decode(codec: &str, stream: &Path) -> Vec<u8> {
    let out = match codec {
        "zstd" => Command::new("zstd").arg("-dc").arg(stream).output(),
        "gzip" => Command::new("gunzip").arg("-c").arg(stream).output(),
        _ => return fs::read(stream).expect("read"),
    }
    .expect("decoder");
    assert_ok(&out);
    out.stdout
}

#[test]
fn raw_roundtrip_every_compression() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let image = sample_image(tmp.path());
    let bytes = fs::read(&image).expect("image");
    let sha = sha256_hex(&bytes);
    for codec in ["zstd", "gzip", "none"] {
        let out = blockdump()
            .args([
                "--mode",
                "raw",
                "--compress",
                codec,
                "--chunk-size",
                "256KiB",
            ])
            .arg(&image)
            .output()
            .expect("run");
        assert!(
            out.status.success(),
            "{codec}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let ev = event(&out.stderr);
        assert_eq!(ev["event"], "dump_complete");
        assert_eq!(ev["mode"], "raw");
        assert_eq!(ev["sha256"], sha.as_str(), "{codec}");
        assert_eq!(ev["size"], 48 << 20);
        assert_eq!(ev["bytes_out"], out.stdout.len() as u64);
        // Holes and the written zeros: at least 38 MiB never compressed.
        assert!(ev["zero_bytes"].as_u64().expect("zero") >= 38 << 20, "{ev}");
        if codec != "none" {
            assert!(
                out.stdout.len() < 4 << 20,
                "{codec}: {} bytes",
                out.stdout.len()
            );
        }
        let stream = tmp.path().join(format!("dump.{codec}"));
        fs::write(&stream, &out.stdout).expect("save");
        // The standard tool gives the image byte for byte.
        assert!(
            decode(codec, &stream) == bytes,
            "{codec} decoder output differs"
        );

        // blockdump restore to a new image file: same bytes, sparse.
        let restored = tmp.path().join(format!("restored.{codec}"));
        let out = blockdump()
            .arg("restore")
            .arg(&restored)
            .args(["--expect-sha256", &sha])
            .pipe_stdin(&stream)
            .expect("stdin")
            .output()
            .expect("run");
        assert!(
            out.status.success(),
            "{codec}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let ev = event(&out.stderr);
        assert_eq!(ev["event"], "restore_complete");
        assert_eq!(ev["target_kind"], "image");
        assert_eq!(ev["compression"], codec);
        let verified = if codec == "none" {
            "expected"
        } else {
            "stream+expected"
        };
        assert_eq!(ev["verified"], verified);
        assert!(fs::read(&restored).expect("restored") == bytes);
        assert!(
            allocated(&restored) < 12 << 20,
            "{codec}: {} bytes allocated",
            allocated(&restored)
        );
    }
}

#[test]
fn raw_from_a_loop_device_and_back_onto_one() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let image = sample_image(tmp.path());
    let sha = sha256_file(&image);
    let source = LoopDev::new(&image);
    let events = tmp.path().join("events.jsonl");
    let out = blockdump()
        .args(["--mode", "raw", "--continue-on-error", "--events"])
        .arg(&events)
        .arg(source.as_str())
        .output()
        .expect("run");
    assert_ok(&out);
    assert!(out.stderr.is_empty(), "events went to the file");
    let ev = last_event(&events);
    assert_eq!(ev["source_kind"], "device");
    // Nothing was unreadable: the fields are there, and empty.
    assert_eq!(ev["bad_bytes"], 0);
    assert_eq!(ev["bad_ranges"], serde_json::json!([]));
    assert_eq!(ev["source_size"], 48 << 20);
    assert_eq!(ev["sha256"], sha.as_str());
    // Zero chunks are found on the device; its file's holes are not even read.
    assert!(ev["zero_bytes"].as_u64().expect("zero") >= 38 << 20);
    assert!(
        ev["hole_bytes"].as_u64().expect("holes") >= 36 << 20,
        "{ev}"
    );

    let target_image = tmp.path().join("target.img");
    fs::File::create(&target_image)
        .and_then(|f| {
            f.set_len(48 << 20)?;
            f.write_all_at(&[0xEE; 4096], 20 << 20)
        })
        .expect("target");
    let target = LoopDev::new(&target_image);
    let expect_from = ["--expect-from", events.to_str().expect("path")];
    let ev = restore_ok(&expect_from, &target.path, out.stdout);
    assert_eq!(ev["target_kind"], "device");
    drop(target);
    // Every byte written, including zeros over the old data.
    assert_eq!(sha256_file(&target_image), sha);
}

/// Holes come from the loop device's file only while that is the device's file: with an offset
/// they are shifted, and a file put at the same path afterwards is not believed.
#[test]
fn loop_device_holes_come_from_its_own_file_only() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let image = sample_image(tmp.path());
    let content = fs::read(&image).expect("image");

    // --offset: the device starts 1 MiB into the file.
    let out = sh(
        "losetup",
        &[
            "--find",
            "--show",
            "--read-only",
            "--offset",
            "1048576",
            image.to_str().expect("path"),
        ],
    );
    let shifted = LoopDev {
        path: PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()),
    };
    let (stream, ev) = dump_ok(["--mode", "raw", "--compress", "none", shifted.as_str()]);
    assert!(
        stream == content[1 << 20..],
        "the device's bytes, from 1 MiB on"
    );
    assert_eq!(ev["sha256"], sha256_hex(&content[1 << 20..]).as_str());
    assert!(
        ev["hole_bytes"].as_u64().expect("holes") >= 36 << 20,
        "{ev}"
    );
    drop(shifted);

    // A renamed file is still found (the kernel reports its new name), and its holes used.
    let device = LoopDev::new(&image);
    let moved = tmp.path().join("moved.img");
    fs::rename(&image, &moved).expect("rename");
    let (stream, ev) = dump_ok(["--mode", "raw", "--compress", "none", device.as_str()]);
    assert!(stream == content);
    assert!(
        ev["hole_bytes"].as_u64().expect("holes") >= 36 << 20,
        "{ev}"
    );

    // Deleted, with an all-holes impostor at the very name losetup now reports for it: the
    // inode check refuses the impostor, and every block is read from the device.
    fs::remove_file(&moved).expect("unlink");
    let listing = sh(
        "losetup",
        &[
            "--list",
            "--noheadings",
            "--output",
            "BACK-FILE",
            device.as_str(),
        ],
    );
    let reported = String::from_utf8_lossy(&listing.stdout).trim().to_string();
    assert!(reported.ends_with("(deleted)"), "{reported}");
    fs::File::create(&reported)
        .and_then(|f| f.set_len(48 << 20))
        .expect("impostor");
    let (stream, ev) = dump_ok(["--mode", "raw", "--compress", "none", device.as_str()]);
    assert!(stream == content, "the device's own content");
    assert_eq!(ev["hole_bytes"], 0, "the impostor's holes were not used");
}

#[test]
fn damaged_streams_fail_restore_clearly() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let image = sample_image(tmp.path());
    for codec in ["zstd", "gzip"] {
        let out = blockdump()
            .args(["--mode", "raw", "--compress", codec])
            .arg(&image)
            .output()
            .expect("run");
        assert!(out.status.success());
        let stream = out.stdout;
        let target = tmp.path().join(format!("target-{codec}.img"));

        let restore = |data: Vec<u8>| {
            blockdump()
                .arg("restore")
                .arg(&target)
                .write_stdin(data)
                .output()
                .expect("run")
        };
        // Cut in the middle of a frame.
        let out = restore(stream[..stream.len() / 2].to_vec());
        assert_eq!(
            out.status.code(),
            Some(6),
            "{codec}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.starts_with("blockdump: ") && err.contains("truncated"),
            "{err}"
        );
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(!target.exists(), "a partial image was left at the target");

        // Cut exactly before the end marker: every frame is whole, the marker is missing.
        let marker = if codec == "zstd" { 60 } else { 78 };
        let out = restore(stream[..stream.len() - marker].to_vec());
        assert_eq!(
            out.status.code(),
            Some(6),
            "{codec}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(String::from_utf8_lossy(&out.stderr).contains("no end marker"));
        assert!(!target.exists());

        // A flipped byte inside compressed data.
        let mut bad = stream.clone();
        let at = bad.len() / 3;
        bad[at] ^= 0x55;
        let out = restore(bad);
        assert!(
            matches!(out.status.code(), Some(5) | Some(6)),
            "{codec}: {:?} {}",
            out.status.code(),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!target.exists());

        // Whole but not what was expected.
        let out = blockdump()
            .arg("restore")
            .arg(&target)
            .args(["--expect-sha256", &"0".repeat(64)])
            .write_stdin(stream.clone())
            .output()
            .expect("run");
        assert_eq!(out.status.code(), Some(5));
        assert!(String::from_utf8_lossy(&out.stderr).contains("SHA-256 mismatch"));
        assert!(!target.exists());
    }
    // An existing image is left as it was when the restore fails.
    let existing = tmp.path().join("existing.img");
    fs::write(&existing, b"precious").expect("write");
    let out = blockdump()
        .arg("restore")
        .arg(&existing)
        .write_stdin(vec![0x28, 0xB5, 0x2F, 0xFD, 1, 2, 3])
        .output()
        .expect("run");
    assert!(!out.status.success());
    assert_eq!(fs::read(&existing).expect("read"), b"precious");
}

#[test]
fn restore_refuses_a_mounted_device_and_a_non_empty_directory() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let image = make_fs_image(tmp.path(), "fs.img", 32 << 20, "mkfs.ext4", &["-q", "-F"]);
    let dev = LoopDev::new(&image);
    // Read-only, so that the device does not change by itself while mounted.
    let mounted = Mounted::new(dev.as_str(), &tmp.path().join("mnt"), "ro");
    let before = sha256_file(&dev.path);
    let raw = fs::read(sample_image(tmp.path())).expect("sample");
    let out = blockdump()
        .args(["restore", dev.as_str()])
        .write_stdin(raw[..1 << 20].to_vec())
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("is mounted at") && err.contains("--force"),
        "{err}"
    );
    assert_eq!(sha256_file(&dev.path), before);
    drop(mounted);

    // A files-mode stream into a directory that has something in it.
    let src = tmp.path().join("fs2.img");
    let out = Command::new("mkfs.ext4")
        .args(["-q", "-F"])
        .arg({
            fs::File::create(&src)
                .and_then(|f| f.set_len(16 << 20))
                .expect("img");
            &src
        })
        .status()
        .expect("mkfs");
    assert!(out.success());
    let dump = blockdump().arg(&src).output().expect("run");
    assert!(dump.status.success());
    let dir = tmp.path().join("full");
    fs::create_dir(&dir).expect("dir");
    fs::write(dir.join("mine"), b"do not touch").expect("write");
    let out = blockdump()
        .arg("restore")
        .arg(&dir)
        .write_stdin(dump.stdout.clone())
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not empty"));
    assert!(!dir.join("lost+found").exists());
    // With --force it merges.
    let out = blockdump()
        .args(["restore", "--force"])
        .arg(&dir)
        .write_stdin(dump.stdout)
        .output()
        .expect("run");
    assert_ok(&out);
    assert!(dir.join("lost+found").is_dir());
    assert_eq!(fs::read(dir.join("mine")).expect("read"), b"do not touch");
}

#[test]
fn from_event_reads_the_device_without_waiting_for_eof() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let image = sample_image(tmp.path());
    let dev = LoopDev::new(&image);
    let mut child = Command::new(harness::bin("blockdump"))
        .args(["--from-event", "--mode", "raw"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut stdin = child.stdin.take().expect("stdin");
    writeln!(
        stdin,
        r#"{{"event":"volume_created","tool":"snapshot-restore","time":"2026-01-01T00:00:00Z","volume_id":"vol-0abc"}}"#
    )
    .expect("write");
    writeln!(
        stdin,
        r#"{{"event":"volume_attached","tool":"ebs-attach","time":"2026-01-01T00:00:01Z","volume_id":"vol-0abc","device":"{}"}}"#,
        dev.as_str()
    )
    .expect("write");
    stdin.flush().expect("flush");
    // stdin stays open, as ebs-attach --cleanup-on-exit keeps it.
    let mut stdout = child.stdout.take().expect("stdout");
    let mut stderr = child.stderr.take().expect("stderr");
    let data = std::thread::spawn(move || {
        let mut buf = Vec::new();
        std::io::Read::read_to_end(&mut stdout, &mut buf).map(|_| buf)
    });
    let errors = std::thread::spawn(move || {
        let mut buf = Vec::new();
        std::io::Read::read_to_end(&mut stderr, &mut buf).map(|_| buf)
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("blockdump waited for stdin to close");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    drop(stdin);
    let stderr = errors.join().expect("thread").expect("stderr");
    let stdout = data.join().expect("thread").expect("stdout");
    assert!(status.success(), "{}", String::from_utf8_lossy(&stderr));
    assert!(stdout.len() > 1000);
    let ev = event(&stderr);
    assert_eq!(ev["source"], dev.as_str());
    assert_eq!(ev["volume_id"], "vol-0abc");
    assert_eq!(ev["sha256"], sha256_file(&image).as_str());

    // No device in the events: a clear error.
    let out = blockdump()
        .arg("--from-event")
        .write_stdin("{\"event\":\"x\",\"tool\":\"t\",\"time\":\"t\"}\n")
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(6));
    assert!(String::from_utf8_lossy(&out.stderr).contains("without an event naming a device"));
}

#[test]
fn dry_run_reports_and_writes_nothing() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let image = sample_image(tmp.path());
    let out = blockdump()
        .arg("--dry-run")
        .arg(&image)
        .output()
        .expect("run");
    assert!(out.status.success());
    assert!(out.stdout.is_empty());
    let ev = event(&out.stderr);
    assert_eq!(ev["event"], "dump_plan");
    assert_eq!(ev["source_size"], 48 << 20);
    assert_eq!(ev["mode"], "raw");
    assert_eq!(
        ev["fallback_reason"],
        "no ext2/3/4 or XFS file system recognised"
    );
}

#[test]
fn bad_usage_is_one_line_and_exit_2() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let image = sample_image(tmp.path());
    for args in [
        vec!["--compress", "gzip", "--level", "12"],
        vec!["--chunk-size", "1KiB"],
    ] {
        let out = blockdump().args(&args).arg(&image).output().expect("run");
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(out.stdout.is_empty());
    }
    let out = blockdump().arg("/nonexistent/disk").output().expect("run");
    assert_eq!(out.status.code(), Some(6));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .starts_with("blockdump: cannot open /nonexistent/disk")
    );
}

#[test]
fn stdin_source_and_rate_limit() {
    let data = random_bytes(3 << 20, 9);
    let started = std::time::Instant::now();
    let out = blockdump()
        .args(["--compress", "gzip", "--rate-limit", "4MiB", "-"])
        .write_stdin(data.clone())
        .output()
        .expect("run");
    assert_ok(&out);
    // 3 MiB at 4 MiB/s: about 0.75 s at least.
    assert!(
        started.elapsed() >= Duration::from_millis(600),
        "{:?}",
        started.elapsed()
    );
    let ev = event(&out.stderr);
    assert_eq!(ev["source_kind"], "stdin");
    assert_eq!(ev["mode"], "raw");
    assert_eq!(ev["sha256"], sha256_hex(&data).as_str());
    let mut decoded = Vec::new();
    std::io::Read::read_to_end(&mut flate2_free_gunzip(&out.stdout), &mut decoded).expect("gunzip");
    assert!(decoded == data);
}

/// gunzip as a process (the test crate does not link a gzip library).
fn flate2_free_gunzip(data: &[u8]) -> std::io::Cursor<Vec<u8>> {
    let mut child = Command::new("gunzip")
        .arg("-c")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("gunzip");
    let mut stdin = child.stdin.take().expect("stdin");
    let data = data.to_vec();
    let feeder = std::thread::spawn(move || stdin.write_all(&data));
    let out = child.wait_with_output().expect("gunzip");
    feeder.join().expect("feeder").expect("feed");
    assert!(out.status.success());
    std::io::Cursor::new(out.stdout)
}

#[test]
fn sigint_during_a_stalled_restore_exits_130_and_leaves_nothing() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let image = sample_image(tmp.path());
    let (stream, _) = dump_ok([Path::new("--mode"), Path::new("raw"), &image]);
    let target = tmp.path().join("target.img");
    let mut child = Command::new(harness::bin("blockdump"))
        .arg("restore")
        .arg(&target)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut stdin = child.stdin.take().expect("stdin");
    // Half the stream, then nothing: the upstream has stalled, stdin stays open.
    stdin.write_all(&stream[..stream.len() / 2]).expect("write");
    stdin.flush().expect("flush");
    std::thread::sleep(Duration::from_millis(500));
    let started = std::time::Instant::now();
    signal_and_expect(
        child,
        nix::sys::signal::Signal::SIGINT,
        130,
        "blockdump: interrupted by SIGINT",
    );
    drop(stdin);
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(!target.exists());
    let leftovers: Vec<_> = fs::read_dir(tmp.path())
        .expect("readdir")
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with(".blockdump-"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}
