//! `snapshot-restore volume`: a new EBS volume from a snapshot, ready to attach.
//!
//! The volume is billed from the moment it exists, so every way out of this command that does not
//! hand the volume on (timeout, error state, a signal) deletes it again: the next stage
//! (`ebs-attach --cleanup-on-exit`) only takes responsibility once it has read the event.

use std::time::{Duration, Instant};

use aws_sdk_ec2::types::{ResourceType, Tag, TagSpecification, VolumeState, VolumeType};
use clap::Args;

use s3pipe::event::{Event, EventSink};
use s3pipe::signals::Cancellation;
use s3pipe::units::parse_duration;
use s3pipe::{ExitCode, Failure};

use crate::TOOL;
use s3pipe::aws::{AwsOptions, InstanceOptions, aws_failure};

#[derive(Debug, Clone, Args)]
pub struct VolumeArgs {
    /// Snapshot to restore (snap-...)
    #[arg(long, value_name = "SNAPSHOT_ID")]
    pub snapshot_id: String,

    /// EBS volume type
    #[arg(long, default_value = "gp3", value_name = "TYPE")]
    pub volume_type: String,

    /// Size in GiB; at least the snapshot's [default: the snapshot's size]
    #[arg(long, value_name = "GIB", value_parser = clap::value_parser!(i32).range(1..))]
    pub size: Option<i32>,

    /// Provisioned IOPS (gp3, io1, io2)
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(i32).range(1..))]
    pub iops: Option<i32>,

    /// Provisioned throughput in MiB/s (gp3)
    #[arg(long, value_name = "MIBPS", value_parser = clap::value_parser!(i32).range(1..))]
    pub throughput: Option<i32>,

    /// KMS key for an encrypted volume (implies encryption) [default: the snapshot's]
    #[arg(long, value_name = "KEY")]
    pub kms_key_id: Option<String>,

    /// Volume initialization rate in MiB/s (100-300): pays to read the snapshot from S3 at a
    /// fixed rate instead of lazily on first touch, which makes a full read much faster
    #[arg(long, value_name = "MIBPS", value_parser = clap::value_parser!(i32).range(100..=300))]
    pub initialization_rate: Option<i32>,

    /// Tag for the new volume, KEY=VALUE (repeatable); `s3pipe:snapshot` is always added
    #[arg(long = "tag", value_name = "KEY=VALUE", value_parser = parse_tag)]
    pub tags: Vec<(String, String)>,

    /// Give up (and delete the volume) if it is not available after this long
    #[arg(long, value_parser = parse_duration, default_value = "10m", value_name = "DURATION")]
    pub timeout: Duration,

    #[command(flatten)]
    pub instance: InstanceOptions,
}

fn parse_tag(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_string(), value.to_string())),
        _ => Err(format!("'{text}' is not KEY=VALUE")),
    }
}

pub async fn run(
    args: VolumeArgs,
    aws: &AwsOptions,
    events: &EventSink,
    cancellation: &Cancellation,
) -> Result<(), Failure> {
    let volume_type = VolumeType::from(args.volume_type.as_str());
    if !VolumeType::values().contains(&args.volume_type.as_str()) {
        return Err(Failure::usage(format!(
            "unknown volume type '{}': use gp3, gp2, io1, io2, st1, sc1 or standard",
            args.volume_type
        )));
    }
    let az = args.instance.availability_zone().await?;
    let ec2 = aws_sdk_ec2::Client::new(&aws.sdk_config(false).await?);

    let mut tags = TagSpecification::builder().resource_type(ResourceType::Volume);
    tags = tags.tags(
        Tag::builder()
            .key("s3pipe:snapshot")
            .value(&args.snapshot_id)
            .build(),
    );
    for (key, value) in &args.tags {
        tags = tags.tags(Tag::builder().key(key).value(value).build());
    }
    let mut request = ec2
        .create_volume()
        .snapshot_id(&args.snapshot_id)
        .availability_zone(&az)
        .volume_type(volume_type)
        .tag_specifications(tags.build());
    if let Some(size) = args.size {
        request = request.size(size);
    }
    if let Some(iops) = args.iops {
        request = request.iops(iops);
    }
    if let Some(throughput) = args.throughput {
        request = request.throughput(throughput);
    }
    if let Some(key) = &args.kms_key_id {
        request = request.encrypted(true).kms_key_id(key);
    }
    if let Some(rate) = args.initialization_rate {
        request = request.volume_initialization_rate(rate);
    }
    let created = request.send().await.map_err(|err| {
        aws_failure(
            format!("cannot create a volume from {} in {az}", args.snapshot_id),
            &err,
        )
    })?;
    let volume_id = created
        .volume_id()
        .ok_or_else(|| Failure::new(ExitCode::Failure, "CreateVolume returned no volume id"))?
        .to_string();
    tracing::info!(volume_id, az, "volume created; waiting until available");

    let size = tokio::select! {
        waited = wait_available(&ec2, &volume_id, args.timeout) => waited,
        _ = cancellation.token().cancelled() => Err(cancellation.failure("the new volume was deleted")),
    };
    let size = match size {
        Ok(size) => size,
        Err(failure) => {
            delete_quietly(&ec2, &volume_id).await;
            return Err(failure);
        }
    };
    let event = Event::new(TOOL, "volume_created")
        .with("volume_id", volume_id.as_str())
        .with("availability_zone", az.as_str())
        .with("size_gib", size)
        .with("snapshot_id", args.snapshot_id.as_str())
        .with("volume_type", args.volume_type.as_str());
    if let Err(err) = events.emit(&event) {
        // Nobody will attach (or delete) a volume whose id was never read.
        delete_quietly(&ec2, &volume_id).await;
        return Err(Failure::new(
            ExitCode::Failure,
            format!("cannot write the event ({err}); deleted {volume_id}"),
        ));
    }
    Ok(())
}

/// Polls DescribeVolumes with back-off until the volume is `available`; its size in GiB.
async fn wait_available(
    ec2: &aws_sdk_ec2::Client,
    volume_id: &str,
    timeout: Duration,
) -> Result<i32, Failure> {
    let start = Instant::now();
    let mut delay = Duration::from_millis(250);
    loop {
        let out = ec2
            .describe_volumes()
            .volume_ids(volume_id)
            .send()
            .await
            .map_err(|err| aws_failure(format!("cannot describe {volume_id}"), &err))?;
        let volume = out.volumes().first();
        match volume.and_then(|v| v.state()) {
            Some(VolumeState::Available) => {
                return Ok(volume.and_then(|v| v.size()).unwrap_or(0));
            }
            Some(VolumeState::Error) => {
                return Err(Failure::new(
                    ExitCode::Failure,
                    format!("volume {volume_id} went into the error state; deleted it"),
                ));
            }
            state => tracing::debug!(volume_id, ?state, "not available yet"),
        }
        if start.elapsed() >= timeout {
            return Err(Failure::new(
                ExitCode::Network,
                format!(
                    "volume {volume_id} was not available after {}; deleted it (raise --timeout)",
                    humantime::format_duration(timeout)
                ),
            ));
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(10));
    }
}

/// Deletes a volume we created and cannot hand on; a failure is logged, since the error that led
/// here is the one to report.
async fn delete_quietly(ec2: &aws_sdk_ec2::Client, volume_id: &str) {
    match ec2.delete_volume().volume_id(volume_id).send().await {
        Ok(_) => tracing::warn!(volume_id, "deleted the new volume"),
        Err(err) => tracing::error!(
            volume_id,
            "could not delete the new volume, delete it by hand: {}",
            aws_failure("DeleteVolume", &err)
        ),
    }
}
