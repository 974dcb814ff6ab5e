//! `snapshot-restore blocks` and `apply` against moto's EBS direct APIs, on snapshots written
//! here with StartSnapshot / PutSnapshotBlock / CompleteSnapshot.

use harness::moto;

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Stdio;

use base64::Engine;
use sha2::{Digest, Sha256};

use moto::{events, tool};

const BLOCK: usize = 512 * 1024;
const GIB: u64 = 1 << 30;

fn ebs() -> aws_sdk_ebs::Client {
    aws_sdk_ebs::Client::new(&moto::sdk_config())
}

/// A completed 1 GiB snapshot holding `blocks`; `lie_about` gets a wrong checksum stored with it
/// (moto keeps the checksum it is given, as a damaged block would look).
fn snapshot(blocks: &[(i32, Vec<u8>)], lie_about: Option<i32>) -> String {
    let client = ebs();
    let started =
        harness::block_on(client.start_snapshot().volume_size(1).send()).expect("StartSnapshot");
    let id = started.snapshot_id().expect("id").to_string();
    for (index, data) in blocks {
        let mut digest = Sha256::digest(data).to_vec();
        if lie_about == Some(*index) {
            digest[0] ^= 0xff;
        }
        let checksum = base64::engine::general_purpose::STANDARD.encode(digest);
        harness::block_on(
            client
                .put_snapshot_block()
                .snapshot_id(&id)
                .block_index(*index)
                .data_length(data.len() as i32)
                .checksum(checksum)
                .checksum_algorithm(aws_sdk_ebs::types::ChecksumAlgorithm::ChecksumAlgorithmSha256)
                .block_data(aws_smithy_types::byte_stream::ByteStream::from(
                    data.clone(),
                ))
                .send(),
        )
        .expect("PutSnapshotBlock");
    }
    harness::block_on(
        client
            .complete_snapshot()
            .snapshot_id(&id)
            .changed_blocks_count(blocks.len() as i32)
            .send(),
    )
    .expect("CompleteSnapshot");
    id
}

fn block(seed: u64) -> Vec<u8> {
    harness::random_bytes(BLOCK, seed)
}

/// Compares a 1 GiB image file with the expected blocks (zeros elsewhere), chunk by chunk.
fn assert_image(path: &Path, blocks: &[(i32, Vec<u8>)]) {
    let mut file = File::open(path).expect("open image");
    assert_eq!(file.metadata().expect("stat").len(), GIB, "image size");
    let zeros = vec![0u8; BLOCK];
    let mut buf = vec![0u8; BLOCK];
    for index in 0..(GIB as usize / BLOCK) {
        file.read_exact(&mut buf).expect("read");
        let expected = blocks
            .iter()
            .find(|(i, _)| *i as usize == index)
            .map(|(_, d)| d.as_slice())
            .unwrap_or(&zeros);
        assert!(buf == expected, "block {index} differs");
    }
}

fn sample() -> Vec<(i32, Vec<u8>)> {
    vec![
        (0, block(1)),
        (5, block(2)),
        (6, vec![0u8; BLOCK]),
        (100, block(3)),
        (2047, block(4)),
    ]
}

#[test]
fn image_on_stdout_is_the_snapshot_byte_for_byte() {
    let blocks = sample();
    let id = snapshot(&blocks, None);
    let dir = tempfile::tempdir().expect("tempdir");
    let image = dir.path().join("stdout.img");
    let out = moto::std_tool("snapshot-restore")
        .args(["blocks", "--snapshot-id", &id, "--concurrency", "4"])
        .stdout(File::create(&image).expect("create"))
        .stderr(Stdio::piped())
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_image(&image, &blocks);
    let event = &events(&out.stderr)[0];
    assert_eq!(event["event"], "snapshot_read");
    assert_eq!(event["snapshot_id"], id.as_str());
    assert_eq!(event["blocks_listed"], 5);
    assert_eq!(event["bytes_written"], GIB);
}

#[test]
fn output_file_is_sparse_and_identical() {
    let blocks = sample();
    let id = snapshot(&blocks, None);
    let dir = tempfile::tempdir().expect("tempdir");
    let image = dir.path().join("out.img");
    let out = tool("snapshot-restore")
        .args(["blocks", "--snapshot-id", &id, "--output"])
        .arg(&image)
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.stdout.is_empty(), "nothing on stdout with --output");
    assert_image(&image, &blocks);
    let allocated = std::fs::metadata(&image).expect("stat").blocks() * 512;
    // Four data blocks (the all-zero one is a hole too), plus file-system slack.
    assert!(
        allocated <= 4 * BLOCK as u64 + 256 * 1024,
        "not sparse: {allocated} bytes allocated"
    );
    let leftovers: Vec<_> = std::fs::read_dir(dir.path()).expect("ls").collect();
    assert_eq!(leftovers.len(), 1, "no temporary file left");
}

#[test]
fn corrupted_block_is_detected() {
    let blocks = vec![(0, block(10)), (9, block(11))];
    let id = snapshot(&blocks, Some(9));
    let dir = tempfile::tempdir().expect("tempdir");
    let image = dir.path().join("bad.img");
    let out = tool("snapshot-restore")
        .args([
            "blocks",
            "--snapshot-id",
            &id,
            "--verify-attempts",
            "2",
            "--output",
        ])
        .arg(&image)
        .output()
        .expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(5), "{stderr}");
    let last = stderr.lines().last().unwrap_or("");
    assert!(
        last.starts_with(&format!(
            "snapshot-restore: block 9 of {id}: SHA-256 mismatch"
        )),
        "{stderr}"
    );
    assert!(!image.exists(), "no image left behind");
    assert_eq!(
        std::fs::read_dir(dir.path()).expect("ls").count(),
        0,
        "no temporary file left"
    );
}

