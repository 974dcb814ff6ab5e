//! Nothing half-written ever becomes visible, and nothing stored is damaged.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use harness::{bin, block_on, client, new_bucket, object, open_uploads, random_bytes, tool};

const MIB: usize = 1 << 20;

#[test]
fn if_none_match_refuses_to_overwrite() {
    let bucket = new_bucket("ifnonematch");
    let url = format!("s3://{bucket}/k");
    tool("s3-put-multipart")
        .arg("--if-none-match")
        .arg(&url)
        .write_stdin("first")
        .assert()
        .success();
    for data in [b"second".to_vec(), random_bytes(11 * MIB, 7)] {
        let out = tool("s3-put-multipart")
            .args(["--if-none-match", "--part-size", "5MiB"])
            .arg(&url)
            .write_stdin(data)
            .assert()
            .code(7);
        assert!(String::from_utf8_lossy(&out.get_output().stderr).contains("already exists"));
    }
    assert_eq!(object(&bucket, "k").expect("kept"), b"first");
    assert_eq!(open_uploads(&bucket), 0);
}

#[test]
fn sigterm_mid_upload_leaves_nothing() {
    signal_mid_upload_leaves_nothing("TERM", 143, "SIGTERM");
}

#[test]
fn sigint_mid_upload_leaves_nothing() {
    signal_mid_upload_leaves_nothing("INT", 130, "SIGINT");
}

fn signal_mid_upload_leaves_nothing(signal: &str, status: i32, named: &str) {
    let bucket = new_bucket(signal);
    let mut child = Command::new(bin("s3-put-multipart"))
        .args(["--part-size", "5MiB", "--concurrency", "2"])
        .arg(format!("s3://{bucket}/k"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start");
    let mut stdin = child.stdin.take().expect("piped");
    stdin.write_all(&random_bytes(16 * MIB, 8)).expect("feed");
    // The stream is still open: wait until parts are being stored, then send SIGTERM.
    let deadline = Instant::now() + Duration::from_secs(20);
    while open_uploads(&bucket) == 0 {
        assert!(Instant::now() < deadline, "the upload never started");
        std::thread::sleep(Duration::from_millis(100));
    }
    Command::new("kill")
        .args([format!("-{signal}"), child.id().to_string()])
        .status()
        .expect("kill");
    let output = child.wait_with_output().expect("wait");
    drop(stdin);
    assert_eq!(
        output.status.code(),
        Some(status),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(String::from_utf8_lossy(&output.stderr).contains(named));
    assert!(object(&bucket, "k").is_none(), "no object may appear");
    assert_eq!(
        open_uploads(&bucket),
        0,
        "the multipart upload must be aborted"
    );
}

#[test]
fn failing_producer_leaves_nothing_and_passes_its_status() {
    let bucket = new_bucket("producer");
    // Enough output for a multipart upload to be under way when the producer fails.
    let out = tool("s3-put-multipart")
        .args(["--part-size", "5MiB"])
        .arg(format!("s3://{bucket}/k"))
        .args(["--", "sh", "-c", "head -c 12000000 /dev/zero; exit 3"])
        .assert()
        .code(3);
    assert!(String::from_utf8_lossy(&out.get_output().stderr).contains("producer"));
    // A small output goes by single PUT, which must not happen either.
    tool("s3-put-multipart")
        .arg(format!("s3://{bucket}/small"))
        .args(["--", "sh", "-c", "echo partial; exit 2"])
        .assert()
        .code(2);
    assert!(object(&bucket, "k").is_none());
    assert!(object(&bucket, "small").is_none());
    assert_eq!(open_uploads(&bucket), 0);
    // And a producer that succeeds is stored.
    tool("s3-put-multipart")
        .arg(format!("s3://{bucket}/good"))
        .args(["--", "printf", "ok"])
        .assert()
        .success();
    assert_eq!(object(&bucket, "good").expect("stored"), b"ok");
}

#[test]
fn size_mismatch_leaves_nothing() {
    let bucket = new_bucket("size");
    let data = random_bytes(6 * MIB, 9);
    for (size, key) in [
        ("6291455", "short"),
        ("6291457", "long"),
        ("1000", "single"),
    ] {
        let out = tool("s3-put-multipart")
            .args(["--part-size", "5MiB", "--size", size])
            .arg(format!("s3://{bucket}/{key}"))
            .write_stdin(data.clone())
            .assert()
            .code(6);
        assert!(String::from_utf8_lossy(&out.get_output().stderr).contains("--size"));
        assert!(object(&bucket, key).is_none(), "{key}");
    }
    assert_eq!(open_uploads(&bucket), 0);
    tool("s3-put-multipart")
        .args(["--size", "6MiB"])
        .arg(format!("s3://{bucket}/exact"))
        .write_stdin(data)
        .assert()
        .success();
}

#[test]
fn s3_get_detects_a_corrupted_object() {
    let bucket = new_bucket("corrupt");
    let data = random_bytes(7 * MIB, 10);
    let put = tool("s3-put-multipart")
        .args(["--part-size", "5MiB"])
        .arg(format!("s3://{bucket}/k"))
        .write_stdin(data.clone())
        .assert()
        .success();
    let sha = harness::event(&put.get_output().stdout)["sha256"]
        .as_str()
        .expect("sha")
        .to_string();
    // Same length, same stored digest, one byte flipped: what a damaged copy would look like.
    let mut damaged = data;
    damaged[4 * MIB] ^= 0x01;
    block_on(
        client()
            .put_object()
            .bucket(&bucket)
            .key("k")
            .metadata("s3pipe-sha256", sha)
            .body(damaged.into())
            .send(),
    )
    .expect("put");
    let out = tool("s3-get")
        .arg(format!("s3://{bucket}/k"))
        .assert()
        .code(5);
    assert!(String::from_utf8_lossy(&out.get_output().stderr).contains("SHA-256 mismatch"));
    assert_eq!(
        harness::event(&out.get_output().stderr)["verified"],
        "failed"
    );
}
