//! `ebs-attach` against moto's EC2, with a real loop device standing in for the attached volume
//! (moto attaches nothing: the test links `<dev-dir>/nvme-Amazon_Elastic_Block_Store_vol...` to
//! the loop device, as udev would for the NVMe disk).

use harness::moto;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use moto::{AZ, events};

/// A loop device over a small file, detached on drop.
struct Loop {
    device: PathBuf,
    _dir: tempfile::TempDir,
}

impl Loop {
    fn new() -> Loop {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("disk.img");
        std::fs::write(&file, vec![0u8; 4 << 20]).expect("image");
        let out = Command::new("losetup")
            .args(["--find", "--show"])
            .arg(&file)
            .output()
            .expect("losetup (util-linux) is needed");
        assert!(
            out.status.success(),
            "losetup: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let device = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        Loop { device, _dir: dir }
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.device).status();
    }
}

fn link_volume(dev_dir: &Path, volume_id: &str, device: &Path) {
    let link = dev_dir.join(format!(
        "nvme-Amazon_Elastic_Block_Store_{}",
        volume_id.replace('-', "")
    ));
    let _ = std::os::unix::fs::symlink(device, link);
}

/// Plays udev: links every volume restored from `snapshot` to `device` as soon as it exists.
fn udev(snapshot: String, dev_dir: PathBuf, device: PathBuf) -> Arc<AtomicBool> {
    let stop = Arc::new(AtomicBool::new(false));
    let stopped = stop.clone();
    std::thread::spawn(move || {
        while !stopped.load(Ordering::SeqCst) {
            for volume in moto::volumes_from(&snapshot) {
                link_volume(&dev_dir, volume.volume_id().unwrap_or(""), &device);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    });
    stop
}

fn new_volume(az: &str) -> String {
    let out = harness::block_on(
        moto::ec2()
            .create_volume()
            .availability_zone(az)
            .size(1)
            .send(),
    )
    .expect("CreateVolume");
    out.volume_id().expect("id").to_string()
}

fn state(volume_id: &str) -> Option<String> {
    moto::volume(volume_id).and_then(|v| v.state().map(|s| s.as_str().to_string()))
}

fn wait_gone(volume_id: &str) {
    let start = Instant::now();
    while state(volume_id).is_some() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "{volume_id} was not deleted"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn attaches_from_the_event_and_cleans_up_when_the_reader_finishes() {
    let instance = moto::run_instance(AZ);
    let imds = moto::Imds::start(&instance, AZ);
    let volume_id = new_volume(AZ);
    let lo = Loop::new();
    let dev_dir = tempfile::tempdir().expect("tempdir");
    link_volume(dev_dir.path(), &volume_id, &lo.device);

    let mut child = moto::std_tool("ebs-attach")
        .args([
            "--cleanup-on-exit",
            "--imds-endpoint",
            &imds.url,
            "--dev-dir",
        ])
        .arg(dev_dir.path())
        .arg("--lock-file")
        .arg(dev_dir.path().join("lock"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().expect("stdin");
        writeln!(
            stdin,
            r#"{{"event":"volume_created","tool":"snapshot-restore","time":"2026-11-23T00:00:00Z","volume_id":"{volume_id}","availability_zone":"{AZ}"}}"#
        )
        .expect("write");
        // stdin closes here: that must not end the run (the previous stage exits after its event).
    }
    let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
    let mut line = String::new();
    stdout.read_line(&mut line).expect("event");
    let event = &events(line.as_bytes())[0];
    assert_eq!(event["event"], "volume_attached");
    assert_eq!(event["tool"], "ebs-attach");
    assert_eq!(event["volume_id"], volume_id.as_str());
    assert_eq!(event["instance_id"], instance.as_str());
    assert_eq!(event["device"], lo.device.display().to_string());
    assert_eq!(
        event["attachment_device"], "/dev/sdf",
        "first free name after the root /dev/sda1"
    );

    let volume = moto::volume(&volume_id).expect("volume");
    assert_eq!(volume.state().map(|s| s.as_str()), Some("in-use"));
    assert_eq!(
        volume.attachments()[0].instance_id(),
        Some(instance.as_str())
    );

    // Still attached a while later: ebs-attach waits for its reader.
    std::thread::sleep(Duration::from_millis(700));
    assert!(
        child.try_wait().expect("wait").is_none(),
        "ebs-attach must stay alive"
    );
    assert_eq!(state(&volume_id).as_deref(), Some("in-use"));

    drop(stdout);
    let out = child.wait_with_output().expect("wait");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let cleanup = events(&out.stderr);
    let names: Vec<_> = cleanup
        .iter()
        .map(|e| e["event"].as_str().unwrap_or("").to_string())
        .collect();
    assert_eq!(names, ["volume_detached", "volume_deleted"], "{stderr}");
    assert_eq!(state(&volume_id), None, "the volume is deleted");
}

#[test]
fn pipeline_whose_last_stage_fails_still_deletes_the_volume() {
    let instance = moto::run_instance(AZ);
    let snapshot = moto::ec2_snapshot(1);
    let lo = Loop::new();
    let dev_dir = tempfile::tempdir().expect("tempdir");
    let stop = udev(
        snapshot.clone(),
        dev_dir.path().to_path_buf(),
        lo.device.clone(),
    );
    let script = format!(
        "set -o pipefail; '{sr}' volume --snapshot-id {snapshot} --az {AZ} \
         | '{ea}' --cleanup-on-exit --instance-id {instance} --az {AZ} --dev-dir '{dir}' --lock-file '{dir}/lock' \
         | (read -r line; echo \"$line\" > '{dir}/event'; exit 3)",
        sr = harness::bin("snapshot-restore").display(),
        ea = harness::bin("ebs-attach").display(),
        dir = dev_dir.path().display(),
    );
    let mut shell = moto::shell(&script);
    let out = shell.output().expect("bash");
    stop.store(true, Ordering::SeqCst);
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let event = std::fs::read_to_string(dev_dir.path().join("event"))
        .expect("the last stage saw the event");
    let event = &events(event.as_bytes())[0];
    assert_eq!(event["device"], lo.device.display().to_string());
    assert!(
        moto::volumes_from(&snapshot).is_empty(),
        "no volume left behind"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("\"event\":\"volume_deleted\""), "{stderr}");
}

#[test]
fn sigterm_to_the_pipeline_deletes_the_volume() {
    use std::os::unix::process::CommandExt;

    let instance = moto::run_instance(AZ);
    let snapshot = moto::ec2_snapshot(1);
    let lo = Loop::new();
    let dev_dir = tempfile::tempdir().expect("tempdir");
    let stop = udev(
        snapshot.clone(),
        dev_dir.path().to_path_buf(),
        lo.device.clone(),
    );
    let events_file = dev_dir.path().join("events");
    let script = format!(
        "'{sr}' volume --snapshot-id {snapshot} --az {AZ} \
         | '{ea}' --cleanup-on-exit --instance-id {instance} --az {AZ} --dev-dir '{dir}' --lock-file '{dir}/lock' \
         | (cat > '{events}'; sleep 30)",
        sr = harness::bin("snapshot-restore").display(),
        ea = harness::bin("ebs-attach").display(),
        dir = dev_dir.path().display(),
        events = events_file.display(),
    );
    let mut shell = moto::shell(&script);
    shell.process_group(0).stderr(Stdio::piped());
    let child = shell.spawn().expect("bash");
    let pgid = child.id() as i32;
    let start = Instant::now();
    while !std::fs::read_to_string(&events_file)
        .unwrap_or_default()
        .contains("volume_attached")
    {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the volume was never attached"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let volumes = moto::volumes_from(&snapshot);
    assert_eq!(volumes.len(), 1);
    assert_eq!(volumes[0].state().map(|s| s.as_str()), Some("in-use"));

    nix::sys::signal::killpg(
        nix::unistd::Pid::from_raw(pgid),
        nix::sys::signal::Signal::SIGTERM,
    )
    .expect("kill");
    let out = child.wait_with_output().expect("wait");
    stop.store(true, Ordering::SeqCst);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        moto::volumes_from(&snapshot).is_empty(),
        "no volume left behind: {stderr}"
    );
    assert!(
        stderr.contains("ebs-attach: terminated by SIGTERM"),
        "{stderr}"
    );
}

#[test]
fn volume_in_another_zone_is_refused() {
    let instance = moto::run_instance(AZ);
    let volume_id = new_volume("us-east-1b");
    let out = moto::tool("ebs-attach")
        .args([
            "--volume-id",
            &volume_id,
            "--instance-id",
            &instance,
            "--az",
            AZ,
        ])
        .arg("--lock-file")
        .arg(std::env::temp_dir().join("ebs-attach-test.lock"))
        .output()
        .expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert_eq!(
        stderr.trim(),
        format!(
            "ebs-attach: {volume_id} is in us-east-1b but this instance ({instance}) is in {AZ}: create the volume in {AZ} (snapshot-restore volume --az {AZ})"
        )
    );
    assert!(out.stdout.is_empty());
    assert_eq!(
        state(&volume_id).as_deref(),
        Some("available"),
        "not attached"
    );
    harness::block_on(moto::ec2().delete_volume().volume_id(&volume_id).send()).expect("delete");
}

#[test]
fn failure_after_the_volume_is_known_cleans_up() {
    // No device ever appears: with --cleanup-on-exit the volume is detached and deleted anyway.
    let instance = moto::run_instance(AZ);
    let volume_id = new_volume(AZ);
    let dev_dir = tempfile::tempdir().expect("tempdir");
    let out = moto::tool("ebs-attach")
        .args([
            "--volume-id",
            &volume_id,
            "--instance-id",
            &instance,
            "--az",
            AZ,
        ])
        .args([
            "--cleanup-on-exit",
            "--device-timeout",
            "1s",
            "--device-name",
            "/dev/sdz",
        ])
        .arg("--dev-dir")
        .arg(dev_dir.path())
        .arg("--lock-file")
        .arg(dev_dir.path().join("lock"))
        .output()
        .expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr
            .lines()
            .last()
            .unwrap_or("")
            .contains("no block device appeared"),
        "{stderr}"
    );
    assert!(out.stdout.is_empty());
    assert_eq!(state(&volume_id), None, "deleted after the failure");
}

#[test]
fn detach_and_delete_sub_commands() {
    let instance = moto::run_instance(AZ);
    let volume_id = new_volume(AZ);
    let lo = Loop::new();
    let dev_dir = tempfile::tempdir().expect("tempdir");
    link_volume(dev_dir.path(), &volume_id, &lo.device);
    let out = moto::tool("ebs-attach")
        .args([
            "--volume-id",
            &volume_id,
            "--instance-id",
            &instance,
            "--az",
            AZ,
        ])
        .arg("--dev-dir")
        .arg(dev_dir.path())
        .arg("--lock-file")
        .arg(dev_dir.path().join("lock"))
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        events(&out.stdout)[0]["device"],
        lo.device.display().to_string()
    );
    assert_eq!(
        state(&volume_id).as_deref(),
        Some("in-use"),
        "left attached without --cleanup-on-exit"
    );

    let out = moto::tool("ebs-attach")
        .args(["detach", "--volume-id", &volume_id])
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(events(&out.stdout)[0]["event"], "volume_detached");
    assert_eq!(state(&volume_id).as_deref(), Some("available"));

    // delete takes the id from an event on stdin too, and detaches first when needed.
    harness::block_on(
        moto::ec2()
            .attach_volume()
            .volume_id(&volume_id)
            .instance_id(&instance)
            .device("/dev/sdg")
            .send(),
    )
    .expect("AttachVolume");
    let out = moto::tool("ebs-attach")
        .arg("delete")
        .write_stdin(format!(
            "{{\"event\":\"volume_attached\",\"tool\":\"ebs-attach\",\"time\":\"t\",\"volume_id\":\"{volume_id}\"}}\n"
        ))
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(events(&out.stdout)[0]["event"], "volume_deleted");
    wait_gone(&volume_id);
}

#[test]
fn no_volume_id_is_an_input_error() {
    let out = moto::tool("ebs-attach")
        .args(["--instance-id", "i-1", "--az", AZ])
        .write_stdin("{\"event\":\"other\",\"tool\":\"t\",\"time\":\"t\"}\n")
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(6));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.starts_with("ebs-attach: no volume id: give --volume-id"),
        "{stderr}"
    );
}

