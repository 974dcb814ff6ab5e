//! Byte-identical round trips through s3-put-multipart and s3-get at the sizes that matter.

use harness::{event, new_bucket, object, random_bytes, sha256_hex, tool};

const MIB: usize = 1 << 20;

/// Uploads `data` by pipe, checks the upload event, downloads it with s3-get and compares.
fn round_trip(bucket: &str, key: &str, data: &[u8], put_args: &[&str]) -> serde_json::Value {
    let url = format!("s3://{bucket}/{key}");
    let put = tool("s3-put-multipart")
        .args(put_args)
        .arg(&url)
        .write_stdin(data.to_vec())
        .assert()
        .success();
    let uploaded = event(&put.get_output().stdout);
    assert_eq!(uploaded["event"], "upload_complete");
    assert_eq!(uploaded["size"], data.len() as u64);
    assert_eq!(uploaded["sha256"], sha256_hex(data));
    assert_eq!(uploaded["sha256_in_metadata"], true);

    let get = tool("s3-get").arg(&url).assert().success();
    let output = get.get_output();
    assert!(
        output.stdout == data,
        "{key}: downloaded bytes differ ({} vs {} bytes)",
        output.stdout.len(),
        data.len()
    );
    let downloaded = event(&output.stderr);
    assert_eq!(downloaded["verified"], "sha256");
    assert_eq!(downloaded["sha256"], sha256_hex(data));
    uploaded
}

#[test]
fn empty_input_makes_an_empty_object() {
    let bucket = new_bucket("empty");
    let uploaded = round_trip(&bucket, "empty", b"", &[]);
    assert_eq!(uploaded["parts"], 1);
    assert_eq!(object(&bucket, "empty").expect("stored"), b"");
}

#[test]
fn one_byte() {
    let bucket = new_bucket("one");
    round_trip(&bucket, "one", b"x", &[]);
}

#[test]
fn exactly_one_part_is_a_single_put() {
    let bucket = new_bucket("onepart");
    let data = random_bytes(5 * MIB, 1);
    let uploaded = round_trip(&bucket, "p", &data, &["--part-size", "5MiB"]);
    assert_eq!(uploaded["parts"], 1);
    assert!(
        !uploaded["etag"].as_str().expect("etag").contains('-'),
        "a single PUT has a plain ETag"
    );
}

#[test]
fn one_part_and_one_byte_is_multipart() {
    let bucket = new_bucket("onepartplus");
    let data = random_bytes(5 * MIB + 1, 2);
    let uploaded = round_trip(&bucket, "p", &data, &["--part-size", "5MiB"]);
    assert_eq!(uploaded["parts"], 2);
    assert!(
        uploaded["etag"].as_str().expect("etag").ends_with("-2\""),
        "{uploaded}"
    );
}

#[test]
fn several_hundred_mib() {
    let bucket = new_bucket("large");
    let data = random_bytes(300 * MIB + 12_345, 3);
    let uploaded = round_trip(
        &bucket,
        "big",
        &data,
        &["--part-size", "8MiB", "--concurrency", "4"],
    );
    assert_eq!(uploaded["parts"], 38);
}

#[test]
fn ranges_come_back_exactly() {
    let bucket = new_bucket("range");
    let data = random_bytes(12 * MIB, 4);
    round_trip(&bucket, "r", &data, &["--part-size", "5MiB"]);
    let get = tool("s3-get")
        .args(["--range", "1000-6000000", "--part-size", "1MiB"])
        .arg(format!("s3://{bucket}/r"))
        .assert()
        .success();
    assert!(get.get_output().stdout == data[1000..=6_000_000]);
    assert_eq!(event(&get.get_output().stderr)["verified"], "none");
    let get = tool("s3-get")
        .args(["--range", "-10"])
        .arg(format!("s3://{bucket}/r"))
        .assert()
        .success();
    assert!(get.get_output().stdout == data[data.len() - 10..]);
}

#[test]
fn tee_copies_the_input_and_checksums_are_accepted() {
    let bucket = new_bucket("tee");
    let data = random_bytes(11 * MIB, 5);
    let put = tool("s3-put-multipart")
        .args([
            "--tee",
            "--part-size",
            "5MiB",
            "--checksum",
            "crc32c",
            "--metadata",
            "origin=test",
            "--content-type",
            "application/x-tar",
        ])
        .arg(format!("s3://{bucket}/t"))
        .write_stdin(data.clone())
        .assert()
        .success();
    assert!(
        put.get_output().stdout == data,
        "--tee must copy stdin to stdout unchanged"
    );
    let uploaded = event(&put.get_output().stderr);
    assert_eq!(uploaded["sha256"], sha256_hex(&data));
    assert_eq!(object(&bucket, "t").expect("stored"), data);
    let head = harness::block_on(
        harness::client()
            .head_object()
            .bucket(&bucket)
            .key("t")
            .send(),
    )
    .expect("head");
    assert_eq!(head.content_type(), Some("application/x-tar"));
    assert_eq!(
        head.metadata()
            .and_then(|m| m.get("origin"))
            .map(String::as_str),
        Some("test")
    );
}

#[test]
fn objects_from_other_tools_are_verified_by_etag() {
    let bucket = new_bucket("etag");
    let data = random_bytes(3 * MIB, 6);
    harness::block_on(
        harness::client()
            .put_object()
            .bucket(&bucket)
            .key("plain")
            .body(data.clone().into())
            .send(),
    )
    .expect("put");
    let get = tool("s3-get")
        .arg(format!("s3://{bucket}/plain"))
        .assert()
        .success();
    assert!(get.get_output().stdout == data);
    assert_eq!(event(&get.get_output().stderr)["verified"], "etag");
}
