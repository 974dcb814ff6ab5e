//! Helpers shared by the syslog-rotate tests: run the tool on a pipe, list and decode objects.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, ChildStdout, Command, Stdio};

#[allow(unused_imports)]
pub use harness::{block_on, client, new_bucket, object, open_uploads};

pub const TOOL: &str = "syslog-rotate";

/// A running syslog-rotate with stdin and stdout piped.
pub struct Running {
    pub child: Child,
    pub stdout: BufReader<ChildStdout>,
}

impl Running {
    pub fn start(args: &[&str]) -> Self {
        let mut child = Command::new(harness::bin(TOOL))
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start syslog-rotate");
        let stdout = BufReader::new(child.stdout.take().expect("piped"));
        Running { child, stdout }
    }

    pub fn write(&mut self, text: &[u8]) {
        let stdin = self.child.stdin.as_mut().expect("stdin open");
        stdin.write_all(text).expect("write to syslog-rotate");
        stdin.flush().expect("flush");
    }

    /// The next event line on stdout (blocks).
    pub fn next_event(&mut self) -> serde_json::Value {
        let mut line = String::new();
        self.stdout.read_line(&mut line).expect("read stdout");
        assert!(!line.is_empty(), "stdout ended before an event");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("not an event: {line:?}: {e}"))
    }

    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.child.id() as i32), signal)
            .expect("signal");
    }

    /// Closes stdin and waits: (status, remaining events, stderr).
    pub fn finish(mut self) -> (std::process::ExitStatus, Vec<serde_json::Value>, String) {
        drop(self.child.stdin.take());
        let mut rest = String::new();
        self.stdout.read_to_string(&mut rest).expect("stdout");
        let mut stderr = String::new();
        if let Some(mut err) = self.child.stderr.take() {
            let _ = err.read_to_string(&mut stderr);
        }
        let status = self.child.wait().expect("wait");
        let events = rest
            .lines()
            .filter(|l| l.starts_with('{'))
            .map(|l| serde_json::from_str(l).expect("event JSON"))
            .collect();
        (status, events, stderr)
    }
}

/// Runs the tool to completion on `input`: (status, events, stderr).
pub fn run(
    args: &[&str],
    input: &[u8],
) -> (std::process::ExitStatus, Vec<serde_json::Value>, String) {
    let mut running = Running::start(args);
    let stdin = running.child.stdin.take().expect("stdin");
    let input = input.to_vec();
    let writer = std::thread::spawn(move || {
        let mut stdin = stdin;
        let _ = stdin.write_all(&input);
    });
    let result = running.finish();
    writer.join().expect("writer");
    result
}

/// The object_stored events among `events`.
pub fn stored(events: &[serde_json::Value]) -> Vec<&serde_json::Value> {
    events
        .iter()
        .filter(|e| e["event"] == "object_stored")
        .collect()
}

pub fn summary(events: &[serde_json::Value]) -> &serde_json::Value {
    events
        .iter()
        .find(|e| e["event"] == "summary")
        .expect("a summary event")
}

/// Every key in the bucket, sorted.
pub fn keys(bucket: &str) -> Vec<String> {
    let listed = block_on(client().list_objects_v2().bucket(bucket).send()).expect("list");
    let mut keys: Vec<String> = listed
        .contents()
        .iter()
        .filter_map(|o| o.key().map(str::to_string))
        .collect();
    keys.sort();
    keys
}

/// An object's content, decoded as one gzip or zstd stream (by its extension).
pub fn decoded(bucket: &str, key: &str) -> Vec<u8> {
    let raw = object(bucket, key).unwrap_or_else(|| panic!("no object {key}"));
    decode(key, &raw)
}

pub fn decode(key: &str, raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    if key.ends_with(".gz") {
        // One gzip member only: GzDecoder stops after the first, so a second member would show
        // up as missing lines.
        let mut decoder = flate2::read::GzDecoder::new(raw);
        decoder.read_to_end(&mut out).expect("gunzip");
    } else if key.ends_with(".zst") {
        out = zstd::stream::decode_all(raw).expect("zstd -d");
    } else {
        out = raw.to_vec();
    }
    out
}

/// Test arguments: bucket, key template, and short waits.
pub fn base_args<'a>(bucket: &'a str, key: &'a str) -> Vec<&'a str> {
    vec!["--bucket", bucket, "--object-key", key]
}

/// Numbered lines of exactly `width` bytes including the newline.
pub fn numbered_lines(from: usize, count: usize, width: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(count * width);
    for n in from..from + count {
        let head = format!("line {n:08} ");
        out.extend_from_slice(head.as_bytes());
        out.extend(std::iter::repeat_n(b'x', width - head.len() - 1));
        out.push(b'\n');
    }
    out
}
