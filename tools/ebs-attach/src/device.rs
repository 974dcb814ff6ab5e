//! Finding the block device of an attached volume.
//!
//! On Nitro instances the device name given to AttachVolume is only a label: the volume appears
//! as the next free `/dev/nvmeXn1`, in no predictable order. What identifies it is the NVMe serial,
//! the volume id without its hyphen (`vol0123...`), which udev puts in
//! `/dev/disk/by-id/nvme-Amazon_Elastic_Block_Store_vol0123...` and the kernel shows in
//! `/sys/block/nvme*n1/device/serial`. Xen instances use the label (`/dev/sdf` as `/dev/xvdf`).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use s3pipe::{ExitCode, Failure};

/// The by-id name udev gives an EBS volume's NVMe device.
pub fn by_id_name(volume_id: &str) -> String {
    format!(
        "nvme-Amazon_Elastic_Block_Store_{}",
        volume_id.replace('-', "")
    )
}

/// Looks once: by-id under `dev_dir`, then sysfs, then the Xen names.
pub fn find_device(dev_dir: &Path, volume_id: &str, attachment_device: &str) -> Option<PathBuf> {
    let link = dev_dir.join(by_id_name(volume_id));
    if let Ok(path) = std::fs::canonicalize(&link) {
        return Some(path);
    }
    if let Some(path) = find_in_sysfs(Path::new("/sys/block"), volume_id) {
        return Some(path);
    }
    let label = attachment_device.trim_start_matches("/dev/");
    let xen = format!("/dev/{}", label.replacen("sd", "xvd", 1));
    [xen, format!("/dev/{label}")]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}

/// `/sys/block/nvme*/device/serial` holding the volume id (without hyphen).
fn find_in_sysfs(sys_block: &Path, volume_id: &str) -> Option<PathBuf> {
    let serial = volume_id.replace('-', "");
    let entries = std::fs::read_dir(sys_block).ok()?;
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        if !name.starts_with("nvme") {
            continue;
        }
        let found = std::fs::read_to_string(entry.path().join("device/serial"))
            .map(|s| s.trim() == serial)
            .unwrap_or(false);
        if found {
            return Some(PathBuf::from("/dev").join(name));
        }
    }
    None
}

/// Polls until the device appears or `timeout` passes.
pub async fn wait_for_device(
    dev_dir: &Path,
    volume_id: &str,
    attachment_device: &str,
    timeout: Duration,
) -> Result<PathBuf, Failure> {
    let start = Instant::now();
    loop {
        if let Some(path) = find_device(dev_dir, volume_id, attachment_device) {
            return Ok(path);
        }
        if start.elapsed() >= timeout {
            return Err(Failure::new(
                ExitCode::Failure,
                format!(
                    "{volume_id} is attached but no block device appeared after {}: looked for {} and the NVMe serials in /sys/block, then the Xen name of {attachment_device} (--dev-dir, --device-timeout)",
                    humantime::format_duration(timeout),
                    dev_dir.join(by_id_name(volume_id)).display()
                ),
            ));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn by_id_name_drops_the_hyphen() {
        assert_eq!(
            by_id_name("vol-0123abc"),
            "nvme-Amazon_Elastic_Block_Store_vol0123abc"
        );
    }

    #[test]
    fn sysfs_serial_is_matched() {
        let dir = tempfile::tempdir().expect("tempdir");
        for (name, serial) in [("nvme0n1", "vol111"), ("nvme1n1", "vol0abc\n")] {
            std::fs::create_dir_all(dir.path().join(name).join("device")).expect("mkdir");
            std::fs::write(dir.path().join(name).join("device/serial"), serial).expect("write");
        }
        assert_eq!(
            find_in_sysfs(dir.path(), "vol-0abc"),
            Some(PathBuf::from("/dev/nvme1n1"))
        );
        assert_eq!(find_in_sysfs(dir.path(), "vol-0def"), None);
    }
}
