//! `snapshot-restore volume` against moto's EC2.

use harness::moto;

use moto::{AZ, events, tool};

#[test]
fn volume_is_created_from_the_snapshot_and_reported() {
    let snapshot = moto::ec2_snapshot(3);
    let out = tool("snapshot-restore")
        .args(["volume", "--snapshot-id", &snapshot, "--az", AZ])
        .args(["--tag", "team=ops", "--iops", "4000", "--throughput", "250"])
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let events = events(&out.stdout);
    assert_eq!(events.len(), 1, "one event on stdout");
    let event = &events[0];
    assert_eq!(event["event"], "volume_created");
    assert_eq!(event["tool"], "snapshot-restore");
    assert_eq!(event["snapshot_id"], snapshot.as_str());
    assert_eq!(event["availability_zone"], AZ);
    assert_eq!(event["size_gib"], 3);
    let volume_id = event["volume_id"].as_str().expect("volume_id");
    assert!(volume_id.starts_with("vol-"));

    let volume = moto::volume(volume_id).expect("the volume exists");
    assert_eq!(volume.state().map(|s| s.as_str()), Some("available"));
    assert_eq!(volume.availability_zone(), Some(AZ));
    assert_eq!(volume.snapshot_id(), Some(snapshot.as_str()));
    assert_eq!(volume.volume_type().map(|t| t.as_str()), Some("gp3"));
    assert_eq!(volume.size(), Some(3));
    let tags: Vec<(String, String)> = volume
        .tags()
        .iter()
        .map(|t| {
            (
                t.key().unwrap_or("").to_string(),
                t.value().unwrap_or("").to_string(),
            )
        })
        .collect();
    assert!(tags.contains(&("team".into(), "ops".into())), "{tags:?}");
    assert!(
        tags.contains(&("s3pipe:snapshot".into(), snapshot.clone())),
        "{tags:?}"
    );
    harness::block_on(moto::ec2().delete_volume().volume_id(volume_id).send()).expect("delete");
}

#[test]
fn zone_comes_from_instance_metadata() {
    let snapshot = moto::ec2_snapshot(1);
    let imds = moto::Imds::start("i-0000000000000000a", "us-east-1b");
    let out = tool("snapshot-restore")
        .args([
            "volume",
            "--snapshot-id",
            &snapshot,
            "--imds-endpoint",
            &imds.url,
        ])
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let event = &events(&out.stdout)[0];
    assert_eq!(event["availability_zone"], "us-east-1b");
    let volume_id = event["volume_id"].as_str().expect("volume_id");
    assert_eq!(
        moto::volume(volume_id).and_then(|v| v.availability_zone().map(str::to_string)),
        Some("us-east-1b".to_string())
    );
    harness::block_on(moto::ec2().delete_volume().volume_id(volume_id).send()).expect("delete");
}

#[test]
fn no_zone_and_no_metadata_service_is_one_clear_line() {
    let snapshot = moto::ec2_snapshot(1);
    let out = tool("snapshot-restore")
        .args(["volume", "--snapshot-id", &snapshot])
        .args(["--imds-endpoint", "http://127.0.0.1:9"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(8));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.starts_with("snapshot-restore: cannot read placement/availability-zone"),
        "{stderr}"
    );
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(out.stdout.is_empty());
    assert!(
        moto::volumes_from(&snapshot).is_empty(),
        "no volume was created"
    );
}

#[test]
fn unknown_snapshot_is_not_found() {
    let out = tool("snapshot-restore")
        .args([
            "volume",
            "--snapshot-id",
            "snap-0123456789abcdef0",
            "--az",
            AZ,
        ])
        .output()
        .expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(
        stderr.starts_with("snapshot-restore: cannot create a volume from snap-0123456789abcdef0"),
        "{stderr}"
    );
    assert!(out.stdout.is_empty());
}

#[test]
fn bad_volume_type_is_a_usage_error() {
    let out = tool("snapshot-restore")
        .args([
            "volume",
            "--snapshot-id",
            "snap-1",
            "--az",
            AZ,
            "--volume-type",
            "gp9",
        ])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown volume type 'gp9'"));
}
