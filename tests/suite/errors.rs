//! Bad input gets one clear line on stderr and its documented exit code.

use harness::{new_bucket, object, random_bytes, tool};

/// The single stderr line of a failed run, checked to be one line.
fn one_line(stderr: &[u8]) -> String {
    let text = String::from_utf8_lossy(stderr).trim_end().to_string();
    assert_eq!(
        text.lines().count(),
        1,
        "expected one line on stderr, got: {text:?}"
    );
    text
}

#[test]
fn bad_url_is_a_usage_error() {
    for url in [
        "http://bucket/key",
        "s3://bucket",
        "s3://bucket/dir/",
        "s3://Bad_Bucket/key",
    ] {
        let out = tool("s3-put-multipart")
            .arg(url)
            .write_stdin("x")
            .assert()
            .code(2);
        let stderr = String::from_utf8_lossy(&out.get_output().stderr).to_string();
        assert!(stderr.contains(url), "{url}: {stderr}");
        tool("s3-get").arg(url).assert().code(2);
    }
}

#[test]
fn part_size_under_five_mib_is_refused() {
    let bucket = new_bucket("small-part");
    let out = tool("s3-put-multipart")
        .args(["--part-size", "4MiB"])
        .arg(format!("s3://{bucket}/k"))
        .write_stdin("x")
        .assert()
        .code(2);
    let line = one_line(&out.get_output().stderr);
    assert!(line.contains("5MiB"), "{line}");
    assert!(object(&bucket, "k").is_none());
}

#[test]
fn missing_bucket_is_not_found() {
    let url = "s3://s3pipe-no-such-bucket-anywhere/key";
    let out = tool("s3-put-multipart")
        .arg(url)
        .write_stdin(random_bytes(100, 1))
        .assert()
        .code(3);
    let line = one_line(&out.get_output().stderr);
    assert!(line.contains("s3pipe-no-such-bucket-anywhere"), "{line}");
    let out = tool("s3-get").arg(url).assert().code(3);
    one_line(&out.get_output().stderr);
}

#[test]
fn missing_object_is_not_found() {
    let bucket = new_bucket("missing");
    let out = tool("s3-get")
        .arg(format!("s3://{bucket}/nothing-here"))
        .assert()
        .code(3);
    assert!(one_line(&out.get_output().stderr).contains("nothing-here"));
}

#[test]
fn wrong_credentials_are_an_access_error() {
    let bucket = new_bucket("creds");
    let out = tool("s3-put-multipart")
        .env(
            "AWS_SECRET_ACCESS_KEY",
            "0000000000000000000000000000000000000000000000000000000000000000",
        )
        .args(["--max-attempts", "1"])
        .arg(format!("s3://{bucket}/k"))
        .write_stdin("data")
        .assert()
        .code(4);
    let line = one_line(&out.get_output().stderr);
    assert!(
        !line.contains("0000000000000000"),
        "secrets are never printed: {line}"
    );
    assert!(object(&bucket, "k").is_none());
    tool("s3-get")
        .env("AWS_ACCESS_KEY_ID", "GK000000000000000000000000")
        .args(["--max-attempts", "1"])
        .arg(format!("s3://{bucket}/k"))
        .assert()
        .code(4);
}

#[test]
fn unreachable_endpoint_is_a_network_error() {
    let out = tool("s3-get")
        .args([
            "--endpoint-url",
            "http://127.0.0.1:9",
            "--max-attempts",
            "2",
            "--connect-timeout",
            "2s",
        ])
        .arg("s3://bucket/key")
        .assert()
        .code(8);
    one_line(&out.get_output().stderr);
}

#[test]
fn missing_credentials_are_an_access_error() {
    let out = tool("s3-put-multipart")
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .env_remove("AWS_PROFILE")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_CONFIG_FILE", "/nonexistent/config")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/credentials")
        .arg("s3://some-bucket/k")
        .write_stdin("data")
        .assert()
        .code(4);
    assert!(one_line(&out.get_output().stderr).contains("no AWS credentials"));
}
