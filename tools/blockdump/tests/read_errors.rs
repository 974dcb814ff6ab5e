//! Read errors on a real block device: a loop device over a file that FUSE serves with chosen
//! byte ranges unreadable (`tests/bad-sectors-fs`; this kernel has no device-mapper to make a
//! failing device any other way). Without `--continue-on-error` the first error fails the dump
//! with its offset; with it, the bad sectors become zeros and are listed, ddrescue-like, and in
//! files mode the unreadable part of a file becomes zeros in the archive, listed by file name.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use common::*;

const MIB: u64 = 1 << 20;
/// Unreadable: 8 KiB at 3 MiB, and 4 KiB one sector into 5 MiB.
const BAD: [(u64, u64); 2] = [(3 * MIB, 8192), (5 * MIB + 4096, 4096)];

/// The FUSE file system and the loop device over its file, taken down on drop.
struct FailingDevice {
    fuse: Child,
    mountpoint: PathBuf,
    device: Option<LoopDev>,
}

impl FailingDevice {
    fn new(image: &Path, dir: &Path, bad: &[(u64, u64)]) -> Self {
        let mountpoint = dir.join("mnt");
        fs::create_dir_all(&mountpoint).expect("mount point");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/bad-sectors-fs");
        let mut command = Command::new(script);
        command.arg(image).arg(&mountpoint);
        for (start, length) in bad {
            command.arg(format!("{start}:{length}"));
        }
        let mut fuse = command.spawn().expect(
            "tests/bad-sectors-fs (needs python3, fusepy and libfuse2; .ci/run installs them)",
        );
        let file = mountpoint.join("disk.img");
        let deadline = Instant::now() + Duration::from_secs(20);
        while !file.exists() {
            if let Ok(Some(status)) = fuse.try_wait() {
                panic!(
                    "bad-sectors-fs exited with {status} (is fusepy installed? pip install fusepy; apt-get install libfuse2)"
                );
            }
            assert!(Instant::now() < deadline, "bad-sectors-fs did not mount");
            std::thread::sleep(Duration::from_millis(50));
        }
        let out = sh(
            "losetup",
            &[
                "--find",
                "--show",
                "--read-only",
                file.to_str().expect("path"),
            ],
        );
        let device = LoopDev {
            path: PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()),
        };
        FailingDevice {
            fuse,
            mountpoint,
            device: Some(device),
        }
    }

    fn path(&self) -> &str {
        self.device.as_ref().expect("device").as_str()
    }
}

impl Drop for FailingDevice {
    fn drop(&mut self) {
        drop(self.device.take());
        // The kernel lets go of a detached loop device's file a moment later: until then the
        // unmount is refused (busy). Lazily unmounted in the end, so no mount outlives the test.
        let unmount = |lazy: bool| {
            Command::new("umount")
                .args(lazy.then_some("-l"))
                .arg(&self.mountpoint)
                .stderr(std::process::Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        };
        let deadline = Instant::now() + Duration::from_secs(5);
        while !unmount(false) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        unmount(true);
        let _ = self.fuse.kill();
        let _ = self.fuse.wait();
    }
}

fn image(dir: &Path) -> (PathBuf, Vec<u8>) {
    let data = random_bytes(8 * MIB as usize, 11);
    let path = dir.join("source.img");
    fs::write(&path, &data).expect("image");
    (path, data)
}

#[test]
fn the_first_read_error_fails_the_dump_with_its_offset() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (path, _) = image(tmp.path());
    let device = FailingDevice::new(&path, tmp.path(), &BAD);
    let out = blockdump()
        .args(["--mode", "raw", "--compress", "zstd"])
        .arg(device.path())
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(6), "exit 6 (input error)");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "one line on stderr: {stderr}");
    assert!(
        lines[0].contains(&format!("read error on {}", device.path()))
            && lines[0].contains(&format!("at offset {}", BAD[0].0))
            && lines[0].contains("Input/output error")
            && lines[0].contains("--continue-on-error"),
        "{stderr}"
    );
    // No completion event: nothing downstream may take the stream for a whole one.
    assert!(!stderr.contains("dump_complete"), "{stderr}");
}

