//! `syslog-rotate`: Log lines on stdin to rotated, compressed S3 objects with syslog-ng s3() semantics, losing nothing
//!
//! Skeleton: the work is tracked in its issue.

use clap::{CommandFactory, Parser};

use s3pipe::logging::Verbosity;
use s3pipe::man::ManExtras;
use s3pipe::s3::S3Options;
use s3pipe::signals::Cancellation;
use s3pipe::{ExitCode, Failure};

pub const TOOL: &str = "syslog-rotate";

#[derive(Debug, Parser)]
#[command(name = TOOL, version, about = "Log lines on stdin to rotated, compressed S3 objects with syslog-ng s3() semantics, losing nothing")]
pub struct Args {
    #[command(flatten)]
    pub s3: S3Options,

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
        uses_s3: true,
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
