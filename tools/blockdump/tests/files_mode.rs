//! Files mode on real ext4 and XFS file systems on loop devices: dump, restore, compare the trees;
//! the source is never written; the standard tools read the output; auto falls back to raw.

mod common;

use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};

use common::*;

/// Makes a file system image, mounts it, fills it, unmounts it; returns the image path.
fn filled_image(dir: &Path, mkfs: &str, args: &[&str], size: u64) -> std::path::PathBuf {
    let image = make_fs_image(dir, "fs.img", size, mkfs, args);
    let dev = LoopDev::new(&image);
    {
        let mounted = Mounted::new(dev.as_str(), &dir.join("src"), "rw");
        populate(&mounted.dir);
    }
    image
}

/// The tree of the image as mounted read-only (for comparison).
fn tree_of(image: &Path, dir: &Path, options: &str) -> std::collections::BTreeMap<String, String> {
    let dev = LoopDev::new(image);
    let mounted = Mounted::new(dev.as_str(), &dir.join("look"), options);
    snapshot(&mounted.dir)
}

fn files_roundtrip(mkfs: &str, args: &[&str], size: u64, ro_options: &str, fs_name: &str) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let image = filled_image(tmp.path(), mkfs, args, size);
    let before = sha256_file(&image);
    let expected = tree_of(&image, tmp.path(), ro_options);
    assert!(expected.contains_key("data/sparse.img"), "{expected:?}");

    // Dump from the loop device (the way an attached EBS volume is read), gzip this time.
    let stream = tmp.path().join("dump.gz");
    let events = tmp.path().join("dump.jsonl");
    {
        let dev = LoopDev::new(&image);
        let out = blockdump()
            .args(["--compress", "gzip", "--level", "1", "--events"])
            .arg(&events)
            .arg(dev.as_str())
            .output()
            .expect("run");
        assert_ok(&out);
        fs::write(&stream, &out.stdout).expect("save stream");
    }
    assert_eq!(sha256_file(&image), before, "the source image was modified");
    let dumped = last_event(&events);
    assert_eq!(dumped["mode"], "files");
    assert_eq!(dumped["fs_type"], fs_name);
    assert!(dumped["entries"].as_u64().unwrap_or(0) >= 12, "{dumped}");
    // The sparse file's 64 MiB of holes are not in the archive.
    assert!(
        dumped["size"].as_u64().expect("size") < 16 << 20,
        "{dumped}"
    );

    // The SHA-256 is that of the tar stream gunzip gives.
    let tar = Command::new("gunzip")
        .arg("-c")
        .arg(&stream)
        .output()
        .expect("gunzip");
    assert!(tar.status.success());
    assert_eq!(
        sha256_hex(&tar.stdout),
        dumped["sha256"].as_str().expect("sha")
    );

    // blockdump restore into a new directory: the same tree.
    let restored = tmp.path().join("restored");
    let out = blockdump()
        .args(["restore", "--expect-from"])
        .arg(&events)
        .arg(&restored)
        .pipe_stdin(&stream)
        .expect("stdin")
        .output()
        .expect("run");
    assert_ok(&out);
    let done = event(&out.stderr);
    assert_eq!(done["mode"], "files");
    assert_eq!(done["verified"], "stream+expected");
    let got = snapshot(&restored);
    assert_eq!(got, expected);
    // Holes stay holes.
    let sparse = restored.join("data/sparse.img");
    assert!(
        allocated(&sparse) < 4 << 20,
        "{} allocated",
        allocated(&sparse)
    );

    // GNU tar extracts the same tree from gunzip's output.
    let by_tar = tmp.path().join("by-tar");
    fs::create_dir(&by_tar).expect("dir");
    let mut child = Command::new("tar")
        .args([
            "--xattrs",
            "--xattrs-include=*",
            "--numeric-owner",
            "-xpf",
            "-",
            "-C",
        ])
        .arg(&by_tar)
        .stdin(Stdio::piped())
        .spawn()
        .expect("tar");
    std::io::Write::write_all(&mut child.stdin.take().expect("stdin"), &tar.stdout)
        .expect("feed tar");
    assert!(child.wait().expect("tar").success());
    let tar_tree = snapshot(&by_tar);
    assert_eq!(tar_tree, expected);

    // Raw mode of the same file system: the image comes back byte for byte, sparse, and mounts
    // with the same tree.
    let (stream, raw) = dump_ok([Path::new("--mode"), Path::new("raw"), &image]);
    assert_eq!(raw["mode"], "raw");
    assert_eq!(raw["fs_type"], fs_name);
    assert_eq!(raw["sha256"], before.as_str());
    let copy = tmp.path().join("copy.img");
    restore_ok(&[], &copy, stream);
    assert_eq!(sha256_file(&copy), before);
    assert!(
        allocated(&copy) < size / 2,
        "the restored image is not sparse"
    );
    assert_eq!(
        tree_of(&copy, &tmp.path().join("copy"), ro_options),
        expected
    );
}

