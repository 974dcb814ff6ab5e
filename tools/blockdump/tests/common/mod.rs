//! Real loop devices, file systems and trees for the blockdump tests (we run as root).
//!
//! Every device and mount is released by a Drop guard, so a failing assertion does not leak loop
//! devices into the next test.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub use harness::{event, random_bytes, sha256_hex};

/// Runs a command and panics with its stderr if it fails.
pub fn sh(program: &str, args: &[&str]) -> Output {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|err| panic!("cannot run {program}: {err}"));
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A loop device over an image file, detached on drop.
#[derive(Debug)]
pub struct LoopDev {
    pub path: PathBuf,
}

impl LoopDev {
    pub fn new(image: &Path) -> Self {
        let out = sh(
            "losetup",
            &["--find", "--show", image.to_str().expect("utf-8 path")],
        );
        LoopDev {
            path: PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()),
        }
    }

    pub fn as_str(&self) -> &str {
        self.path.to_str().expect("utf-8 path")
    }
}

impl Drop for LoopDev {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.path).status();
    }
}

/// A mount, unmounted on drop.
#[derive(Debug)]
pub struct Mounted {
    pub dir: PathBuf,
}

impl Mounted {
    pub fn new(device: &str, dir: &Path, options: &str) -> Self {
        fs::create_dir_all(dir).expect("mount point");
        sh(
            "mount",
            &["-o", options, device, dir.to_str().expect("utf-8 path")],
        );
        Mounted {
            dir: dir.to_path_buf(),
        }
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.dir).status();
    }
}

/// A sparse image file of `size` bytes with a file system made by `mkfs` (e.g. "mkfs.ext4").
pub fn make_fs_image(dir: &Path, name: &str, size: u64, mkfs: &str, args: &[&str]) -> PathBuf {
    let image = dir.join(name);
    let file = fs::File::create(&image).expect("image");
    file.set_len(size).expect("size");
    drop(file);
    let mut all: Vec<&str> = args.to_vec();
    all.push(image.to_str().expect("utf-8 path"));
    sh(mkfs, &all);
    image
}

/// Fills `root` with what files mode must keep: nested directories, modes and owners, a symlink,
/// hard links, user.* attributes on a file and a directory, an empty file and a large sparse file.
pub fn populate(root: &Path) {
    let p = |rel: &str| root.join(rel);
    fs::create_dir_all(p("etc/conf.d")).expect("dirs");
    fs::create_dir_all(p("data/deep/er")).expect("dirs");
    fs::write(p("etc/hosts"), "127.0.0.1 localhost\n").expect("file");
    fs::write(p("etc/conf.d/app.conf"), "key = value\n".repeat(1000)).expect("file");
    fs::write(p("data/random.bin"), random_bytes(3 << 20, 7)).expect("file");
    fs::write(p("data/deep/er/empty"), b"").expect("file");
    fs::write(p("data/linked"), b"one inode, two names\n").expect("file");
    fs::hard_link(p("data/linked"), p("etc/also-linked")).expect("hard link");
    std::os::unix::fs::symlink("../etc/hosts", p("data/hosts-link")).expect("symlink");
    std::os::unix::fs::symlink("/nonexistent/target", p("data/dangling")).expect("symlink");
    fs::set_permissions(p("etc/hosts"), fs::Permissions::from_mode(0o640)).expect("chmod");
    fs::set_permissions(p("data/deep"), fs::Permissions::from_mode(0o750)).expect("chmod");
    fs::set_permissions(p("data/random.bin"), fs::Permissions::from_mode(0o4755)).expect("chmod");
    sh(
        "chown",
        &["1234:5678", p("etc/hosts").to_str().expect("path")],
    );
    sh(
        "chown",
        &["-h", "42:43", p("data/hosts-link").to_str().expect("path")],
    );
    sh(
        "chown",
        &["1000:1000", p("data/deep").to_str().expect("path")],
    );
    sh(
        "setfattr",
        &[
            "-n",
            "user.origin",
            "-v",
            "blockdump-test",
            p("etc/hosts").to_str().expect("path"),
        ],
    );
    sh(
        "setfattr",
        &[
            "-n",
            "user.dir.attr",
            "-v",
            "0x00ff10",
            p("data/deep").to_str().expect("path"),
        ],
    );
    // 64 MiB sparse file with data at the start, the middle and the end.
    let sparse = fs::File::create(p("data/sparse.img")).expect("sparse");
    sparse.set_len(64 << 20).expect("len");
    use std::os::unix::fs::FileExt;
    sparse.write_all_at(b"start", 0).expect("write");
    sparse
        .write_all_at(&random_bytes(100_000, 3), 30 << 20)
        .expect("write");
    sparse.write_all_at(b"end", (64 << 20) - 3).expect("write");
    drop(sparse);
    sh(
        "touch",
        &[
            "-d",
            "2001-02-03 04:05:06",
            p("etc/conf.d/app.conf").to_str().expect("path"),
        ],
    );
    sh(
        "touch",
        &[
            "-d",
            "2002-03-04 05:06:07",
            p("data/deep").to_str().expect("path"),
        ],
    );
}

