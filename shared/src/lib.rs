//! What every s3pipe tool shares, and nothing tool-specific.
//!
//! Each tool is its own crate under `tools/`; this crate is the one obvious place for the pieces they
//! have in common, so that a flag, an exit code or an event means the same thing in every tool:
//!
//! - [`s3`]: the S3 client, built from flags and the standard AWS environment (endpoint, region,
//!   profile, CA bundle, timeouts, retries) so AWS, MinIO and Garage all work the same.
//! - [`aws`]: the same for the control-plane services (EC2, EBS direct, RDS, DynamoDB), and the
//!   instance metadata (IMDSv2) look-ups.
//! - [`url`]: `s3://bucket/key` parsing with clear errors.
//! - [`units`]: human sizes (`8MiB`, `1.5G`) and durations (`90s`, `5m`).
//! - [`event`]: the JSON event format that control tools pass along a pipe, one object a line.
//! - [`logging`], [`progress`]: `-v`/`-q`, `RUST_LOG`, and progress bars only on a terminal.
//! - [`signals`]: SIGINT/SIGTERM turned into one cancellation that every tool honours.
//! - [`exit`]: the documented exit codes and the error type that carries one.
//! - [`output`]: stdout that treats a reader going away as an ordinary end, not a panic.
//! - [`cli`]: the `main` every tool shares; [`man`]: man pages rendered from clap definitions.

pub mod aws;
pub mod cli;
pub mod event;
pub mod exit;
pub mod logging;
pub mod man;
pub mod output;
pub mod progress;
pub mod s3;
pub mod signals;
pub mod units;
pub mod url;

pub use exit::{ExitCode, Failure};
pub use url::S3Url;

/// User metadata key under which s3-put-multipart stores the SHA-256 of the whole stream
/// (`x-amz-meta-s3pipe-sha256`) and s3-get verifies it.
pub const SHA256_METADATA_KEY: &str = "s3pipe-sha256";