#[test]
fn ext4_files_mode_roundtrip() {
    files_roundtrip("mkfs.ext4", &["-q", "-F"], 128 << 20, "ro,noload", "ext4");
}

#[test]
fn xfs_files_mode_roundtrip() {
    files_roundtrip("mkfs.xfs", &["-q", "-f"], 320 << 20, "ro,norecovery", "xfs");
}

#[test]
fn image_file_in_auto_mode_uses_files_and_zstd_d_gives_a_tar() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let image = filled_image(tmp.path(), "mkfs.ext4", &["-q", "-F"], 96 << 20);
    let before = sha256_file(&image);
    let out = blockdump().arg(&image).output().expect("run");
    assert_ok(&out);
    assert_eq!(sha256_file(&image), before);
    let ev = event(&out.stderr);
    assert_eq!(ev["mode"], "files");
    assert_eq!(ev["compression"], "zstd");
    let stream = tmp.path().join("dump.zst");
    fs::write(&stream, &out.stdout).expect("save");
    let list = Command::new("sh")
        .arg("-c")
        .arg(format!("zstd -dc {} | tar -tvf -", stream.display()))
        .output()
        .expect("zstd | tar");
    assert!(
        list.status.success(),
        "{}",
        String::from_utf8_lossy(&list.stderr)
    );
    let listing = String::from_utf8_lossy(&list.stdout);
    assert!(
        listing.contains("data/hosts-link -> ../etc/hosts"),
        "{listing}"
    );
    assert!(
        listing.contains("etc/also-linked link to data/linked"),
        "{listing}"
    );
    // No loop device is left behind.
    assert!(loops_of(&image).is_empty(), "loop device left behind");

    // Uncompressed: the output is the bare tar archive, and restore recognises it as one.
    let out = blockdump()
        .args(["--compress", "none"])
        .arg(&image)
        .output()
        .expect("run");
    assert_ok(&out);
    assert_eq!(&out.stdout[257..262], b"ustar");
    let sha = event(&out.stderr)["sha256"].clone();
    assert_eq!(sha256_hex(&out.stdout), sha.as_str().expect("sha"));
    let restored = tmp.path().join("plain");
    let ev = restore_ok(&[], &restored, out.stdout);
    assert_eq!(ev["mode"], "files");
    assert_eq!(ev["compression"], "none");
    assert_eq!(ev["sha256"], sha);
    assert!(restored.join("etc/conf.d/app.conf").is_file());
}

