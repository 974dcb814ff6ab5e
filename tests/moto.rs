//! Test helpers for the AWS control-plane tests: moto's server (started by `scripts/testbed`) and
//! a small IMDSv2 stub.
//!
//! Used by snapshot-restore's and ebs-attach's tests, which turn on the harness's `moto` feature;
//! the other tools' tests do not link the EC2 client it needs.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::sync::OnceLock;

pub const REGION: &str = "us-east-1";
pub const AZ: &str = "us-east-1a";

/// moto's endpoint; panics with the fix when the tests were not started by the test bed.
pub fn endpoint() -> String {
    std::env::var("S3PIPE_MOTO_ENDPOINT").unwrap_or_else(|_| {
        panic!("no moto server: run the tests with scripts/testbed run -- cargo test (or scripts/test), which starts one and exports S3PIPE_MOTO_ENDPOINT")
    })
}

pub fn sdk_config() -> aws_config::SdkConfig {
    static CONFIG: OnceLock<aws_config::SdkConfig> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            crate::block_on(
                aws_config::defaults(aws_config::BehaviorVersion::latest())
                    .endpoint_url(endpoint())
                    .region(aws_config::Region::new(REGION))
                    .credentials_provider(aws_sdk_ec2::config::Credentials::new(
                        "testing", "testing", None, None, "moto",
                    ))
                    .load(),
            )
        })
        .clone()
}

pub fn ec2() -> aws_sdk_ec2::Client {
    aws_sdk_ec2::Client::new(&sdk_config())
}

/// A tool run against moto: endpoint, region and dummy credentials set.
pub fn tool(name: &str) -> assert_cmd::Command {
    assert_cmd::Command::from_std(std_tool(name))
}

/// The same, as a std Command (for pipelines and signals).
pub fn std_tool(name: &str) -> std::process::Command {
    let mut cmd = std::process::Command::new(crate::bin(name));
    cmd.env("AWS_ENDPOINT_URL", endpoint())
        .env("AWS_REGION", REGION)
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env_remove("AWS_SESSION_TOKEN")
        .env_remove("S3PIPE_INSTANCE_ID")
        .env_remove("S3PIPE_AVAILABILITY_ZONE")
        .env("AWS_EC2_METADATA_SERVICE_ENDPOINT", "http://127.0.0.1:9");
    cmd
}

/// A new instance in `az` (moto needs one to attach to).
pub fn run_instance(az: &str) -> String {
    let out = crate::block_on(
        ec2()
            .run_instances()
            .image_id("ami-12c6146b")
            .min_count(1)
            .max_count(1)
            .placement(
                aws_sdk_ec2::types::Placement::builder()
                    .availability_zone(az)
                    .build(),
            )
            .send(),
    )
    .expect("RunInstances on moto");
    out.instances()[0]
        .instance_id()
        .expect("instance id")
        .to_string()
}

/// A snapshot made through EC2 (no blocks), for volume tests.
pub fn ec2_snapshot(size_gib: i32) -> String {
    let client = ec2();
    let volume = crate::block_on(
        client
            .create_volume()
            .availability_zone(AZ)
            .size(size_gib)
            .send(),
    )
    .expect("CreateVolume");
    let snapshot = crate::block_on(
        client
            .create_snapshot()
            .volume_id(volume.volume_id().expect("id"))
            .send(),
    )
    .expect("CreateSnapshot");
    crate::block_on(
        client
            .delete_volume()
            .volume_id(volume.volume_id().expect("id"))
            .send(),
    )
    .expect("DeleteVolume");
    snapshot.snapshot_id().expect("snapshot id").to_string()
}

/// The volume, or None when it no longer exists.
pub fn volume(volume_id: &str) -> Option<aws_sdk_ec2::types::Volume> {
    match crate::block_on(ec2().describe_volumes().volume_ids(volume_id).send()) {
        Ok(out) => out.volumes().first().cloned(),
        Err(err) => {
            let text = format!("{:?}", err);
            assert!(text.contains("NotFound"), "DescribeVolumes failed: {text}");
            None
        }
    }
}

/// Volumes restored from `snapshot_id` that still exist.
pub fn volumes_from(snapshot_id: &str) -> Vec<aws_sdk_ec2::types::Volume> {
    let out = crate::block_on(ec2().describe_volumes().send()).expect("DescribeVolumes");
    out.volumes()
        .iter()
        .filter(|v| v.snapshot_id() == Some(snapshot_id))
        .cloned()
        .collect()
}

/// A tiny IMDSv2 server on loopback: token first (with the TTL header the Rust SDK requires and
/// moto's IMDS omits), then instance-id and placement/availability-zone with that token.
#[derive(Debug)]
pub struct Imds {
    pub url: String,
}

impl Imds {
    pub fn start(instance_id: &str, az: &str) -> Imds {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let instance_id = instance_id.to_string();
        let az = az.to_string();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let mut reader = BufReader::new(stream.try_clone().expect("clone"));
                let mut request = String::new();
                if reader.read_line(&mut request).is_err() {
                    continue;
                }
                let mut token = None;
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 || line.trim().is_empty() {
                        break;
                    }
                    if let Some((name, value)) = line.split_once(':')
                        && name.eq_ignore_ascii_case("x-aws-ec2-metadata-token")
                    {
                        token = Some(value.trim().to_string());
                    }
                }
                let mut parts = request.split_whitespace();
                let method = parts.next().unwrap_or("");
                let path = parts.next().unwrap_or("");
                let (status, body, extra) = match (method, path) {
                    ("PUT", "/latest/api/token") => (
                        "200 OK",
                        "stub-token".to_string(),
                        "x-aws-ec2-metadata-token-ttl-seconds: 21600\r\n",
                    ),
                    ("GET", _) if token.as_deref() != Some("stub-token") => {
                        ("401 Unauthorized", String::new(), "")
                    }
                    ("GET", "/latest/meta-data/instance-id") => ("200 OK", instance_id.clone(), ""),
                    ("GET", "/latest/meta-data/placement/availability-zone") => {
                        ("200 OK", az.clone(), "")
                    }
                    _ => ("404 Not Found", String::new(), ""),
                };
                let _ = write!(
                    stream,
                    "HTTP/1.1 {status}\r\nContent-Type: text/plain\r\n{extra}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        Imds { url }
    }
}

/// The JSON events in a tool's output, one a line.
pub fn events(text: &[u8]) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(text)
        .lines()
        .filter(|l| !l.trim().is_empty() && l.trim_start().starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

/// `bash -c SCRIPT` with the same environment as [`std_tool`], for whole pipelines.
pub fn shell(script: &str) -> std::process::Command {
    let template = std_tool("snapshot-restore");
    let mut shell = std::process::Command::new("bash");
    shell.args(["-c", script]);
    for (key, value) in template.get_envs() {
        match value {
            Some(value) => shell.env(key, value),
            None => shell.env_remove(key),
        };
    }
    shell
}

/// `scripts/fault-proxy` in front of moto (see [`crate::FaultProxy`]).
pub fn fault_proxy(args: &[&str]) -> crate::FaultProxy {
    crate::FaultProxy::start_for(&endpoint(), args)
}