#[test]
fn changed_blocks_applied_over_the_parent_give_the_child() {
    let parent_blocks = vec![
        (0, block(20)),
        (1, block(21)),
        (2, block(22)),
        (300, block(23)),
    ];
    let child_blocks = vec![(0, block(20)), (1, block(31)), (300, block(33))];
    let parent = snapshot(&parent_blocks, None);
    let child = snapshot(&child_blocks, None);
    let dir = tempfile::tempdir().expect("tempdir");
    let base = dir.path().join("base.img");
    let out = tool("snapshot-restore")
        .args(["blocks", "--snapshot-id", &parent, "--output"])
        .arg(&base)
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let list = dir.path().join("child.blocks");
    let out = moto::std_tool("snapshot-restore")
        .args([
            "blocks",
            "--snapshot-id",
            &child,
            "--changed-since",
            &parent,
        ])
        .stdout(File::create(&list).expect("create"))
        .stderr(Stdio::piped())
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let event = &events(&out.stderr)[0];
    assert_eq!(event["event"], "changed_blocks_read");
    assert_eq!(event["parent_snapshot_id"], parent.as_str());
    // Blocks 1 and 300 changed, block 2 is gone; block 0 is the same and not in the list.
    assert_eq!(event["blocks_listed"], 3);
    let size = std::fs::metadata(&list).expect("stat").len();
    assert!(
        size < 3 * BLOCK as u64,
        "only the changed blocks: {size} bytes"
    );

    let out = tool("snapshot-restore")
        .args(["apply", "--target"])
        .arg(&base)
        .pipe_stdin(&list)
        .expect("stdin")
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(events(&out.stderr)[0]["blocks"], 3);
    assert_image(&base, &child_blocks);
}

#[test]
fn damaged_block_list_is_refused() {
    let parent = snapshot(&[(0, block(40))], None);
    let child = snapshot(&[(0, block(41))], None);
    let dir = tempfile::tempdir().expect("tempdir");
    let list = dir.path().join("list");
    let out = moto::std_tool("snapshot-restore")
        .args([
            "blocks",
            "--snapshot-id",
            &child,
            "--changed-since",
            &parent,
            "--output",
        ])
        .arg(&list)
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut bytes = std::fs::read(&list).expect("read");
    let target = dir.path().join("target.img");
    std::fs::write(&target, b"").expect("create");

    // One flipped bit in the data: the end digest no longer matches.
    let middle = bytes.len() / 2;
    bytes[middle] ^= 1;
    let out = tool("snapshot-restore")
        .args(["apply", "--target"])
        .arg(&target)
        .write_stdin(bytes.clone())
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(5));
    assert!(String::from_utf8_lossy(&out.stderr).contains("digest mismatch"));

    // Truncated: no end record.
    bytes.truncate(bytes.len() - 40);
    let out = tool("snapshot-restore")
        .args(["apply", "--target"])
        .arg(&target)
        .write_stdin(bytes)
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(5));
    assert!(String::from_utf8_lossy(&out.stderr).contains("truncated"));
}

#[test]
fn unknown_snapshot_is_not_found() {
    let out = tool("snapshot-restore")
        .args([
            "blocks",
            "--snapshot-id",
            "snap-0000000000000dead",
            "--max-attempts",
            "2",
        ])
        .output()
        .expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(0), "{stderr}");
    assert!(
        stderr.starts_with("snapshot-restore: cannot list the blocks of snap-0000000000000dead"),
        "{stderr}"
    );
    assert!(out.stdout.is_empty());
}

#[test]
fn throttling_and_server_errors_slow_it_down_but_do_not_fail_it() {
    let blocks = sample();
    let id = snapshot(&blocks, None);
    // 30% of requests answered 500/503 (SlowDown): every block still arrives, in order.
    let proxy = moto::fault_proxy(&["--error-rate", "0.3", "--seed", "7"]);
    let dir = tempfile::tempdir().expect("tempdir");
    let image = dir.path().join("image");
    let out = tool("snapshot-restore")
        .args([
            "blocks",
            "--snapshot-id",
            &id,
            "--endpoint-url",
            &proxy.url,
            "--output",
        ])
        .arg(&image)
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_image(&image, &blocks);
    let stats = proxy.stats();
    let faults =
        stats["errors_500"].as_u64().unwrap_or(0) + stats["errors_503"].as_u64().unwrap_or(0);
    assert!(faults > 0, "the proxy injected errors: {stats}");
}

#[test]
fn sigterm_leaves_no_partial_image() {
    let blocks = sample();
    let id = snapshot(&blocks, None);
    // Every request held back 3 s, so the signal arrives mid-way.
    let proxy = moto::fault_proxy(&["--slow-rate", "1", "--slow-seconds", "3"]);
    let dir = tempfile::tempdir().expect("tempdir");
    let image = dir.path().join("image");
    let child = moto::std_tool("snapshot-restore")
        .args([
            "blocks",
            "--snapshot-id",
            &id,
            "--endpoint-url",
            &proxy.url,
            "--output",
        ])
        .arg(&image)
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    std::thread::sleep(std::time::Duration::from_millis(4000));
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .expect("kill");
    let out = child.wait_with_output().expect("wait");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(143), "{stderr}");
    assert!(stderr.contains("terminated by SIGTERM"), "{stderr}");
    assert_eq!(
        std::fs::read_dir(dir.path()).expect("ls").count(),
        0,
        "no partial image left"
    );
}
