//! `rds-export` and `dynamodb-export`: the services' own exports to S3, started and then watched.
//!
//! Both services do the copying themselves; what a pipeline needs from us is an exit status that
//! means "the export is in S3" (0 only on COMPLETE/COMPLETED) and events it can log. Exports take
//! minutes to hours, so polling backs off from `--poll-interval` to `--max-poll-interval`, and an
//! event is printed only when the status or the progress changes.

use std::future::Future;
use std::time::{Duration, Instant, SystemTime};

use clap::Args;
use serde_json::Value;

use s3pipe::event::{Event, EventSink};
use s3pipe::signals::Cancellation;
use s3pipe::units::parse_duration;
use s3pipe::{ExitCode, Failure};

use crate::TOOL;
use s3pipe::aws::{AwsOptions, aws_failure};

/// How to follow an export.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Following the export")]
pub struct PollOptions {
    /// Print the task's id in an event and return at once, without waiting for the export
    #[arg(long)]
    pub no_wait: bool,

    /// First wait between two status checks; it doubles up to --max-poll-interval
    #[arg(long, value_parser = parse_duration, default_value = "15s", value_name = "DURATION")]
    pub poll_interval: Duration,

    /// Longest wait between two status checks
    #[arg(long, value_parser = parse_duration, default_value = "5m", value_name = "DURATION")]
    pub max_poll_interval: Duration,

    /// Give up following (the export itself goes on) after this long (exit 8)
    #[arg(long, value_parser = parse_duration, default_value = "24h", value_name = "DURATION")]
    pub timeout: Duration,
}

/// One look at an export.
#[derive(Debug, Clone, PartialEq)]
struct Status {
    status: String,
    percent: Option<i64>,
    fields: Vec<(&'static str, Value)>,
    failure: Option<String>,
}

enum Outcome {
    Done,
    Failed(String),
}

fn classify(status: &str) -> Option<bool> {
    match status.to_ascii_uppercase().as_str() {
        "COMPLETE" | "COMPLETED" => Some(true),
        "FAILED" | "CANCELED" | "CANCELLED" => Some(false),
        _ => None,
    }
}

/// Polls `check` with back-off until a final status, printing `export_progress` on changes.
async fn follow<F, Fut>(
    id_field: &'static str,
    id: &str,
    poll: &PollOptions,
    events: &EventSink,
    cancellation: &Cancellation,
    mut check: F,
) -> Result<(), Failure>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Status, Failure>>,
{
    let start = Instant::now();
    let mut delay = poll.poll_interval;
    let mut last: Option<(String, Option<i64>)> = None;
    loop {
        let status = check().await?;
        let key = (status.status.clone(), status.percent);
        let changed = last.as_ref() != Some(&key);
        last = Some(key);
        let done = classify(&status.status);
        let name = match done {
            Some(true) => "export_complete",
            Some(false) => "export_failed",
            None => "export_progress",
        };
        if changed || done.is_some() {
            let mut event = Event::new(TOOL, name)
                .with(id_field, id)
                .with("status", status.status.to_ascii_uppercase());
            if let Some(percent) = status.percent {
                event = event.with("percent_progress", percent);
            }
            if let Some(failure) = &status.failure {
                event = event.with("failure", failure.as_str());
            }
            for (name, value) in &status.fields {
                event = event.with(name, value.clone());
            }
            emit(events, &event)?;
        }
        let outcome = match done {
            Some(true) => Some(Outcome::Done),
            Some(false) => Some(Outcome::Failed(status.failure.clone().unwrap_or_default())),
            None => None,
        };
        match outcome {
            Some(Outcome::Done) => return Ok(()),
            Some(Outcome::Failed(cause)) => {
                let cause = if cause.is_empty() {
                    String::new()
                } else {
                    format!(": {cause}")
                };
                return Err(Failure::new(
                    ExitCode::Failure,
                    format!(
                        "export {id} ended {}{cause}",
                        status.status.to_ascii_uppercase()
                    ),
                ));
            }
            None => {}
        }
        if start.elapsed() >= poll.timeout {
            return Err(Failure::new(
                ExitCode::Network,
                format!(
                    "export {id} still {} after {}; it goes on in the service (follow it again with --follow)",
                    status.status,
                    humantime::format_duration(poll.timeout)
                ),
            ));
        }
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = cancellation.token().cancelled() => {
                return Err(cancellation.failure(&format!("stopped following export {id}; it goes on in the service")));
            }
        }
        delay = (delay * 2).min(poll.max_poll_interval.max(poll.poll_interval));
    }
}

