//! Interoperability with real Amanda (Debian 12's amanda-server 3.5) on the same S3 server:
//! Amanda's amdevcheck reads our labels, amrestore reads back files we wrote byte for byte
//! (with our manifest objects beside them), and we read tapes that Amanda's own S3 device wrote.
//!
//! Needs root (to run Amanda as the `backup` user and create a throw-away config under
//! /etc/amanda), gcc (to build tests/amanda/curl-post-shim.c), amanda-server and
//! libencode-locale-perl. Amanda 3.5 cannot write to S3 with current libcurl at all; the shim
//! (LD_PRELOAD) drops the `CURLOPT_POST, 0` call that turns its PUTs into GETs, adds the
//! Content-Type it forgets, and keeps it from crashing on Garage's XML answers that come without
//! a Content-Type (which S3_MULTI_PART_UPLOAD needs).

mod common;

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

use common::Set;
use harness::{random_bytes, sha256_hex};

const AMANDA_USER: &str = "backup";

/// A throw-away Amanda configuration pointing at the test S3 server; removed on drop.
struct Amanda {
    name: String,
    dir: tempfile::TempDir,
    shim: PathBuf,
}

impl Amanda {
    fn new() -> Amanda {
        Amanda::with_properties(&[])
    }

    /// A configuration with more `device_property` lines (a BLOCK_SIZE here replaces the 1 MiB
    /// default).
    fn with_properties(extra: &[(&str, &str)]) -> Amanda {
        let endpoint = harness::endpoint();
        let host_port = endpoint
            .strip_prefix("http://")
            .unwrap_or_else(|| {
                panic!("the Amanda tests need a plain-http S3 endpoint, not {endpoint}")
            })
            .trim_end_matches('/')
            .to_string();
        let dir = tempfile::Builder::new()
            .prefix("tc-amanda-")
            .tempdir()
            .expect("tempdir");
        let shim = dir.path().join("curl-post-shim.so");
        let source =
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/amanda/curl-post-shim.c");
        let built = Command::new("gcc")
            .args(["-shared", "-fPIC", "-o"])
            .arg(&shim)
            .arg(&source)
            .arg("-ldl")
            .status()
            .expect("gcc must be installed to build the libcurl shim");
        assert!(built.success(), "building {} failed", source.display());

        // One configuration per test, named uniquely within this run.
        static COUNTER: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let name = format!(
            "tctest{}x{}",
            std::process::id(),
            COUNTER.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
        );
        let conf_dir = PathBuf::from("/etc/amanda").join(&name);
        std::fs::create_dir_all(&conf_dir)
            .expect("create /etc/amanda/CONF (the tests run as root)");
        let work = dir.path().join("amanda");
        std::fs::create_dir_all(&work).expect("work dir");
        let region = std::env::var("AWS_REGION").unwrap_or_else(|_| "us-east-1".to_string());
        let key = std::env::var("AWS_ACCESS_KEY_ID").expect("AWS_ACCESS_KEY_ID");
        let secret = std::env::var("AWS_SECRET_ACCESS_KEY").expect("AWS_SECRET_ACCESS_KEY");
        let mut properties = String::new();
        if !extra.iter().any(|(name, _)| *name == "BLOCK_SIZE") {
            properties.push_str("device_property \"BLOCK_SIZE\" \"1m\"\n");
        }
        for (name, value) in extra {
            properties.push_str(&format!("device_property \"{name}\" \"{value}\"\n"));
        }
        let config = format!(
            r#"org "{name}"
dumpuser "{AMANDA_USER}"
infofile "{work}/curinfo"
logdir "{work}/log"
indexdir "{work}/index"
tapecycle 2
labelstr "^DailySet1-[0-9]+$"
define tapetype S3 {{
  length 100 gigabytes
}}
tapetype "S3"
device_property "S3_ACCESS_KEY" "{key}"
device_property "S3_SECRET_KEY" "{secret}"
device_property "S3_SSL" "NO"
device_property "S3_SUBDOMAIN" "NO"
device_property "STORAGE_API" "AWS4"
device_property "S3_HOST" "127.0.0.1"
device_property "PROXY" "{host_port}"
device_property "S3_BUCKET_LOCATION" "{region}"
device_property "CREATE_BUCKET" "NO"
device_property "NB_THREADS_BACKUP" "4"
{properties}"#,
            work = work.display()
        );
        std::fs::write(conf_dir.join("amanda.conf"), config).expect("amanda.conf");
        let chown = Command::new("chown")
            .args(["-R", &format!("{AMANDA_USER}:{AMANDA_USER}")])
            .arg(&conf_dir)
            .arg(dir.path())
            .status()
            .expect("chown");
        assert!(chown.success());
        Amanda { name, dir, shim }
    }