#[test]
fn corrupted_file_system_falls_back_to_raw_in_auto() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let image = make_fs_image(tmp.path(), "bad.img", 32 << 20, "mkfs.ext4", &["-q", "-F"]);
    // Keep the ext4 magic (0xEF53 at 1080) but wreck the rest of the superblock.
    {
        use std::os::unix::fs::FileExt;
        let file = fs::OpenOptions::new()
            .write(true)
            .open(&image)
            .expect("open");
        file.write_all_at(&[0xAA; 56], 1024).expect("wreck");
        file.write_all_at(&[0xAA; 200], 1082).expect("wreck");
    }
    let before = sha256_file(&image);
    let out = blockdump().arg(&image).output().expect("run");
    assert_ok(&out);
    let ev = event(&out.stderr);
    assert_eq!(ev["mode"], "raw", "{ev}");
    assert_eq!(ev["fs_type"], "ext4");
    assert!(
        ev["fallback_reason"]
            .as_str()
            .expect("reason")
            .contains("mount"),
        "{ev}"
    );
    assert_eq!(ev["sha256"], before.as_str());

    // Unrecognised content: raw, with the reason.
    let junk = tmp.path().join("junk.img");
    fs::write(&junk, random_bytes(2 << 20, 11)).expect("junk");
    let out = blockdump().arg(&junk).output().expect("run");
    assert!(out.status.success());
    let ev = event(&out.stderr);
    assert_eq!(ev["mode"], "raw");
    assert!(
        ev["fallback_reason"]
            .as_str()
            .expect("reason")
            .contains("recognised")
    );

    // --mode files refuses it with one line and exit 2.
    let out = blockdump()
        .args(["--mode", "files"])
        .arg(&junk)
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with("blockdump: files mode: no ext2/3/4 or XFS"),
        "{err}"
    );
    assert!(out.stdout.is_empty());
}

#[test]
fn a_mounted_source_stays_unmodified() {
    // A volume mounted read-write elsewhere with a dirty journal: files mode must not replay it.
    let tmp = tempfile::tempdir().expect("tempdir");
    let image = filled_image(tmp.path(), "mkfs.ext4", &["-q", "-F"], 64 << 20);
    let dev = LoopDev::new(&image);
    let before = sha256_file(&dev.path);
    let out = blockdump()
        .arg("--mode")
        .arg("files")
        .arg(dev.as_str())
        .output()
        .expect("run");
    assert_ok(&out);
    assert_eq!(sha256_file(&dev.path), before);
    // A device in use by a read-write mount: auto reports why it did not use files mode, or
    // mounts it alongside; either way the device is not written by blockdump.
    let mounted = Mounted::new(dev.as_str(), &tmp.path().join("live"), "rw");
    fs::write(mounted.dir.join("new-file"), b"written while mounted").expect("write");
    let out = blockdump().arg(dev.as_str()).output().expect("run");
    assert_ok(&out);
    let ev = event(&out.stderr);
    assert!(ev["sha256"].is_string());
    // Our private mount is gone again.
    assert!(blockdump_mounts_of(dev.as_str()).is_empty());
}

#[test]
fn sigterm_mid_dump_unmounts_and_exits_143() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let image = filled_image(tmp.path(), "mkfs.ext4", &["-q", "-F"], 64 << 20);
    let child = Command::new(harness::bin("blockdump"))
        .args(["--mode", "files", "--rate-limit", "1MiB"])
        .arg(&image)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    std::thread::sleep(std::time::Duration::from_millis(1200));
    let loops = loops_of(&image);
    assert_eq!(
        loops.len(),
        1,
        "blockdump's read-only loop device: {loops:?}"
    );
    let ours = blockdump_mounts_of(&loops[0]);
    assert_eq!(ours.len(), 1, "the dump should be under way");
    signal_and_expect(
        child,
        nix::sys::signal::Signal::SIGTERM,
        143,
        "blockdump: terminated by SIGTERM",
    );
    let mounts = fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    assert!(!mounts.contains(&ours[0]), "{mounts}");
    assert!(loops_of(&image).is_empty(), "loop device left behind");
    assert!(!Path::new(&ours[0]).exists(), "mount point left behind");
}
