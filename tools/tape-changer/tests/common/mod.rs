//! Test set-up shared by the integration tests: a fresh bucket, a config file and a state file in a
//! temporary directory, and `tape-changer -c CONFIG` ready to run.

#![allow(dead_code)]

use std::path::PathBuf;

pub struct Set {
    pub dir: tempfile::TempDir,
    pub bucket: String,
    pub config: PathBuf,
}

impl Set {
    /// Three slots `s3:BUCKET/DailySet1/slot-{01..03}/`, labelstr `^DailySet1-[0-9]+$`, and
    /// whatever `extra` TOML adds (a `[device]` table is always there, with 1 MiB blocks unless `extra_device` sets BLOCK_SIZE).
    pub fn new(label: &str, extra: &str, extra_device: &str) -> Set {
        let bucket = harness::new_bucket(label);
        let dir = tempfile::tempdir().expect("tempdir");
        let config = dir.path().join("DailySet1.toml");
        let block = if extra_device.contains("BLOCK_SIZE") {
            ""
        } else {
            "BLOCK_SIZE = \"1MiB\""
        };
        std::fs::write(
            &config,
            format!(
                "slots = \"s3:{bucket}/DailySet1/slot-{{01..03}}/\"\nlabelstr = \"^DailySet1-[0-9]+$\"\n{extra}\n[device]\n{block}\n{extra_device}\n"
            ),
        )
        .expect("write config");
        Set {
            dir,
            bucket,
            config,
        }
    }

    pub fn tc(&self) -> assert_cmd::Command {
        let mut cmd = harness::tool("tape-changer");
        cmd.arg("-c").arg(&self.config);
        cmd
    }

    pub fn state_file(&self) -> PathBuf {
        self.dir.path().join("DailySet1.toml.state")
    }

    pub fn prefix(&self, slot: usize) -> String {
        format!("DailySet1/slot-{slot:02}/")
    }

    pub fn key(&self, slot: usize, name: &str) -> String {
        format!("{}{name}", self.prefix(slot))
    }

    /// Every key in the bucket, sorted.
    pub fn keys(&self) -> Vec<String> {
        let mut keys: Vec<String> = harness::block_on(
            harness::client()
                .list_objects_v2()
                .bucket(&self.bucket)
                .send(),
        )
        .expect("list")
        .contents()
        .iter()
        .filter_map(|o| o.key().map(str::to_string))
        .collect();
        keys.sort();
        keys
    }

    pub fn put(&self, key: &str, data: &[u8]) {
        harness::block_on(
            harness::client()
                .put_object()
                .bucket(&self.bucket)
                .key(key)
                .body(data.to_vec().into())
                .send(),
        )
        .expect("put");
    }

    pub fn delete(&self, key: &str) {
        harness::block_on(
            harness::client()
                .delete_object()
                .bucket(&self.bucket)
                .key(key)
                .send(),
        )
        .expect("delete");
    }

    /// Labels slot `slot` `DailySet1-0N` and loads it.
    pub fn label_and_load(&self, slot: usize) {
        self.tc()
            .args([
                "label",
                "--slot",
                &slot.to_string(),
                &format!("DailySet1-{slot:02}"),
            ])
            .assert()
            .success();
        self.tc()
            .args(["load", &slot.to_string()])
            .assert()
            .success();
    }

    /// Writes `data` as the next file of the loaded tape; returns the event.
    pub fn write(&self, data: &[u8], disk: &str) -> serde_json::Value {
        let out = self
            .tc()
            .args(["write", "--host", "web1", "--disk", disk])
            .write_stdin(data.to_vec())
            .assert()
            .success();
        harness::event(&out.get_output().stdout)
    }

    pub fn inventory(&self) -> serde_json::Value {
        let out = self.tc().args(["inventory", "--json"]).assert().success();
        harness::event(&out.get_output().stdout)
    }
}

/// The single stderr line of a failed run.
pub fn one_line(stderr: &[u8]) -> String {
    let text = String::from_utf8_lossy(stderr).to_string();
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "expected one line on stderr, got: {text}");
    assert!(lines[0].starts_with("tape-changer: "), "{text}");
    lines[0].to_string()
}
