//! Uploads and downloads survive a server that fails one request in ten.

use harness::{FaultProxy, new_bucket, random_bytes, sha256_hex, tool};

#[test]
fn ten_percent_failures_still_round_trip() {
    let bucket = new_bucket("faults");
    let proxy = FaultProxy::start(&["--error-rate", "0.1", "--seed", "7"]);
    let data = random_bytes(64 << 20, 11);
    let url = format!("s3://{bucket}/k");
    let put = tool("s3-put-multipart")
        .args([
            "--endpoint-url",
            &proxy.url,
            "--part-size",
            "5MiB",
            "--concurrency",
            "4",
        ])
        .arg(&url)
        .write_stdin(data.clone())
        .assert()
        .success();
    assert_eq!(
        harness::event(&put.get_output().stdout)["sha256"],
        sha256_hex(&data)
    );
    let get = tool("s3-get")
        .args(["--endpoint-url", &proxy.url, "--part-size", "4MiB"])
        .arg(&url)
        .assert()
        .success();
    assert!(
        get.get_output().stdout == data,
        "download through faults differs"
    );
    let stats = proxy.stats();
    let injected =
        stats["errors_500"].as_u64().unwrap_or(0) + stats["errors_503"].as_u64().unwrap_or(0);
    assert!(injected > 0, "the proxy injected no faults: {stats}");
}

#[test]
fn dropped_connections_are_survived() {
    let bucket = new_bucket("drops");
    let proxy = FaultProxy::start(&["--drop-rate", "0.1", "--seed", "3"]);
    let data = random_bytes(24 << 20, 12);
    let url = format!("s3://{bucket}/k");
    tool("s3-put-multipart")
        .args(["--endpoint-url", &proxy.url, "--part-size", "5MiB"])
        .arg(&url)
        .write_stdin(data.clone())
        .assert()
        .success();
    let get = tool("s3-get")
        .args(["--endpoint-url", &proxy.url, "--part-size", "2MiB"])
        .arg(&url)
        .assert()
        .success();
    assert!(get.get_output().stdout == data);
    assert!(
        proxy.stats()["dropped"].as_u64().unwrap_or(0) > 0,
        "no connection was dropped"
    );
}