fn emit(events: &EventSink, event: &Event) -> Result<(), Failure> {
    events
        .emit(event)
        .map_err(|err| Failure::new(ExitCode::Failure, format!("cannot write the event: {err}")))
}

#[derive(Debug, Clone, Args)]
pub struct RdsExportArgs {
    /// ARN of the RDS DB or cluster snapshot to export (required unless --follow)
    #[arg(long, value_name = "ARN", required_unless_present = "follow")]
    pub snapshot_arn: Option<String>,

    /// Bucket the export is written to (required unless --follow)
    #[arg(long, value_name = "BUCKET", required_unless_present = "follow")]
    pub bucket: Option<String>,

    /// Key prefix in the bucket
    #[arg(long, value_name = "PREFIX")]
    pub prefix: Option<String>,

    /// IAM role RDS assumes to write to the bucket (required unless --follow)
    #[arg(long, value_name = "ARN", required_unless_present = "follow")]
    pub iam_role_arn: Option<String>,

    /// KMS key that encrypts the exported data (required by RDS unless --follow)
    #[arg(long, value_name = "KEY", required_unless_present = "follow")]
    pub kms_key_id: Option<String>,

    /// Export only these databases, schemas or tables (repeatable)
    #[arg(long, value_name = "NAME")]
    pub export_only: Vec<String>,

    /// Identifier of the export task [default: s3pipe-<snapshot name>-<unix time>]
    #[arg(long, value_name = "ID")]
    pub task_id: Option<String>,

    /// Do not start anything: follow the existing export task with this identifier
    #[arg(long, value_name = "ID", conflicts_with_all = ["snapshot_arn", "task_id"])]
    pub follow: Option<String>,

    #[command(flatten)]
    pub poll: PollOptions,
}

/// A valid export task identifier (letters, digits, hyphens; starts with a letter; up to 60).
fn default_task_id(snapshot_arn: &str) -> String {
    let name = snapshot_arn.rsplit(':').next().unwrap_or("snapshot");
    let clean: String = name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    let secs = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let mut id = format!("s3pipe-{}", clean.trim_matches('-'));
    id.truncate(60 - 11);
    let id = id.trim_end_matches('-').replace("--", "-");
    format!("{id}-{secs}")
}

