//! `ebs-attach`: attach an EBS volume to this instance, find its block device, and detach and
//! delete it afterwards.
//!
//! The middle stage of `snapshot-restore volume | ebs-attach --cleanup-on-exit | blockdump
//! --from-event | s3-put-multipart`: it reads the volume id from the first event on stdin, attaches
//! the volume, prints `volume_attached` with the block device, and, with `--cleanup-on-exit`, stays
//! alive holding its stdout until the next stage is done with it, then detaches and deletes the
//! volume, whatever the outcome, as the AWS Backup export framework guarantees.
//!
//! - [`attach`]: instance identity, the AZ check, picking a device name, attaching;
//! - [`device`]: finding the block device by the volume id in the NVMe serial;
//! - [`cleanup`]: detach, wait, delete; and what ends a `--cleanup-on-exit` run.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args as ClapArgs, CommandFactory, Parser, Subcommand};

use s3pipe::Failure;
use s3pipe::aws::AwsOptions;
use s3pipe::logging::Verbosity;
use s3pipe::man::ManExtras;
use s3pipe::signals::Cancellation;
use s3pipe::units::parse_duration;

pub mod attach;
pub mod cleanup;
pub mod device;

pub const TOOL: &str = "ebs-attach";

#[derive(Debug, Parser)]
#[command(
    name = TOOL,
    version,
    about = "Attach an EBS volume to this instance, find its block device, detach and delete it afterwards",
    long_about = "Attach an EBS volume to this instance, find its block device, detach and delete it afterwards.\n\n\
The volume id comes from --volume-id or from the first JSON event on stdin that has a volume_id field \
(snapshot-restore volume prints one). The instance id and availability zone come from flags, the \
environment, or the instance metadata service (IMDSv2). A volume in another availability zone is \
refused. When the volume is attached and its block device found, one volume_attached event with the \
device goes to stdout.",
    args_conflicts_with_subcommands = true
)]
pub struct Args {
    #[command(subcommand)]
    pub command: Option<Command>,

    #[command(flatten)]
    pub attach: AttachArgs,

    #[command(flatten)]
    pub aws: AwsOptions,

    #[command(flatten)]
    pub log: Verbosity,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Detach a volume from the instance it is attached to, and wait until it is available
    Detach(VolumeArgs),
    /// Delete a volume, detaching it first if it is attached
    Delete(VolumeArgs),
}

/// This instance: flags, then environment, then IMDSv2.
#[derive(Debug, Clone, Default, ClapArgs)]
#[command(next_help_heading = "Instance")]
pub struct InstanceArgs {
    /// This instance's id, instead of asking the instance metadata service
    #[arg(long, env = "S3PIPE_INSTANCE_ID", value_name = "ID")]
    pub instance_id: Option<String>,

    #[command(flatten)]
    pub metadata: s3pipe::aws::InstanceOptions,
}

#[derive(Debug, Clone, ClapArgs)]
pub struct AttachArgs {
    /// Volume to attach [default: the volume_id of the first event on stdin]
    #[arg(long, value_name = "VOLUME_ID")]
    pub volume_id: Option<String>,

    /// Device name to attach as (a label on Nitro instances) [default: the first free of /dev/sdf../dev/sdp]
    #[arg(long, value_name = "NAME")]
    pub device_name: Option<String>,

    /// Directory where the volume's block device appears by serial
    #[arg(long, default_value = "/dev/disk/by-id", value_name = "DIR")]
    pub dev_dir: PathBuf,

    /// Give up if the volume is not attached after this long
    #[arg(long, value_parser = parse_duration, default_value = "5m", value_name = "DURATION")]
    pub attach_timeout: Duration,

    /// Give up if the block device has not appeared this long after attaching
    #[arg(long, value_parser = parse_duration, default_value = "2m", value_name = "DURATION")]
    pub device_timeout: Duration,

    /// Stay alive until the reader of stdout goes away or a signal comes, then detach and delete the
    /// volume; also on any failure after the volume id is known
    #[arg(long)]
    pub cleanup_on_exit: bool,

    /// With --cleanup-on-exit, also clean up when stdin reaches end of file (for a controlling
    /// process that holds a pipe open; off by default because in a pipeline the previous stage
    /// closes stdin as soon as it has printed its event)
    #[arg(long, requires = "cleanup_on_exit")]
    pub watch_stdin: bool,

    /// With --cleanup-on-exit, detach but keep the volume
    #[arg(long, requires = "cleanup_on_exit")]
    pub keep_volume: bool,

