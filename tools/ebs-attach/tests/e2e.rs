//! The whole EBS export pipeline, end to end:
//!
//!   snapshot-restore volume | ebs-attach --cleanup-on-exit | blockdump --from-event --mode auto
//!     | s3-put-multipart s3://...
//!
//! EC2 is moto's; the attached volume is a real loop device carrying an ext4 file system (moto
//! attaches nothing, so the test plays udev and links the volume's by-id name to it); the object
//! goes to the real S3 test server (Garage) and is restored with s3-get | blockdump restore.

use harness::moto;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use moto::AZ;

/// A loop device over an ext4 image made from `tree` (mkfs.ext4 -d), detached on drop.
struct Ext4Loop {
    device: PathBuf,
    _dir: tempfile::TempDir,
}

impl Ext4Loop {
    fn new(tree: &Path) -> Ext4Loop {
        let dir = tempfile::tempdir().expect("tempdir");
        let image = dir.path().join("fs.img");
        std::fs::File::create(&image)
            .and_then(|f| f.set_len(64 << 20))
            .expect("image");
        let out = Command::new("mkfs.ext4")
            .args(["-q", "-F", "-d"])
            .arg(tree)
            .arg(&image)
            .output()
            .expect("mkfs.ext4 (e2fsprogs)");
        assert!(
            out.status.success(),
            "mkfs.ext4: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let out = Command::new("losetup")
            .args(["--find", "--show"])
            .arg(&image)
            .output()
            .expect("losetup");
        assert!(
            out.status.success(),
            "losetup: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ext4Loop {
            device: PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()),
            _dir: dir,
        }
    }
}

impl Drop for Ext4Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.device).status();
    }
}

/// A small tree: text, random data, a nested directory and a symlink.
fn sample_tree(root: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let files = vec![
        (PathBuf::from("etc/hostname"), b"backup-host\n".to_vec()),
        (
            PathBuf::from("data/random.bin"),
            harness::random_bytes(3 << 20, 5),
        ),
        (
            PathBuf::from("data/deep/notes.txt"),
            b"snapshot export test\n".repeat(1000),
        ),
    ];
    for (path, data) in &files {
        let full = root.join(path);
        std::fs::create_dir_all(full.parent().expect("parent")).expect("mkdir");
        std::fs::write(full, data).expect("write");
    }
    std::os::unix::fs::symlink("../etc/hostname", root.join("data/link")).expect("symlink");
    files
}

