//! `snapshot-restore`: EBS snapshots to volumes or streams (EBS direct APIs); RDS and DynamoDB exports to S3
//!
//! Skeleton: the work is tracked in its issue.

use clap::{CommandFactory, Parser};

use s3pipe::logging::Verbosity;
use s3pipe::man::ManExtras;

use s3pipe::signals::Cancellation;
use s3pipe::{ExitCode, Failure};

pub const TOOL: &str = "snapshot-restore";

#[derive(Debug, Parser)]
#[command(name = TOOL, version, about = "EBS snapshots to volumes or streams (EBS direct APIs); RDS and DynamoDB exports to S3")]
pub struct Args {
    #[command(flatten)]
    pub log: Verbosity,
}

/// The clap definition, for the man page.
pub fn command() -> clap::Command {
    Args::command()
}

/// What the man page adds to the clap definition.
pub fn man_extras() -> ManExtras {
    ManExtras {
        uses_s3: false,
        ..ManExtras::default()
    }
}

/// The work of one run.
pub async fn run(_args: Args, _cancellation: Cancellation) -> Result<(), Failure> {
    Err(Failure::new(ExitCode::Failure, "not implemented yet"))
}

/// Entry point of the binary.
pub fn main() -> ! {
    let args = Args::parse();
    let verbosity = args.log.clone();
    s3pipe::cli::run(TOOL, &verbosity, |cancellation| run(args, cancellation))
}