    /// Lock file that serialises the choice of device name between concurrent runs
    #[arg(long, default_value = "/run/lock/ebs-attach.lock", value_name = "FILE")]
    pub lock_file: PathBuf,

    #[command(flatten)]
    pub instance: InstanceArgs,
}

#[derive(Debug, Clone, ClapArgs)]
pub struct VolumeArgs {
    /// Volume to act on [default: the volume_id of the first event on stdin]
    #[arg(long, value_name = "VOLUME_ID")]
    pub volume_id: Option<String>,

    /// Give up waiting for the detachment after this long
    #[arg(long, value_parser = parse_duration, default_value = "5m", value_name = "DURATION")]
    pub timeout: Duration,

    /// Force the detachment (data not yet written may be lost; for a stuck volume)
    #[arg(long)]
    pub force: bool,
}

/// The clap definition, for the man page.
pub fn command() -> clap::Command {
    Args::command()
}

/// What the man page adds to the clap definition.
pub fn man_extras() -> ManExtras {
    ManExtras {
        examples: vec![
            (
                "The EBS export pipeline: the volume is detached and deleted when blockdump is done, fails, or the pipeline is interrupted:",
                "set -o pipefail\nsnapshot-restore volume --snapshot-id snap-0abc --az us-east-1a \\\n  | ebs-attach --cleanup-on-exit \\\n  | blockdump --from-event --mode auto \\\n  | s3-put-multipart s3://exports/ebs/snap-0abc.tar.zst",
            ),
            (
                "A script that cleans up by itself:",
                "dev=$(ebs-attach --volume-id vol-0abc | jq -r .device)\nmount -o ro \"$dev\" /mnt && tar -C /mnt -cf - . | s3-put-multipart s3://b/k; umount /mnt\nebs-attach delete --volume-id vol-0abc",
            ),
        ],
        notes: vec![
            "The block device is found by the volume id in the NVMe serial: DIR/nvme-Amazon_Elastic_Block_Store_vol0123... (udev), then /sys/block/nvme*/device/serial, then the Xen name (/dev/xvdf for /dev/sdf).",
            "With --cleanup-on-exit, ebs-attach keeps its stdout open and watches it: when the reader (blockdump) exits, for success or failure, the pipe reports a hang-up and the volume is detached and deleted; SIGINT, SIGTERM and SIGPIPE do the same. Cleanup events (volume_detached, volume_deleted) go to stderr, since stdout's reader is gone.",
        ],
        exit_notes: vec![
            "A volume in another availability zone than this instance is refused with status 2. After a cleanup caused by a signal the status is 130 (SIGINT) or 143 (SIGTERM); after the reader went away it is 0 when the cleanup succeeded: the next stage's own status says whether its work succeeded.",
        ],
        environment: vec![
            (
                "S3PIPE_INSTANCE_ID, S3PIPE_AVAILABILITY_ZONE",
                "this instance's id and zone when --instance-id / --az are not given; otherwise IMDSv2 is asked.",
            ),
            (
                "AWS_EC2_METADATA_SERVICE_ENDPOINT",
                "instance metadata service when --imds-endpoint is not given.",
            ),
            (
                "AWS_ENDPOINT_URL_EC2, AWS_ENDPOINT_URL",
                "EC2 endpoint when --endpoint-url is not given (moto, a VPC endpoint).",
            ),
            (
                "AWS_REGION, AWS_PROFILE, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, AWS_CA_BUNDLE",
                "region, profile, credentials and CA bundle, as for every s3pipe tool. Secrets are never printed.",
            ),
        ],
        uses_s3: false,
        see_also: vec!["snapshot-restore(1)", "blockdump(1)"],
    }
}

/// The work of one run.
pub async fn run(args: Args, cancellation: Cancellation) -> Result<(), Failure> {
    let ec2 = aws_sdk_ec2::Client::new(&args.aws.sdk_config(false).await?);
    match args.command {
        None => attach::run(args.attach, &ec2, &cancellation).await,
        Some(Command::Detach(volume)) => {
            let id = attach::volume_id(volume.volume_id.clone()).await?;
            cleanup::detach(&ec2, &id, None, volume.force, volume.timeout, &cancellation).await
        }
        Some(Command::Delete(volume)) => {
            let id = attach::volume_id(volume.volume_id.clone()).await?;
            cleanup::delete(&ec2, &id, None, volume.force, volume.timeout, &cancellation).await
        }
    }
}

/// Entry point of the binary.
pub fn main() -> ! {
    let args = Args::parse();
    let verbosity = args.log.clone();
    s3pipe::cli::run(TOOL, &verbosity, |cancellation| run(args, cancellation))
}