    /// Runs an Amanda program as the Amanda user with the shim preloaded.
    fn run(&self, program: &str, args: &[&str], stdin: Option<Vec<u8>>) -> Output {
        let mut child = Command::new("runuser")
            .args(["-u", AMANDA_USER, "--", "env"])
            .arg(format!("LD_PRELOAD={}", self.shim.display()))
            .arg(program)
            .args(args)
            .current_dir(self.dir.path())
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|err| panic!("cannot run {program} as {AMANDA_USER}: {err}"));
        let feeder = stdin.map(|data| {
            let mut pipe = child.stdin.take().expect("stdin");
            std::thread::spawn(move || {
                use std::io::Write;
                pipe.write_all(&data).expect("feed Amanda");
            })
        });
        let output = child.wait_with_output().expect("wait");
        if let Some(feeder) = feeder {
            feeder.join().expect("feeder");
        }
        output
    }

    fn amdevcheck_label(&self, device: &str) -> String {
        let out = self.run(
            "/usr/sbin/amdevcheck",
            &["--label", &self.name, device],
            None,
        );
        assert!(
            out.status.success(),
            "amdevcheck: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    fn amrestore(&self, device: &str, file: u32) -> Vec<u8> {
        let file = file.to_string();
        let out = self.run(
            "/usr/sbin/amrestore",
            &["--config", &self.name, "-p", "-f", &file, device],
            None,
        );
        assert!(
            out.status.success(),
            "amrestore failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    }

    /// Amanda's own S3 device labels the tape and writes `data` as its file 1.
    fn write_tape(&self, device: &str, label: &str, data: &[u8]) {
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/amanda/amanda-write.pl");
        let copy = self.dir.path().join("amanda-write.pl");
        std::fs::copy(&script, &copy).expect("copy script");
        let copy = copy.display().to_string();
        let out = self.run(
            "perl",
            &[
                &copy,
                &self.name,
                device,
                label,
                "20261101020304",
                "web9",
                "/srv",
            ],
            Some(data.to_vec()),
        );
        assert!(
            out.status.success(),
            "Amanda's device could not write: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for Amanda {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(PathBuf::from("/etc/amanda").join(&self.name));
        let _ = std::fs::remove_dir_all(PathBuf::from("/var/log/amanda/server").join(&self.name));
    }
}

fn device(set: &Set, slot: usize) -> String {
    format!("s3:{}/{}", set.bucket, set.prefix(slot))
}

#[test]
fn amdevcheck_reads_our_label() {
    let set = Set::new("amdevcheck", "", "");
    set.tc()
        .args(["label", "--slot", "1", "DailySet1-01"])
        .assert()
        .success();
    let amanda = Amanda::new();
    assert_eq!(amanda.amdevcheck_label(&device(&set, 1)), "DailySet1-01");
    // An empty slot: Amanda and we say the same.
    let out = amanda.run(
        "/usr/sbin/amdevcheck",
        &[&amanda.name, &device(&set, 2)],
        None,
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("VOLUME_UNLABELED"));
    let ours = set.tc().args(["devcheck", "--slot", "2"]).assert().code(3);
    assert!(String::from_utf8_lossy(&ours.get_output().stdout).contains("VOLUME_UNLABELED"));
}

#[test]
fn amrestore_reads_back_files_we_wrote() {
    let set = Set::new("amrestore", "", "");
    set.label_and_load(1);
    let first = random_bytes(5_000_000, 21);
    let second = random_bytes(1_234_567, 22);
    set.write(&first, "/home");
    set.write(&second, "/etc");
    // Our manifests are there, beside Amanda's objects...
    assert!(set.keys().contains(&set.key(1, "f00000002-manifest.json")));
    let amanda = Amanda::new();
    // ...and Amanda reads the tape as its own: label, both files byte for byte.
    assert_eq!(amanda.amdevcheck_label(&device(&set, 1)), "DailySet1-01");
    let back = amanda.amrestore(&device(&set, 1), 2);
    assert_eq!(back.len(), second.len());
    assert_eq!(sha256_hex(&back), sha256_hex(&second));
    let back = amanda.amrestore(&device(&set, 1), 1);
    assert_eq!(sha256_hex(&back), sha256_hex(&first));
}

#[test]
fn we_read_tapes_amanda_wrote_and_append_to_them() {
    let set = Set::new("amwrote", "", "");
    let amanda = Amanda::new();
    let data = random_bytes(3_500_000, 31);
    amanda.write_tape(&device(&set, 2), "DailySet1-02", &data);
    assert_eq!(amanda.amdevcheck_label(&device(&set, 2)), "DailySet1-02");

    // Our inventory sees Amanda's label, date and file.
    let out = set
        .tc()
        .args(["inventory", "--rescan", "--json"])
        .assert()
        .success();
    let inventory = harness::event(&out.get_output().stdout);
    let slot = &inventory["slots"][1];
    assert_eq!(slot["label"], "DailySet1-02");
    assert_eq!(slot["datestamp"], "20261101020304");
    assert_eq!(slot["files"], 1);
    assert_eq!(slot["contents"][0]["host"], "web9");
    assert_eq!(slot["contents"][0]["disk"], "/srv");
    assert_eq!(slot["contents"][0]["sha256"], serde_json::Value::Null);
    let out = set
        .tc()
        .args(["devcheck", "--slot", "2"])
        .assert()
        .success();
    assert!(
        String::from_utf8_lossy(&out.get_output().stdout)
            .contains("label DailySet1-02 time 20261101020304")
    );

    // Our read gives exactly what amrestore gives. Amanda's device fills the last block up to
    // BLOCK_SIZE, so both start with the data and run to a whole number of blocks.
    let theirs = amanda.amrestore(&device(&set, 2), 1);
    let out = set
        .tc()
        .args(["read", "--slot", "2", "--file", "1"])
        .assert()
        .success();
    let ours = out.get_output().stdout.clone();
    assert_eq!(sha256_hex(&ours), sha256_hex(&theirs));
    assert_eq!(&ours[..data.len()], &data[..]);
    assert_eq!(
        harness::event(&out.get_output().stderr)["verified"],
        "listing"
    );

    // We append file 2 to Amanda's tape; Amanda reads it.
    set.tc()
        .args(["load", "--label", "DailySet1-02"])
        .assert()
        .success();
    let more = random_bytes(2_000_001, 32);
    assert_eq!(set.write(&more, "/var")["file"], 2);
    assert_eq!(
        sha256_hex(&amanda.amrestore(&device(&set, 2), 2)),
        sha256_hex(&more)
    );
}

#[test]
fn we_read_files_amanda_wrote_with_multipart_upload() {
    // Our own BLOCK_SIZE stays at 1 MiB: the ranges we read need not match Amanda's parts.
    let set = Set::new("ammultipart", "", "");
    const BLOCK: usize = 5 << 20; // S3's smallest part (but the last)
    let amanda = Amanda::with_properties(&[("BLOCK_SIZE", "5m"), ("S3_MULTI_PART_UPLOAD", "YES")]);
    // Five whole parts and a sixth that is not, nor a multiple of Amanda's 32 KiB reads.
    let data = random_bytes(30_000_001, 41);
    amanda.write_tape(&device(&set, 1), "DailySet1-01", &data);

    // Amanda stored the file as one completed multipart object: no blocks, no upload left open.
    assert_eq!(
        set.keys(),
        vec![
            set.key(1, "f00000001-filestart"),
            set.key(1, "f00000001-mp.data"),
            set.key(1, "special-tapestart"),
        ]
    );
    assert_eq!(harness::open_uploads(&set.bucket), 0);
    let head = harness::block_on(
        harness::client()
            .head_object()
            .bucket(&set.bucket)
            .key(set.key(1, "f00000001-mp.data"))
            .send(),
    )
    .expect("HEAD the -mp.data object");
    assert!(
        head.e_tag()
            .is_some_and(|etag| etag.trim_matches('"').ends_with("-6")),
        "the -mp.data object is not a 6-part upload: ETag {:?}",
        head.e_tag()
    );

    // Amanda pads the last part to BLOCK_SIZE, as it pads the last block, with what its block
    // buffer still holds: the same bytes of the part before. So the file is 6 whole parts.
    let whole = data.len() / BLOCK; // 5
    let tail = data.len() - whole * BLOCK;
    let mut expected = data.clone();
    expected.extend_from_slice(&data[(whole - 1) * BLOCK + tail..whole * BLOCK]);
    assert_eq!(expected.len(), 6 * BLOCK);
    assert_eq!(head.content_length(), Some(expected.len() as i64));
    assert_eq!(
        sha256_hex(
            &harness::object(&set.bucket, &set.key(1, "f00000001-mp.data"))
                .expect("the -mp.data object")
        ),
        sha256_hex(&expected)
    );

    // Our inventory, text and JSON, sees the file at its size.
    let out = set.tc().args(["inventory", "--rescan"]).assert().success();
    let text = String::from_utf8_lossy(&out.get_output().stdout).to_string();
    let line = text
        .lines()
        .find(|l| l.starts_with("1 "))
        .unwrap_or_else(|| panic!("no slot 1 in:\n{text}"));
    let fields: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(
        &fields[..5],
        &["1", "DailySet1-01", "20261101020304", "1", "30MiB"],
        "{text}"
    );
    let inventory = set.inventory();
    let slot = &inventory["slots"][0];
    assert_eq!(slot["label"], "DailySet1-01");
    assert_eq!(slot["files"], 1);
    assert_eq!(slot["bytes"], expected.len() as u64);
    assert_eq!(slot["contents"][0]["file"], 1);
    assert_eq!(slot["contents"][0]["host"], "web9");
    assert_eq!(slot["contents"][0]["disk"], "/srv");
    assert_eq!(slot["contents"][0]["size"], expected.len() as u64);
    // Counted in BLOCK_SIZE (1 MiB) ranges, as read counts them below.
    assert_eq!(slot["contents"][0]["blocks"], 30);
    assert_eq!(slot["contents"][0]["sha256"], serde_json::Value::Null);

    // Our read gives the object byte for byte, read in 1 MiB ranges (30 of them), and so does
    // Amanda's amrestore.
    let out = set
        .tc()
        .args(["read", "--slot", "1", "--file", "1"])
        .assert()
        .success();
    let ours = &out.get_output().stdout;
    assert_eq!(ours.len(), expected.len());
    assert_eq!(sha256_hex(ours), sha256_hex(&expected));
    let event = harness::event(&out.get_output().stderr);
    assert_eq!(event["size"], expected.len() as u64);
    assert_eq!(event["sha256"], sha256_hex(&expected));
    assert_eq!(event["blocks"], 30);
    assert_eq!(event["verified"], "listing");
    assert_eq!(
        sha256_hex(&amanda.amrestore(&device(&set, 1), 1)),
        sha256_hex(&expected)
    );

    // --raw puts Amanda's header first, padded to 32 KiB.
    let out = set
        .tc()
        .args(["read", "--slot", "1", "--file", "1", "--raw"])
        .assert()
        .success();
    let raw = &out.get_output().stdout;
    assert!(raw.starts_with(b"AMANDA: SPLIT_FILE 20261101020304 web9 /srv "));
    assert_eq!(sha256_hex(&raw[32 * 1024..]), sha256_hex(&expected));
}
