//! Attaching: which volume, which instance, which device name; then waiting for the block device.

use std::collections::HashSet;
use std::fs::File;
use std::io::BufRead;
use std::time::{Duration, Instant};

use aws_sdk_ec2::types::{VolumeAttachmentState, VolumeState};
use nix::fcntl::{Flock, FlockArg};

use s3pipe::aws::{Imds, aws_failure};
use s3pipe::event::{Event, EventReader, EventSink};
use s3pipe::signals::Cancellation;
use s3pipe::{ExitCode, Failure};

use crate::{AttachArgs, InstanceArgs, TOOL, cleanup, device};

/// The volume id: the flag, else the `volume_id` of the first event on stdin that has one.
///
/// Only as much of stdin is read as needed: the previous stage may stay alive after its event.
pub async fn volume_id(flag: Option<String>) -> Result<String, Failure> {
    if let Some(id) = flag {
        return check_volume_id(id);
    }
    let found = tokio::task::spawn_blocking(|| {
        let stdin = std::io::stdin();
        let reader = EventReader::new(stdin.lock());
        for event in reader {
            let event = event.map_err(|err| Failure::input(format!("stdin: {err}")))?;
            if let Some(id) = event.get_str("volume_id") {
                return Ok(Some(id.to_string()));
            }
        }
        Ok::<_, Failure>(None)
    })
    .await
    .map_err(|err| Failure::new(ExitCode::Failure, err.to_string()))??;
    match found {
        Some(id) => check_volume_id(id),
        None => Err(Failure::input(
            "no volume id: give --volume-id, or pipe in an event with a volume_id field (snapshot-restore volume prints one)",
        )),
    }
}

fn check_volume_id(id: String) -> Result<String, Failure> {
    if id.starts_with("vol-") && id.len() > 4 && id[4..].chars().all(|c| c.is_ascii_alphanumeric())
    {
        Ok(id)
    } else {
        Err(Failure::usage(format!(
            "'{id}' is not a volume id (vol-...)"
        )))
    }
}

/// This instance's id: flag or environment, then IMDSv2.
pub async fn instance_id(args: &InstanceArgs) -> Result<String, Failure> {
    if let Some(id) = args.instance_id.clone().filter(|i| !i.is_empty()) {
        return Ok(id);
    }
    Imds::new(args.metadata.imds_endpoint.as_deref())?
        .get("instance-id")
        .await
}

pub async fn run(
    args: AttachArgs,
    ec2: &aws_sdk_ec2::Client,
    cancellation: &Cancellation,
) -> Result<(), Failure> {
    let volume_id = volume_id(args.volume_id.clone()).await?;
    // From here on the volume is ours to clean up (with --cleanup-on-exit), whatever fails.
    let attached = tokio::select! {
        result = attach(&args, ec2, &volume_id) => result,
        _ = cancellation.token().cancelled() => Err(cancellation.failure("stopped before the volume was ready")),
    };
    let (instance_id, device) = match attached {
        Ok(found) => found,
        Err(failure) => {
            if args.cleanup_on_exit {
                cleanup::cleanup_after_failure(ec2, &volume_id, args.keep_volume).await;
            }
            return Err(failure);
        }
    };
    let event = Event::new(TOOL, "volume_attached")
        .with("volume_id", volume_id.as_str())
        .with("device", device.device.display().to_string())
        .with("instance_id", instance_id.as_str())
        .with("attachment_device", device.attachment_device.as_str())
        .with("availability_zone", device.availability_zone.as_str());
    let emitted = EventSink::stdout().emit(&event);
    if !args.cleanup_on_exit {
        return emitted.map_err(|err| {
            Failure::new(ExitCode::Failure, format!("cannot write the event: {err}"))
        });
    }
    if let Err(err) = emitted {
        tracing::warn!("cannot write the event ({err}); cleaning up");
    } else {
        let reason = cleanup::wait_for_end(args.watch_stdin, cancellation).await;
        tracing::info!(volume_id, "{reason}; cleaning up");
    }
    let cleaned = cleanup::clean(
        ec2,
        &volume_id,
        Some(&instance_id),
        args.keep_volume,
        args.attach_timeout,
    )
    .await;
    match (cancellation.signal(), cleaned) {
        (Some(_), Ok(())) => Err(cancellation.failure(&format!(
            "{volume_id} {}",
            if args.keep_volume {
                "detached"
            } else {
                "detached and deleted"
            }
        ))),
        (_, result) => result,
    }
}

/// What the attachment gave.
#[derive(Debug)]
pub struct Attached {
    pub device: std::path::PathBuf,
    pub attachment_device: String,
    pub availability_zone: String,
}