pub async fn rds_export(
    args: RdsExportArgs,
    aws: &AwsOptions,
    cancellation: &Cancellation,
) -> Result<(), Failure> {
    let events = EventSink::stdout();
    let rds = aws_sdk_rds::Client::new(&aws.sdk_config(false).await?);
    let task_id = match &args.follow {
        Some(id) => id.clone(),
        None => {
            let snapshot_arn = args.snapshot_arn.clone().unwrap_or_default();
            let task_id = args
                .task_id
                .clone()
                .unwrap_or_else(|| default_task_id(&snapshot_arn));
            let bucket = args.bucket.clone().unwrap_or_default();
            let mut request = rds
                .start_export_task()
                .export_task_identifier(&task_id)
                .source_arn(&snapshot_arn)
                .s3_bucket_name(&bucket)
                .set_iam_role_arn(args.iam_role_arn.clone())
                .set_kms_key_id(args.kms_key_id.clone())
                .set_s3_prefix(args.prefix.clone());
            for name in &args.export_only {
                request = request.export_only(name);
            }
            let started = request.send().await.map_err(|err| {
                aws_failure(format!("cannot start exporting {snapshot_arn}"), &err)
            })?;
            emit(
                &events,
                &Event::new(TOOL, "export_started")
                    .with("task_id", task_id.as_str())
                    .with("source_arn", snapshot_arn.as_str())
                    .with("bucket", bucket.as_str())
                    .with("prefix", args.prefix.clone().unwrap_or_default())
                    .with(
                        "status",
                        started.status().unwrap_or("STARTING").to_ascii_uppercase(),
                    ),
            )?;
            task_id
        }
    };
    if args.poll.no_wait {
        return Ok(());
    }
    follow(
        "task_id",
        &task_id,
        &args.poll,
        &events,
        cancellation,
        || {
            let rds = rds.clone();
            let task_id = task_id.clone();
            async move {
                let out = rds
                    .describe_export_tasks()
                    .export_task_identifier(&task_id)
                    .send()
                    .await
                    .map_err(|err| {
                        aws_failure(format!("cannot describe export task {task_id}"), &err)
                    })?;
                let task = out.export_tasks().first().ok_or_else(|| {
                    Failure::new(ExitCode::NotFound, format!("no export task {task_id}"))
                })?;
                let mut fields = Vec::new();
                if let Some(bucket) = task.s3_bucket() {
                    fields.push(("bucket", Value::from(bucket)));
                }
                if let Some(prefix) = task.s3_prefix() {
                    fields.push(("prefix", Value::from(prefix)));
                }
                if let Some(gb) = task.total_extracted_data_in_gb() {
                    fields.push(("total_extracted_data_in_gb", Value::from(gb)));
                }
                Ok(Status {
                    status: task.status().unwrap_or("UNKNOWN").to_string(),
                    percent: task.percent_progress().map(i64::from),
                    failure: task.failure_cause().map(str::to_string),
                    fields,
                })
            }
        },
    )
    .await
}

#[derive(Debug, Clone, Args)]
pub struct DynamoDbExportArgs {
    /// ARN of the table to export; it needs point-in-time recovery on (required unless --follow)
    #[arg(long, value_name = "ARN", required_unless_present = "follow")]
    pub table_arn: Option<String>,

    /// Bucket the export is written to (required unless --follow)
    #[arg(long, value_name = "BUCKET", required_unless_present = "follow")]
    pub bucket: Option<String>,

    /// Key prefix in the bucket
    #[arg(long, value_name = "PREFIX")]
    pub prefix: Option<String>,

    /// Account id that owns the bucket, when it is another account's
    #[arg(long, value_name = "ACCOUNT")]
    pub bucket_owner: Option<String>,

    /// Point in time to export, RFC 3339 (2026-11-01T00:00:00Z) [default: now]
    #[arg(long, value_name = "TIME")]
    pub export_time: Option<String>,

    /// Format of the exported items
    #[arg(long, default_value = "dynamodb-json", value_parser = ["dynamodb-json", "ion"], value_name = "FORMAT")]
    pub export_format: String,

    /// Encrypt the export with this KMS key (SSE-KMS) instead of S3-managed keys
    #[arg(long, value_name = "KEY")]
    pub kms_key_id: Option<String>,

    /// Do not start anything: follow the existing export with this ARN
    #[arg(long, value_name = "EXPORT_ARN", conflicts_with = "table_arn")]
    pub follow: Option<String>,

    #[command(flatten)]
    pub poll: PollOptions,
}