#[test]
fn continue_on_error_zeroes_and_lists_exactly_the_bad_sectors() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (path, data) = image(tmp.path());
    let device = FailingDevice::new(&path, tmp.path(), &BAD);
    let events = tmp.path().join("events.jsonl");
    let out = blockdump()
        .args(["--mode", "raw", "--compress", "zstd", "--continue-on-error"])
        .arg("--events")
        .arg(&events)
        .arg(device.path())
        .output()
        .expect("run");
    assert_ok(&out);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        stderr.matches("unreadable").count(),
        3,
        "one warning per bad 4 KiB sector: {stderr}"
    );
    let ev = event(&fs::read(&events).expect("events"));
    assert_eq!(ev["event"], "dump_complete");
    assert_eq!(
        ev["bad_ranges"],
        serde_json::json!([
            {"offset": BAD[0].0, "length": BAD[0].1},
            {"offset": BAD[1].0, "length": BAD[1].1},
        ])
    );
    assert_eq!(ev["bad_bytes"], BAD[0].1 + BAD[1].1);

    // The stream is the device with zeros where it could not be read, and the SHA-256 says so.
    let mut expected = data.clone();
    for (start, length) in BAD {
        expected[start as usize..(start + length) as usize].fill(0);
    }
    assert_ne!(expected, data);
    assert_eq!(ev["sha256"], sha256_hex(&expected).as_str());
    let stream = tmp.path().join("dump.zst");
    fs::write(&stream, &out.stdout).expect("stream");
    let decoded = Command::new("zstd")
        .arg("-dc")
        .arg(&stream)
        .output()
        .expect("zstd");
    assert!(decoded.status.success());
    assert_eq!(decoded.stdout.len(), expected.len());
    assert!(decoded.stdout == expected, "zstd -d gives the zeroed image");
}

/// An ext4 image holding `data/victim.bin` (1 MiB of random bytes) and `data/fine.txt`; returns
/// the image, the victim's content and the byte offset on the device of its third 4 KiB block.
fn ext4_with_victim(dir: &Path) -> (PathBuf, Vec<u8>, u64) {
    let image = make_fs_image(dir, "fs.img", 64 * MIB, "mkfs.ext4", &["-q", "-b", "4096"]);
    let victim = random_bytes(MIB as usize, 21);
    {
        let source = LoopDev::new(&image);
        let mounted = Mounted::new(source.as_str(), &dir.join("fill"), "rw");
        fs::create_dir_all(mounted.dir.join("data")).expect("dir");
        fs::write(mounted.dir.join("data/victim.bin"), &victim).expect("victim");
        fs::write(mounted.dir.join("data/fine.txt"), "still readable\n").expect("fine");
    }
    let out = sh(
        "debugfs",
        &[
            "-R",
            "blocks /data/victim.bin",
            image.to_str().expect("path"),
        ],
    );
    let blocks: Vec<u64> = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(|b| b.parse().expect("block number"))
        .collect();
    assert_eq!(blocks.len(), 256, "1 MiB in 4 KiB blocks: {blocks:?}");
    (image, victim, blocks[2] * 4096)
}

#[test]
fn files_mode_names_the_file_it_cannot_read() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (image, _, bad_at) = ext4_with_victim(tmp.path());
    let device = FailingDevice::new(&image, tmp.path(), &[(bad_at, 4096)]);
    let out = blockdump()
        .args(["--mode", "files"])
        .arg(device.path())
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(6), "exit 6 (input error)");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    assert!(
        stderr.contains("read error in data/victim.bin")
            && stderr.contains("Input/output error")
            && stderr.contains("--continue-on-error"),
        "{stderr}"
    );
}

#[test]
fn files_mode_continue_on_error_pads_the_unreadable_block_with_zeros() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (image, victim, bad_at) = ext4_with_victim(tmp.path());
    let device = FailingDevice::new(&image, tmp.path(), &[(bad_at, 4096)]);
    let (stdout, ev) = dump_ok(["--mode", "files", "--continue-on-error", device.path()]);
    assert_eq!(ev["mode"], "files");
    assert_eq!(
        ev["bad_ranges"],
        serde_json::json!([{"path": "data/victim.bin", "offset": 2 * 4096, "length": 4096}])
    );
    assert_eq!(ev["bad_bytes"], 4096);

    // GNU tar extracts the tree: the victim with one block of zeros, the rest intact.
    let stream = tmp.path().join("dump.zst");
    fs::write(&stream, &stdout).expect("stream");
    let tree = tmp.path().join("tree");
    fs::create_dir_all(&tree).expect("dir");
    sh(
        "sh",
        &[
            "-c",
            &format!(
                "zstd -dc '{}' | tar -xf - -C '{}'",
                stream.display(),
                tree.display()
            ),
        ],
    );
    let mut expected = victim.clone();
    expected[2 * 4096..3 * 4096].fill(0);
    assert_ne!(expected, victim);
    assert!(fs::read(tree.join("data/victim.bin")).expect("victim") == expected);
    assert_eq!(
        fs::read_to_string(tree.join("data/fine.txt")).expect("fine"),
        "still readable\n"
    );
}
