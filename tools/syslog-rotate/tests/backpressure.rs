//! Backpressure: with the S3 server paused (SIGSTOP), syslog-rotate stops reading stdin and its
//! memory stays flat; after SIGCONT everything is stored. Its own test binary, so that pausing
//! the shared server cannot stall other tests.

#![allow(clippy::unwrap_used)]

mod common;

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use common::*;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// The Garage started by scripts/testbed; resumed when dropped, whatever happens.
struct Paused(Pid);

impl Drop for Paused {
    fn drop(&mut self) {
        let _ = kill(self.0, Signal::SIGCONT);
    }
}

fn server_pid() -> Pid {
    let dir = std::env::var("S3PIPE_S3_SERVER_DIR").expect(
        "S3PIPE_S3_SERVER_DIR: run this test with scripts/testbed, which starts Garage and names its directory",
    );
    let text = std::fs::read_to_string(format!("{dir}/garage.pid")).expect("garage.pid");
    Pid::from_raw(text.trim().parse().expect("a pid"))
}

fn status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("field")
}

#[test]
fn paused_server_blocks_the_writer_and_memory_stays_flat() {
    let bucket = new_bucket("backpressure");
    let mut args = base_args(&bucket, "bp");
    args.extend(["--upload-threads", "1", "--max-pending-uploads", "2"]);
    let mut running = Running::start(&args);
    running.write(b"warm up\n");
    std::thread::sleep(Duration::from_millis(500));

    let total: u64 = 80 << 20;
    let line = [b"0123456789".repeat(19).as_slice(), b"\n"].concat(); // 191 bytes
    let written = Arc::new(AtomicU64::new(0));
    let mut stdin = running.child.stdin.take().expect("stdin");
    let counter = written.clone();
    let pid = running.child.id();

    let paused = Paused(server_pid());
    kill(paused.0, Signal::SIGSTOP).expect("SIGSTOP garage");
    let writer = std::thread::spawn(move || {
        let block = line.repeat(5000);
        let mut sent = 0u64;
        while sent < total {
            stdin.write_all(&block).expect("write");
            sent += block.len() as u64;
            counter.store(sent, Ordering::SeqCst);
        }
        sent
    });
    std::thread::sleep(Duration::from_secs(3));
    let stalled_at = written.load(Ordering::SeqCst);
    let rss_1 = status_kib(pid, "VmRSS:");
    std::thread::sleep(Duration::from_secs(1));
    let stalled_later = written.load(Ordering::SeqCst);
    let rss_2 = status_kib(pid, "VmRSS:");
    drop(paused); // SIGCONT
    assert_eq!(
        stalled_at, stalled_later,
        "the writer is blocked while S3 is paused"
    );
    assert!(
        stalled_at < 40 << 20,
        "only a bounded amount was taken: {stalled_at}"
    );
    // 64 MiB + chunk-size x (upload-threads + max-pending-uploads)
    let bound_kib = (64 + 5 * 3) * 1024;
    assert!(rss_2 < bound_kib, "RSS {rss_2} KiB while paused");
    assert!(rss_2 <= rss_1 + 2048, "flat: {rss_1} then {rss_2} KiB");

    let sent = writer.join().expect("writer");
    let peak = status_kib(pid, "VmHWM:");
    let (status, events, stderr) = running.finish();
    assert!(status.success(), "{stderr}");
    assert!(peak < bound_kib, "peak RSS {peak} KiB");
    let stored = stored(&events);
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0]["size"].as_u64(), Some(sent + 8));
    assert_eq!(open_uploads(&bucket), 0);
}