async fn attach(
    args: &AttachArgs,
    ec2: &aws_sdk_ec2::Client,
    volume_id: &str,
) -> Result<(String, Attached), Failure> {
    let instance_id = instance_id(&args.instance).await?;
    let az = args.instance.metadata.availability_zone().await?;

    let volume = describe(ec2, volume_id).await?;
    let volume_az = volume.availability_zone().unwrap_or_default().to_string();
    if volume_az != az {
        return Err(Failure::usage(format!(
            "{volume_id} is in {volume_az} but this instance ({instance_id}) is in {az}: create the volume in {az} (snapshot-restore volume --az {az})"
        )));
    }
    if volume.state() != Some(&VolumeState::Available) {
        return Err(Failure::new(
            ExitCode::Failure,
            format!(
                "{volume_id} is {} (not available): is it attached elsewhere?",
                volume
                    .state()
                    .map(|s| s.as_str())
                    .unwrap_or("in an unknown state")
            ),
        ));
    }

    let attachment_device = {
        // Two runs on one instance must not pick the same name: hold the lock from the choice
        // until AttachVolume has registered it.
        let _lock = lock(&args.lock_file)?;
        let name = match &args.device_name {
            Some(name) => name.clone(),
            None => free_device_name(ec2, &instance_id).await?,
        };
        ec2.attach_volume()
            .volume_id(volume_id)
            .instance_id(&instance_id)
            .device(&name)
            .send()
            .await
            .map_err(|err| {
                aws_failure(
                    format!("cannot attach {volume_id} to {instance_id} as {name}"),
                    &err,
                )
            })?;
        name
    };
    tracing::info!(volume_id, instance_id, attachment_device, "attaching");
    wait_attached(ec2, volume_id, args.attach_timeout).await?;
    let device = device::wait_for_device(
        &args.dev_dir,
        volume_id,
        &attachment_device,
        args.device_timeout,
    )
    .await?;
    tracing::info!(volume_id, device = %device.display(), "block device found");
    Ok((
        instance_id,
        Attached {
            device,
            attachment_device,
            availability_zone: az,
        },
    ))
}

pub async fn describe(
    ec2: &aws_sdk_ec2::Client,
    volume_id: &str,
) -> Result<aws_sdk_ec2::types::Volume, Failure> {
    let out = ec2
        .describe_volumes()
        .volume_ids(volume_id)
        .send()
        .await
        .map_err(|err| aws_failure(format!("cannot describe {volume_id}"), &err))?;
    out.volumes()
        .first()
        .cloned()
        .ok_or_else(|| Failure::new(ExitCode::NotFound, format!("no volume {volume_id}")))
}

/// The first of /dev/sdf../dev/sdp that the instance does not use (also as /dev/xvdX).
async fn free_device_name(ec2: &aws_sdk_ec2::Client, instance_id: &str) -> Result<String, Failure> {
    let out = ec2
        .describe_instances()
        .instance_ids(instance_id)
        .send()
        .await
        .map_err(|err| aws_failure(format!("cannot describe instance {instance_id}"), &err))?;
    let instance = out
        .reservations()
        .iter()
        .flat_map(|r| r.instances())
        .next()
        .ok_or_else(|| Failure::new(ExitCode::NotFound, format!("no instance {instance_id}")))?;
    let used: HashSet<String> = instance
        .block_device_mappings()
        .iter()
        .filter_map(|m| m.device_name())
        .map(|name| name.trim_start_matches("/dev/").replace("xvd", "sd"))
        .collect();
    ('f'..='p')
        .map(|c| format!("sd{c}"))
        .find(|name| !used.contains(name))
        .map(|name| format!("/dev/{name}"))
        .ok_or_else(|| {
            Failure::new(
                ExitCode::Failure,
                format!("{instance_id} has no free device name in /dev/sdf../dev/sdp; give --device-name"),
            )
        })
}

fn lock(path: &std::path::Path) -> Result<Flock<File>, Failure> {
    if let Some(dir) = path.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(|err| {
            Failure::usage(format!(
                "cannot open the lock file {}: {err} (--lock-file)",
                path.display()
            ))
        })?;
    Flock::lock(file, FlockArg::LockExclusive).map_err(|(_, errno)| {
        Failure::new(
            ExitCode::Failure,
            format!("cannot lock {}: {errno}", path.display()),
        )
    })
}

async fn wait_attached(
    ec2: &aws_sdk_ec2::Client,
    volume_id: &str,
    timeout: Duration,
) -> Result<(), Failure> {
    let start = Instant::now();
    let mut delay = Duration::from_millis(250);
    loop {
        let volume = describe(ec2, volume_id).await?;
        let state = volume
            .attachments()
            .first()
            .and_then(|a| a.state().cloned());
        if state == Some(VolumeAttachmentState::Attached) {
            return Ok(());
        }
        if start.elapsed() >= timeout {
            return Err(Failure::new(
                ExitCode::Network,
                format!(
                    "{volume_id} was not attached after {} (--attach-timeout)",
                    humantime::format_duration(timeout)
                ),
            ));
        }
        tracing::debug!(volume_id, ?state, "not attached yet");
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}

/// Used by the stdin watcher: whether anything is left on stdin (EOF reached).
pub fn stdin_at_eof() -> bool {
    let stdin = std::io::stdin();
    let mut lock = stdin.lock();
    loop {
        match lock.fill_buf() {
            Ok([]) => return true,
            Ok(buf) => {
                let n = buf.len();
                lock.consume(n);
            }
            Err(err) if err.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return true,
        }
    }
}