/// A description of every entry of a tree: type, mode, owner, size, mtime, content hash, link
/// target, extended attributes and which entries share an inode.
pub fn snapshot(root: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut inodes: BTreeMap<u64, String> = BTreeMap::new();
    walk(root, root, &mut out, &mut inodes);
    out
}

fn walk(
    root: &Path,
    path: &Path,
    out: &mut BTreeMap<String, String>,
    inodes: &mut BTreeMap<u64, String>,
) {
    let meta = fs::symlink_metadata(path).expect("lstat");
    let rel = path
        .strip_prefix(root)
        .expect("inside")
        .to_string_lossy()
        .to_string();
    let rel = if rel.is_empty() { ".".to_string() } else { rel };
    let ft = meta.file_type();
    let mut attrs: Vec<String> = xattr::list(path)
        .map(|names| {
            names
                .filter(|n| n.to_string_lossy().starts_with("user."))
                .map(|n| {
                    let v = xattr::get(path, &n).ok().flatten().unwrap_or_default();
                    format!("{}={}", n.to_string_lossy(), hex::encode(v))
                })
                .collect()
        })
        .unwrap_or_default();
    attrs.sort();
    let kind = if ft.is_dir() {
        "dir".to_string()
    } else if ft.is_symlink() {
        format!("link->{}", fs::read_link(path).expect("readlink").display())
    } else {
        let data = fs::read(path).expect("read");
        format!("file sha={}", &sha256_hex(&data)[..16])
    };
    let mut line = format!(
        "{kind} mode={:o} uid={} gid={} xattrs={attrs:?}",
        meta.mode() & 0o7777,
        meta.uid(),
        meta.gid()
    );
    if !ft.is_dir() {
        line.push_str(&format!(" size={}", meta.len()));
    }
    if !ft.is_symlink() && rel != "lost+found" {
        line.push_str(&format!(" mtime={}", meta.mtime()));
    }
    if ft.is_file() && meta.nlink() > 1 {
        let first = inodes.entry(meta.ino()).or_insert_with(|| rel.clone());
        line.push_str(&format!(" hardlink-group={first}"));
    }
    out.insert(rel, line);
    if ft.is_dir() {
        let mut names: Vec<_> = fs::read_dir(path)
            .expect("readdir")
            .map(|e| e.expect("entry").file_name())
            .collect();
        names.sort();
        for name in names {
            walk(root, &path.join(name), out, inodes);
        }
    }
}

/// SHA-256 of a whole file or device.
pub fn sha256_file(path: &Path) -> String {
    let out = sh("sha256sum", &[path.to_str().expect("path")]);
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .expect("hash")
        .to_string()
}

/// Allocated bytes of a file (st_blocks * 512).
pub fn allocated(path: &Path) -> u64 {
    fs::metadata(path).expect("stat").blocks() * 512
}

/// The blockdump binary with arguments.
pub fn blockdump() -> assert_cmd::Command {
    harness::tool("blockdump")
}

/// The last JSON event in an events file.
pub fn last_event(path: &Path) -> serde_json::Value {
    event(&fs::read(path).expect("events file"))
}

/// blockdump's private mount points (blockdump-*) whose source is `device`.
pub fn blockdump_mounts_of(device: &str) -> Vec<String> {
    let info = fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    info.lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let mount_point = left.split(' ').nth(4)?;
            let source = right.split(' ').nth(1)?;
            (mount_point.contains("/blockdump-") && source == device)
                .then(|| mount_point.to_string())
        })
        .collect()
}

/// The loop devices backed by `image`.
pub fn loops_of(image: &Path) -> Vec<String> {
    let out = sh("losetup", &["-j", image.to_str().expect("path")]);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split(':').next().map(str::to_string))
        .collect()
}

/// Asserts that a run succeeded, showing its stderr when it did not.
pub fn assert_ok(out: &Output) {
    assert!(
        out.status.success(),
        "exit {:?}: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs `blockdump ARGS` (events on stderr), asserts success; returns stdout and the final event.
pub fn dump_ok<I, S>(args: I) -> (Vec<u8>, serde_json::Value)
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    let out = blockdump().args(args).output().expect("run blockdump");
    assert_ok(&out);
    let ev = event(&out.stderr);
    (out.stdout, ev)
}

/// Runs `blockdump restore ARGS TARGET` with `stream` on stdin, asserts success; returns the event.
pub fn restore_ok(args: &[&str], target: &Path, stream: Vec<u8>) -> serde_json::Value {
    let out = blockdump()
        .arg("restore")
        .args(args)
        .arg(target)
        .write_stdin(stream)
        .output()
        .expect("run blockdump restore");
    assert_ok(&out);
    event(&out.stderr)
}

/// Sends `signal` to a running child, then waits for it: returns its output after asserting the
/// exit status (128 + signal) and that its last stderr line starts with `message`.
pub fn signal_and_expect(
    child: std::process::Child,
    signal: nix::sys::signal::Signal,
    status: i32,
    message: &str,
) -> Output {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), signal).expect("kill");
    let out = child.wait_with_output().expect("wait");
    assert_eq!(out.status.code(), Some(status));
    let err = String::from_utf8_lossy(&out.stderr);
    let last = err.lines().last().unwrap_or("");
    assert!(last.starts_with(message), "{err}");
    out
}