pub async fn dynamodb_export(
    args: DynamoDbExportArgs,
    aws: &AwsOptions,
    cancellation: &Cancellation,
) -> Result<(), Failure> {
    use aws_sdk_dynamodb::types::{ExportFormat, S3SseAlgorithm};
    use aws_smithy_types::DateTime;
    use aws_smithy_types::date_time::Format;

    let export_time = match &args.export_time {
        Some(text) => Some(DateTime::from_str(text, Format::DateTime).map_err(|err| {
            Failure::usage(format!(
                "--export-time '{text}' is not an RFC 3339 time: {err}"
            ))
        })?),
        None => None,
    };
    let events = EventSink::stdout();
    let dynamodb = aws_sdk_dynamodb::Client::new(&aws.sdk_config(false).await?);
    let export_arn = match &args.follow {
        Some(arn) => arn.clone(),
        None => {
            let table_arn = args.table_arn.clone().unwrap_or_default();
            let bucket = args.bucket.clone().unwrap_or_default();
            let format = if args.export_format == "ion" {
                ExportFormat::Ion
            } else {
                ExportFormat::DynamodbJson
            };
            let mut request = dynamodb
                .export_table_to_point_in_time()
                .table_arn(&table_arn)
                .s3_bucket(&bucket)
                .set_s3_prefix(args.prefix.clone())
                .set_s3_bucket_owner(args.bucket_owner.clone())
                .set_export_time(export_time)
                .export_format(format);
            if let Some(key) = &args.kms_key_id {
                request = request
                    .s3_sse_algorithm(S3SseAlgorithm::Kms)
                    .s3_sse_kms_key_id(key);
            }
            let started = request
                .send()
                .await
                .map_err(|err| aws_failure(format!("cannot start exporting {table_arn}"), &err))?;
            let description = started.export_description();
            let arn = description
                .and_then(|d| d.export_arn())
                .ok_or_else(|| {
                    Failure::new(ExitCode::Failure, "the export started without an ARN")
                })?
                .to_string();
            emit(
                &events,
                &Event::new(TOOL, "export_started")
                    .with("export_arn", arn.as_str())
                    .with("table_arn", table_arn.as_str())
                    .with("bucket", bucket.as_str())
                    .with("prefix", args.prefix.clone().unwrap_or_default())
                    .with(
                        "status",
                        description
                            .and_then(|d| d.export_status())
                            .map(|s| s.as_str().to_string())
                            .unwrap_or_else(|| "IN_PROGRESS".to_string()),
                    ),
            )?;
            arn
        }
    };
    if args.poll.no_wait {
        return Ok(());
    }
    follow(
        "export_arn",
        &export_arn,
        &args.poll,
        &events,
        cancellation,
        || {
            let dynamodb = dynamodb.clone();
            let export_arn = export_arn.clone();
            async move {
                let out = dynamodb
                    .describe_export()
                    .export_arn(&export_arn)
                    .send()
                    .await
                    .map_err(|err| {
                        aws_failure(format!("cannot describe export {export_arn}"), &err)
                    })?;
                let description = out.export_description().ok_or_else(|| {
                    Failure::new(ExitCode::NotFound, format!("no export {export_arn}"))
                })?;
                let mut fields = Vec::new();
                if let Some(bucket) = description.s3_bucket() {
                    fields.push(("bucket", Value::from(bucket)));
                }
                if let Some(prefix) = description.s3_prefix() {
                    fields.push(("prefix", Value::from(prefix)));
                }
                if let Some(manifest) = description.export_manifest() {
                    fields.push(("export_manifest", Value::from(manifest)));
                }
                if let Some(items) = description.item_count() {
                    fields.push(("item_count", Value::from(items)));
                }
                if let Some(bytes) = description.billed_size_bytes() {
                    fields.push(("billed_size_bytes", Value::from(bytes)));
                }
                let failure = match (description.failure_code(), description.failure_message()) {
                    (None, None) => None,
                    (code, message) => Some(format!(
                        "{}{}{}",
                        code.unwrap_or(""),
                        if code.is_some() && message.is_some() {
                            ": "
                        } else {
                            ""
                        },
                        message.unwrap_or("")
                    )),
                };
                Ok(Status {
                    status: description
                        .export_status()
                        .map(|s| s.as_str().to_string())
                        .unwrap_or_else(|| "UNKNOWN".to_string()),
                    percent: None,
                    failure,
                    fields,
                })
            }
        },
    )
    .await
}