#[test]
fn watch_stdin_cleans_up_at_end_of_stdin() {
    let instance = moto::run_instance(AZ);
    let volume_id = new_volume(AZ);
    let lo = Loop::new();
    let dev_dir = tempfile::tempdir().expect("tempdir");
    link_volume(dev_dir.path(), &volume_id, &lo.device);
    let mut child = moto::std_tool("ebs-attach")
        .args([
            "--volume-id",
            &volume_id,
            "--instance-id",
            &instance,
            "--az",
            AZ,
        ])
        .args([
            "--cleanup-on-exit",
            "--watch-stdin",
            "--keep-volume",
            "--dev-dir",
        ])
        .arg(dev_dir.path())
        .arg("--lock-file")
        .arg(dev_dir.path().join("lock"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let stdin = child.stdin.take().expect("stdin");
    let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
    let mut line = String::new();
    stdout.read_line(&mut line).expect("event");
    assert_eq!(events(line.as_bytes())[0]["event"], "volume_attached");
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        child.try_wait().expect("wait").is_none(),
        "waits while stdin is open"
    );
    drop(stdin);
    let out = child.wait_with_output().expect("wait");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let names: Vec<_> = events(&out.stderr)
        .iter()
        .map(|e| e["event"].as_str().unwrap_or("").to_string())
        .collect();
    assert_eq!(
        names,
        ["volume_detached"],
        "--keep-volume: detached, not deleted"
    );
    assert_eq!(state(&volume_id).as_deref(), Some("available"));
    drop(stdout);
    harness::block_on(moto::ec2().delete_volume().volume_id(&volume_id).send()).expect("delete");
}
