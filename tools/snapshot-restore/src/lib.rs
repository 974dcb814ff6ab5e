//! `snapshot-restore`: EBS snapshots to volumes or streams (EBS direct APIs); RDS and DynamoDB
//! exports to S3.
//!
//! The first stage of the export pipelines of the AWS Backup Actions framework, as Unix tools:
//!
//! - [`volume`]: CreateVolume from a snapshot, wait until available, print `volume_created` for
//!   `ebs-attach`;
//! - [`blocks`]: the snapshot's image straight to stdout or a file through the EBS direct APIs,
//!   or (`--changed-since`) the changed blocks in the [`blocklist`] format, which `apply` writes
//!   over the parent's image;
//! - [`export`]: RDS snapshot and DynamoDB table exports, started and followed to the end.
//!
//! [`aws`] builds the control-plane clients and reads instance metadata; `ebs-attach` uses it too.

use clap::{CommandFactory, Parser, Subcommand};

use s3pipe::Failure;
use s3pipe::event::EventSink;
use s3pipe::logging::Verbosity;
use s3pipe::man::ManExtras;
use s3pipe::signals::Cancellation;

pub mod blocklist;
pub mod blocks;
pub mod export;
pub mod volume;

pub const TOOL: &str = "snapshot-restore";

#[derive(Debug, Parser)]
#[command(
    name = TOOL,
    version,
    about = "EBS snapshots to volumes or streams (EBS direct APIs); RDS and DynamoDB exports to S3",
    long_about = "EBS snapshots to volumes or streams (EBS direct APIs); RDS and DynamoDB exports to S3.\n\n\
Each sub-command prints one JSON event a line that the next stage of a pipeline can read: \
`volume` prints volume_created on stdout for ebs-attach; `blocks` writes the snapshot's raw image \
(or a block list) to stdout and its event to stderr; the exports print export_started, \
export_progress and export_complete or export_failed on stdout."
)]
pub struct Args {
    #[command(subcommand)]
    pub command: Command,

    #[command(flatten)]
    pub aws: s3pipe::aws::AwsOptions,

    #[command(flatten)]
    pub log: Verbosity,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create a volume from a snapshot, wait until it is available, print volume_created
    Volume(volume::VolumeArgs),
    /// Read a snapshot through the EBS direct APIs: raw image to stdout or --output
    Blocks(blocks::BlocksArgs),
    /// Write a block list (from `blocks --changed-since`) over the parent snapshot's image
    Apply(blocklist::ApplyArgs),
    /// Export an RDS snapshot to S3 (Parquet) and follow the export to its end
    RdsExport(export::RdsExportArgs),
    /// Export a DynamoDB table to S3 at a point in time and follow the export to its end
    DynamodbExport(export::DynamoDbExportArgs),
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
                "Restore a snapshot to a volume, attach it, archive its file system to S3; the volume is deleted whatever happens:",
                "set -o pipefail\nsnapshot-restore volume --snapshot-id snap-0abc --az us-east-1a \\\n  | ebs-attach --cleanup-on-exit \\\n  | blockdump --from-event --mode auto \\\n  | s3-put-multipart s3://exports/ebs/snap-0abc.tar.zst",
            ),
            (
                "No volume at all: the snapshot's raw image through the EBS direct APIs. Run as s3-put-multipart's producer, a failed block check (exit 5) midway aborts the upload instead of storing a truncated image:",
                "s3-put-multipart s3://exports/ebs/snap-0abc.img -- snapshot-restore blocks --snapshot-id snap-0abc",
            ),
            (
                "An incremental export, applied later over the parent's image:",
                "snapshot-restore blocks --snapshot-id snap-0new --changed-since snap-0old > new.blocks\nsnapshot-restore apply --target old.img < new.blocks",
            ),
            (
                "RDS and DynamoDB exports, followed until they finish:",
                "snapshot-restore rds-export --snapshot-arn ARN --bucket exports --iam-role-arn ARN --kms-key-id ID\nsnapshot-restore dynamodb-export --table-arn ARN --bucket exports --export-time 2026-11-01T00:00:00Z",
            ),
        ],
        notes: vec![
            "volume deletes the volume it created when it cannot hand it on: a timeout, an error state, a signal, or an unwritable stdout. Once volume_created is printed the volume belongs to the next stage (ebs-attach --cleanup-on-exit).",
            "blocks checks the SHA-256 of every block, reads a mismatching block again (--verify-attempts) and then fails with status 5. Blocks the snapshot does not hold are written as zeros, never read. Requests are retried with the SDK's adaptive mode, which slows down when the service throttles.",
            "The block list format (--changed-since) is documented in the README: a magic line, a JSON header, records of (u64 index, D + 512 KiB of data | Z for zeros), and an end record carrying the SHA-256 of everything before it. apply refuses a list that is truncated or damaged.",
        ],
        exit_notes: vec![
            "The exports exit 0 only when the export is COMPLETE(D); FAILED or CANCELED exit 1 after an export_failed event. A verification failure (5) of blocks on stdout is reported after earlier blocks were written: the consumer must not trust the stream.",
        ],
        environment: vec![
            (
                "AWS_ENDPOINT_URL_EC2, AWS_ENDPOINT_URL_EBS, AWS_ENDPOINT_URL_RDS, AWS_ENDPOINT_URL_DYNAMODB, AWS_ENDPOINT_URL",
                "endpoints of the services when --endpoint-url is not given (moto, LocalStack, VPC endpoints).",
            ),
            (
                "AWS_REGION, AWS_DEFAULT_REGION, AWS_PROFILE",
                "region and profile when --region / --profile are not given.",
            ),
            (
                "AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN",
                "credentials; otherwise the default chain (profile files, web identity, ECS, EC2 instance role). Secrets are never printed.",
            ),
            (
                "AWS_CA_BUNDLE",
                "PEM file of extra certificate authorities.",
            ),
            (
                "S3PIPE_AVAILABILITY_ZONE",
                "availability zone for volume when --az is not given; otherwise IMDSv2 is asked.",
            ),
            (
                "AWS_EC2_METADATA_SERVICE_ENDPOINT",
                "instance metadata service when --imds-endpoint is not given.",
            ),
        ],
        uses_s3: false,
        see_also: vec!["ebs-attach(1)", "blockdump(1)", "s3-put-multipart(1)"],
    }
}

/// The work of one run.
pub async fn run(args: Args, cancellation: Cancellation) -> Result<(), Failure> {
    match args.command {
        Command::Volume(volume) => {
            volume::run(volume, &args.aws, &EventSink::stdout(), &cancellation).await
        }
        Command::Blocks(blocks) => blocks::run(blocks, &args.aws, &cancellation).await,
        Command::Apply(apply) => blocklist::apply(apply).await,
        Command::RdsExport(export) => export::rds_export(export, &args.aws, &cancellation).await,
        Command::DynamodbExport(export) => {
            export::dynamodb_export(export, &args.aws, &cancellation).await
        }
    }
}

/// Entry point of the binary.
pub fn main() -> ! {
    let args = Args::parse();
    let verbosity = args.log.clone();
    s3pipe::cli::run(TOOL, &verbosity, |cancellation| run(args, cancellation))
}
