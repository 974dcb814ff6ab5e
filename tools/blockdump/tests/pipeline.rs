//! The EBS export pipeline end to end against the real S3 server of the test bed:
//! `s3-put-multipart -- blockdump DEVICE`, then `s3-get | blockdump restore`. The only blockdump
//! test that needs S3 (run it with scripts/testbed).

mod common;

use std::fs;
use std::process::Command;

use common::*;

#[test]
fn export_to_s3_and_restore_from_it() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let image = make_fs_image(tmp.path(), "vol.img", 64 << 20, "mkfs.ext4", &["-q", "-F"]);
    {
        let dev = LoopDev::new(&image);
        let mounted = Mounted::new(dev.as_str(), &tmp.path().join("src"), "rw");
        populate(&mounted.dir);
    }
    let dev = LoopDev::new(&image);
    let expected = {
        let look = Mounted::new(dev.as_str(), &tmp.path().join("look"), "ro,noload");
        snapshot(&look.dir)
    };
    let bucket = harness::new_bucket("blockdump");
    let url = format!("s3://{bucket}/exports/vol.zst");
    let events = tmp.path().join("dump.jsonl");

    // s3-put-multipart runs blockdump itself: the object is stored only if blockdump exits 0.
    let out = harness::tool("s3-put-multipart")
        .arg(&url)
        .arg("--")
        .arg(harness::bin("blockdump"))
        .arg("--events")
        .arg(&events)
        .arg(dev.as_str())
        .output()
        .expect("run");
    assert_ok(&out);
    let dumped = last_event(&events);
    assert_eq!(dumped["mode"], "files");
    let stored = harness::object(&bucket, "exports/vol.zst").expect("object stored");
    assert_eq!(
        stored.len() as u64,
        dumped["bytes_out"].as_u64().expect("bytes_out")
    );

    // s3-get | blockdump restore, checked against the dump's SHA-256.
    let restored = tmp.path().join("restored");
    let out = Command::new("bash")
        .arg("-c")
        .arg(format!(
            "set -o pipefail; '{}' '{url}' | '{}' restore --expect-from '{}' '{}'",
            harness::bin("s3-get").display(),
            harness::bin("blockdump").display(),
            events.display(),
            restored.display()
        ))
        .output()
        .expect("run");
    assert_ok(&out);
    assert!(String::from_utf8_lossy(&out.stderr).contains("\"verified\":\"stream+expected\""));
    assert_eq!(snapshot(&restored), expected);

    // A dump that fails leaves no object behind.
    let junk = tmp.path().join("junk.img");
    fs::write(&junk, random_bytes(1 << 20, 5)).expect("junk");
    let out = harness::tool("s3-put-multipart")
        .arg(format!("s3://{bucket}/exports/bad.zst"))
        .arg("--")
        .arg(harness::bin("blockdump"))
        .args(["--mode", "files"])
        .arg(&junk)
        .output()
        .expect("run");
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(harness::object(&bucket, "exports/bad.zst").is_none());
    assert_eq!(harness::open_uploads(&bucket), 0);
}
