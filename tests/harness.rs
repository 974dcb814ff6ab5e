//! The test harness: the tools as real processes against a real S3 server.
//!
//! `scripts/test` starts one server for the whole run (Garage on loopback, or the endpoint the
//! environment already names, such as your MinIO) and exports `AWS_ENDPOINT_URL` and credentials;
//! every test then makes its own bucket through the S3 API, so tests run in parallel without
//! seeing each other's objects.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;

/// moto (the AWS control plane) and an IMDSv2 stub, for the tools that talk to EC2.
#[cfg(feature = "moto")]
pub mod moto;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};

use aws_sdk_s3::Client;
use aws_sdk_s3::config::{Region, RequestChecksumCalculation, ResponseChecksumValidation};

/// The workspace root.
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is inside the workspace")
        .to_path_buf()
}

/// Path of a tool binary built next to the test binary (target/<profile>/).
pub fn bin(tool: &str) -> PathBuf {
    let path = assert_cmd::cargo::cargo_bin(tool);
    assert!(
        path.exists(),
        "{} is not built: run scripts/test (it builds every tool first)",
        path.display()
    );
    path
}

/// The S3 endpoint under test; panics with the fix when there is none.
pub fn endpoint() -> String {
    std::env::var("AWS_ENDPOINT_URL").unwrap_or_else(|_| {
        panic!("no S3 server: run the tests with scripts/test, which starts Garage (or export AWS_ENDPOINT_URL and credentials for your own MinIO)")
    })
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .expect("runtime")
    })
}

/// Runs a future to completion (the tests themselves are plain threads).
pub fn block_on<F: std::future::Future>(future: F) -> F::Output {
    runtime().block_on(future)
}

/// An S3 client of our own, to look at what the tools stored.
pub fn client() -> Client {
    static CLIENT: OnceLock<Client> = OnceLock::new();
    CLIENT
        .get_or_init(|| {
            let endpoint = endpoint();
            let shared =
                block_on(aws_config::defaults(aws_config::BehaviorVersion::latest()).load());
            let region = shared
                .region()
                .cloned()
                .unwrap_or_else(|| Region::new("us-east-1"));
            let config = aws_sdk_s3::config::Builder::from(&shared)
                .endpoint_url(endpoint)
                .region(region)
                .force_path_style(true)
                .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
                .response_checksum_validation(ResponseChecksumValidation::WhenRequired)
                .build();
            Client::from_conf(config)
        })
        .clone()
}

/// Creates a bucket of this test's own and returns its name.
pub fn new_bucket(label: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let label: String = label
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .take(20)
        .collect::<String>()
        .to_ascii_lowercase();
    let name = format!(
        "t-{label}-{}-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::SeqCst),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() % 100_000)
            .unwrap_or(0)
    );
    block_on(client().create_bucket().bucket(&name).send())
        .unwrap_or_else(|err| panic!("create bucket {name}: {err:?}"));
    name
}

/// A tool as an assert_cmd command, with the test environment.
pub fn tool(name: &str) -> assert_cmd::Command {
    assert_cmd::Command::new(bin(name))
}

/// Deterministic pseudo-random bytes (xorshift), incompressible enough for S3 and cheap to make.
pub fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        out.extend_from_slice(&state.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// The object's bytes, or None when it does not exist.
pub fn object(bucket: &str, key: &str) -> Option<Vec<u8>> {
    block_on(async {
        match client().get_object().bucket(bucket).key(key).send().await {
            Ok(output) => Some(
                output
                    .body
                    .collect()
                    .await
                    .expect("body")
                    .into_bytes()
                    .to_vec(),
            ),
            Err(err) => {
                let text = format!("{err:?}");
                assert!(
                    text.contains("NoSuchKey") || text.contains("404"),
                    "unexpected error: {text}"
                );
                None
            }
        }
    })
}

/// The multipart uploads still open in a bucket.
pub fn open_uploads(bucket: &str) -> usize {
    block_on(client().list_multipart_uploads().bucket(bucket).send())
        .expect("list uploads")
        .uploads
        .unwrap_or_default()
        .len()
}

/// A running `scripts/fault-proxy` in front of the S3 server; killed when dropped.
#[derive(Debug)]
pub struct FaultProxy {
    child: Child,
    pub url: String,
}

impl FaultProxy {
    /// Starts the proxy in front of the S3 server, with extra arguments such as
    /// `--error-rate 0.1`.
    pub fn start(args: &[&str]) -> Self {
        Self::start_for(&endpoint(), args)
    }

    /// Starts the proxy in front of `upstream` (moto, say).
    pub fn start_for(upstream: &str, args: &[&str]) -> Self {
        let mut child = Command::new(repo_root().join("scripts/fault-proxy"))
            .arg("--upstream")
            .arg(upstream)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start scripts/fault-proxy");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("piped"))
            .read_line(&mut line)
            .expect("proxy prints its URL");
        let url = line
            .trim()
            .strip_prefix("FAULT_PROXY_URL=")
            .expect("FAULT_PROXY_URL line")
            .to_string();
        FaultProxy { child, url }
    }

    /// The proxy's counters (`requests`, `errors_500`, `errors_503`, `dropped`, `slowed`, ...).
    pub fn stats(&self) -> serde_json::Value {
        let output = Command::new("curl")
            .args(["-sf", &format!("{}/__fault_proxy/stats", self.url)])
            .output()
            .expect("curl");
        serde_json::from_slice(&output.stdout).expect("stats are JSON")
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Parses the one JSON event line a tool printed.
pub fn event(text: &[u8]) -> serde_json::Value {
    let text = String::from_utf8_lossy(text);
    let line = text
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .unwrap_or_else(|| panic!("no event in {text:?}"));
    serde_json::from_str(line).expect("event is JSON")
}

/// SHA-256 hex of bytes.
pub fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(data))
}