/// Plays udev for every volume restored from `snapshot`.
fn udev(snapshot: String, dev_dir: PathBuf, device: PathBuf) -> Arc<AtomicBool> {
    let stop = Arc::new(AtomicBool::new(false));
    let stopped = stop.clone();
    std::thread::spawn(move || {
        while !stopped.load(Ordering::SeqCst) {
            for volume in moto::volumes_from(&snapshot) {
                let link = dev_dir.join(format!(
                    "nvme-Amazon_Elastic_Block_Store_{}",
                    volume.volume_id().unwrap_or("").replace('-', "")
                ));
                let _ = std::os::unix::fs::symlink(&device, link);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    });
    stop
}

/// `bash -c` with the S3 test server's environment (for s3-put-multipart and s3-get); the EC2
/// tools get moto by flag.
fn bash(script: &str) -> std::process::Output {
    Command::new("bash")
        .args(["-c", script])
        .env("PATH", path_with_tools())
        .output()
        .expect("bash")
}

fn path_with_tools() -> String {
    let bin_dir = harness::bin("ebs-attach")
        .parent()
        .expect("target dir")
        .to_path_buf();
    format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    )
}

fn assert_restored(restored: &Path, files: &[(PathBuf, Vec<u8>)]) {
    for (path, data) in files {
        let got = std::fs::read(restored.join(path))
            .unwrap_or_else(|e| panic!("{} not restored: {e}", path.display()));
        assert!(&got == data, "{} differs", path.display());
    }
    assert_eq!(
        std::fs::read_link(restored.join("data/link")).expect("symlink restored"),
        PathBuf::from("../etc/hostname")
    );
}

#[test]
fn snapshot_to_volume_to_s3_and_back() {
    let moto_url = moto::endpoint();
    let tree = tempfile::tempdir().expect("tempdir");
    let files = sample_tree(tree.path());
    let lo = Ext4Loop::new(tree.path());
    let instance = moto::run_instance(AZ);
    let snapshot = moto::ec2_snapshot(1);
    let dev_dir = tempfile::tempdir().expect("tempdir");
    let stop = udev(
        snapshot.clone(),
        dev_dir.path().to_path_buf(),
        lo.device.clone(),
    );
    let bucket = harness::new_bucket("ebs-e2e");
    let url = format!("s3://{bucket}/ebs/{snapshot}.tar.zst");

    let aws = format!("--endpoint-url {moto_url} --region us-east-1");
    let script = format!(
        "set -o pipefail; \
         snapshot-restore {aws} volume --snapshot-id {snapshot} --az {AZ} \
         | ebs-attach {aws} --cleanup-on-exit --instance-id {instance} --az {AZ} --dev-dir '{dir}' --lock-file '{dir}/lock' \
         | blockdump --from-event --mode auto --events '{dir}/blockdump.jsonl' \
         | s3-put-multipart --events '{dir}/upload.jsonl' {url}",
        dir = dev_dir.path().display(),
    );
    let out = bash(&script);
    stop.store(true, Ordering::SeqCst);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "pipeline failed: {stderr}");
    assert!(
        moto::volumes_from(&snapshot).is_empty(),
        "the volume was deleted: {stderr}"
    );
    assert!(stderr.contains("\"event\":\"volume_deleted\""), "{stderr}");

    let dump = std::fs::read_to_string(dev_dir.path().join("blockdump.jsonl")).expect("events");
    let dump = &moto::events(dump.as_bytes())[0];
    assert_eq!(
        dump["mode"], "files",
        "the ext4 file system was archived: {dump}"
    );
    let upload = std::fs::read_to_string(dev_dir.path().join("upload.jsonl")).expect("events");
    assert_eq!(
        moto::events(upload.as_bytes())[0]["event"],
        "upload_complete"
    );
    assert!(harness::object(&bucket, &format!("ebs/{snapshot}.tar.zst")).is_some());

    // Restore: s3-get verifies the object, blockdump restore unpacks the archive.
    let restored = tempfile::tempdir().expect("tempdir");
    let out = bash(&format!(
        "set -o pipefail; s3-get {url} | blockdump restore '{}'",
        restored.path().display()
    ));
    assert!(
        out.status.success(),
        "restore failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_restored(restored.path(), &files);
}

#[test]
fn ebs_export_script_exports_verifies_and_never_overlaps() {
    let moto_url = moto::endpoint();
    let tree = tempfile::tempdir().expect("tempdir");
    let files = sample_tree(tree.path());
    let lo = Ext4Loop::new(tree.path());
    let instance = moto::run_instance(AZ);
    let snapshot = moto::ec2_snapshot(1);
    let dev_dir = tempfile::tempdir().expect("tempdir");
    let stop = udev(
        snapshot.clone(),
        dev_dir.path().to_path_buf(),
        lo.device.clone(),
    );
    let bucket = harness::new_bucket("ebs-export");
    let script = harness::repo_root().join("scripts/ebs-export");
    let lock = dev_dir.path().join("export.lock");
    let run = || {
        Command::new(&script)
            .args(["--snapshot-id", &snapshot, "--bucket", &bucket, "--az", AZ])
            .args(["--region", "us-east-1", "--job-id", "job-1", "--source-arn"])
            .arg("arn:aws:ec2:us-east-1:123456789012:volume/vol-0source")
            .arg("--dev-dir")
            .arg(dev_dir.path())
            .arg("--lock")
            .arg(&lock)
            .env("PATH", path_with_tools())
            .env("AWS_ENDPOINT_URL_EC2", &moto_url)
            .env("S3PIPE_INSTANCE_ID", &instance)
            .output()
            .expect("scripts/ebs-export")
    };

    // A run while another holds the lock exits 75 at once and touches nothing.
    let held = std::fs::File::create(&lock).expect("lock file");
    let held = nix::fcntl::Flock::lock(held, nix::fcntl::FlockArg::LockExclusiveNonblock)
        .map_err(|(_, errno)| errno)
        .expect("flock");
    let out = run();
    drop(held);
    assert_eq!(
        out.status.code(),
        Some(75),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(moto::volumes_from(&snapshot).is_empty());

    let out = run();
    stop.store(true, Ordering::SeqCst);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "ebs-export failed: {stderr}");
    assert!(
        moto::volumes_from(&snapshot).is_empty(),
        "volume deleted: {stderr}"
    );
    let today = humantime_date();
    let key = format!(
        "arn/aws/ec2/us-east-1/123456789012/volume/vol-0source/{today}/job-1/{snapshot}.zst"
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("s3://{bucket}/{key}")
    );
    assert!(harness::object(&bucket, &format!("{key}.events.jsonl")).is_some());

    let restored = tempfile::tempdir().expect("tempdir");
    let out = bash(&format!(
        "set -o pipefail; s3-get s3://{bucket}/{key} | blockdump restore '{}'",
        restored.path().display()
    ));
    assert!(
        out.status.success(),
        "restore failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_restored(restored.path(), &files);
}

/// Y=YYYY/M=MM/D=DD for today (UTC), as the script writes it.
fn humantime_date() -> String {
    let out = Command::new("date")
        .args(["-u", "+Y=%Y/M=%m/D=%d"])
        .output()
        .expect("date");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}
