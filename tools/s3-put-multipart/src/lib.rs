//! `s3-put-multipart`: stdin (or a producer's stdout) into one S3 object, by parallel multipart
//! upload, in bounded memory, completed only when the whole input arrived.
//!
//! The story of a run: [`input`] reads the stream on its own thread into equal parts, hashing it
//! as it goes; [`upload`] stores a short stream with one PutObject, or a long one as a multipart
//! upload whose parts go up `--concurrency` at a time; at the end of the stream the upload is
//! completed (and the SHA-256 put into the object's metadata), and on any failure, signal or
//! failed producer it is aborted, so no half-written object ever becomes visible.

pub mod input;
pub mod upload;

use std::collections::HashMap;
use std::ffi::OsString;
use std::path::PathBuf;
use std::process::{Child, Command as Process, Stdio};
use std::sync::Arc;
use std::time::Instant;

use aws_sdk_s3::types::{ObjectCannedAcl, ServerSideEncryption, StorageClass};
use clap::{CommandFactory, Parser, ValueEnum};
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinSet;

use s3pipe::event::{Event, EventSink};
use s3pipe::logging::Verbosity;
use s3pipe::man::ManExtras;
use s3pipe::s3::S3Options;
use s3pipe::signals::Cancellation;
use s3pipe::units::{format_size, parse_size};
use s3pipe::{ExitCode, Failure, S3Url, SHA256_METADATA_KEY};

use input::{MAX_PARTS, Message, ReaderSettings, Source, StreamEnd};
use upload::{Multipart, ObjectSettings, Stored};

pub const TOOL: &str = "s3-put-multipart";

/// S3's smallest part (all but the last), and its largest.
const MIN_PART: u64 = 5 << 20;
const MAX_PART: u64 = 5 << 30;
/// S3's largest object.
const MAX_OBJECT: u64 = 5 << 40;

/// Which checksum S3 itself should verify on every part and on the whole object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Checksum {
    /// CRC32C of every part and of the whole object (a full-object checksum)
    Crc32c,
    /// SHA-256 of every part; S3 stores a checksum of the part checksums (composite)
    Sha256,
}

/// Server-side encryption.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Sse {
    #[value(name = "AES256")]
    Aes256,
    #[value(name = "aws:kms")]
    AwsKms,
    #[value(name = "aws:kms:dsse")]
    AwsKmsDsse,
}

/// Canned ACLs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Acl {
    Private,
    PublicRead,
    PublicReadWrite,
    AuthenticatedRead,
    AwsExecRead,
    BucketOwnerRead,
    BucketOwnerFullControl,
}

#[derive(Debug, Parser)]
#[command(
    name = TOOL,
    version,
    about = "Stream stdin into one S3 object by parallel multipart upload, in bounded memory",
    long_about = "Reads stdin (or the output of PRODUCER, run after --) and stores it as one S3 object. \
Parts of --part-size go up --concurrency at a time; memory stays within about (concurrency + 2) x part size \
whatever the length of the stream. Input shorter than one part goes up as a single PutObject. \
The SHA-256 of the whole stream is computed on the fly, stored in the object's metadata (x-amz-meta-s3pipe-sha256) \
for s3-get to verify, and reported in a JSON event on stdout (on stderr with --tee).\n\n\
The object becomes visible only when all of the input has been stored. On a read error, a failed part \
(after retries), SIGINT or SIGTERM, a --size mismatch, or a producer that exits non-zero, the multipart \
upload is aborted: no object and no stray parts remain.\n\n\
A plain pipe cannot tell a producer that died from one that finished: both end in EOF. Use \
`set -o pipefail` in scripts, and better, let s3-put-multipart run the producer itself \
(s3-put-multipart s3://b/k -- tar -cf - /srv): the upload then completes only if the producer exits 0."
)]
pub struct Args {
    /// Destination object, s3://BUCKET/KEY
    #[arg(value_name = "S3_URL", value_parser = S3Url::parse_object)]
    pub url: S3Url,

    /// Run this command and upload its stdout; complete only if it exits 0 (otherwise exit with its status)
    #[arg(last = true, value_name = "PRODUCER")]
    pub producer: Vec<OsString>,

    /// Size of each part; at least 5MiB, at most 5GiB. Caps a stream of unknown length at 10,000 parts
    #[arg(long, default_value = "16MiB", value_parser = parse_size, value_name = "SIZE")]
    pub part_size: u64,

    /// Parts uploaded at the same time
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..=64), value_name = "N")]
    pub concurrency: u16,

    /// Estimated length of the stream: grows --part-size so the stream fits in 10,000 parts
    #[arg(long, value_parser = parse_size, value_name = "SIZE", conflicts_with = "size")]
    pub expected_size: Option<u64>,

    /// Exact length of the stream: as --expected-size, and abort if the input is shorter or longer
    #[arg(long, value_parser = parse_size, value_name = "SIZE")]
    pub size: Option<u64>,

    /// Never overwrite: fail with exit status 7 if the object already exists
    #[arg(long)]
    pub if_none_match: bool,

    /// Also copy the input to stdout, to chain another stage (the event then goes to stderr)
    #[arg(long)]
    pub tee: bool,

    /// Have S3 verify a checksum of every part and store it with the object
    #[arg(long, value_enum, value_name = "ALGORITHM")]
    pub checksum: Option<Checksum>,

    /// Content-Type of the object
    #[arg(long, default_value = "application/octet-stream", value_name = "TYPE")]
    pub content_type: String,

    /// Storage class, e.g. STANDARD, STANDARD_IA, INTELLIGENT_TIERING, GLACIER_IR, DEEP_ARCHIVE
    #[arg(long, value_name = "CLASS", value_parser = s3pipe::s3::parse_storage_class)]
    pub storage_class: Option<StorageClass>,

    /// Server-side encryption
    #[arg(long, value_enum, value_name = "ALGORITHM")]
    pub sse: Option<Sse>,

    /// KMS key for --sse aws:kms (id, ARN or alias)
    #[arg(long, value_name = "KEY", requires = "sse")]
    pub sse_kms_key_id: Option<String>,

    /// User metadata KEY=VALUE (repeatable), stored as x-amz-meta-KEY
    #[arg(long = "metadata", value_name = "KEY=VALUE", value_parser = parse_key_value)]
    pub metadata: Vec<(String, String)>,

    /// Object tag KEY=VALUE (repeatable, at most 10)
    #[arg(long = "tag", value_name = "KEY=VALUE", value_parser = parse_key_value)]
    pub tags: Vec<(String, String)>,

    /// Canned ACL
    #[arg(long, value_enum, value_name = "ACL")]
    pub acl: Option<Acl>,

    /// Write the final JSON event to FILE (appended) instead of stdout
    #[arg(long, value_name = "FILE")]
    pub events: Option<PathBuf>,

    #[command(flatten)]
    pub s3: S3Options,

    #[command(flatten)]
    pub log: Verbosity,
}

fn parse_key_value(text: &str) -> Result<(String, String), String> {
    let (key, value) = text
        .split_once('=')
        .ok_or_else(|| format!("'{text}' is not KEY=VALUE"))?;
    if key.is_empty() {
        return Err(format!("'{text}' has an empty key"));
    }
    Ok((key.to_string(), value.to_string()))
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
                "Back up a directory; in a script, pipefail makes a failed tar fail the pipeline:",
                "set -o pipefail\ntar -C /srv/data -cf - . | s3-put-multipart s3://backups/data.tar",
            ),
            (
                "Better: let s3-put-multipart run the producer, so a tar that fails aborts the upload and nothing is stored:",
                "s3-put-multipart s3://backups/data.tar -- tar -C /srv/data -cf - .",
            ),
            (
                "A database dump of about 2 TB, never overwriting an existing backup:",
                "s3-put-multipart --expected-size 2TB --if-none-match s3://db/dump-$(date +%F).sql.zst -- sh -c 'pg_dumpall | zstd'",
            ),
            (
                "Against a local MinIO or Garage:",
                "export AWS_ENDPOINT_URL=http://127.0.0.1:9000 AWS_ACCESS_KEY_ID=... AWS_SECRET_ACCESS_KEY=...\ns3-put-multipart s3://bucket/key < file",
            ),
        ],
        notes: vec![
            "Parts are all --part-size bytes but the last (R2 and some others refuse anything else), so a stream of unknown length is capped at 10,000 parts: 156 GiB with the default 16MiB. Past that the upload is aborted with exit status 6 and a message naming --expected-size; give it (or a larger --part-size) for longer streams.",
            "Memory: about (concurrency + 2) x part size, 160 MiB with the defaults. Failed requests are retried with jittered back-off (--max-attempts), then the part is sent again from memory, before the upload is given up.",
            "If the process is killed with SIGKILL it cannot abort its upload; the parts then stay until removed. A bucket lifecycle rule AbortIncompleteMultipartUpload cleans such leftovers up.",
        ],
        exit_notes: vec![
            "With a PRODUCER after --, a producer that fails makes s3-put-multipart exit with the producer's own status (128 + N if it was killed by signal N), after aborting the upload.",
            "If the reader of stdout goes away during --tee, the upload is aborted with status 6.",
        ],
        environment: vec![],
        uses_s3: true,
        see_also: vec!["s3-get(1)", "set(1)", "tar(1)"],
    }
}

/// Entry point of the binary.
pub fn main() -> ! {
    let args = Args::parse();
    let verbosity = args.log.clone();
    s3pipe::cli::run(TOOL, &verbosity, |cancellation| run(args, cancellation))
}

/// The part size to use: the flag, grown when a known or estimated length needs bigger parts.
pub fn choose_part_size(part_size: u64, length: Option<u64>) -> Result<u64, Failure> {
    if part_size < MIN_PART {
        return Err(Failure::usage(format!(
            "--part-size {} is under S3's minimum of 5MiB",
            format_size(part_size)
        )));
    }
    if part_size > MAX_PART {
        return Err(Failure::usage(format!(
            "--part-size {} is over S3's maximum of 5GiB",
            format_size(part_size)
        )));
    }
    let Some(length) = length else {
        return Ok(part_size);
    };
    if length > MAX_OBJECT {
        return Err(Failure::usage(format!(
            "{} is over S3's largest object of 5TiB",
            format_size(length)
        )));
    }
    // Round up to whole MiB so the parts are a size people recognise in listings.
    let needed = length.div_ceil(MAX_PARTS).div_ceil(1 << 20) << 20;
    Ok(part_size.max(needed).min(MAX_PART))
}

fn object_settings(args: &Args) -> Result<ObjectSettings, Failure> {
    let mut metadata = HashMap::new();
    for (key, value) in &args.metadata {
        if key.eq_ignore_ascii_case(SHA256_METADATA_KEY) {
            return Err(Failure::usage(format!(
                "--metadata {key} is reserved: s3-put-multipart sets it itself"
            )));
        }
        metadata.insert(key.to_ascii_lowercase(), value.clone());
    }
    if args.tags.len() > 10 {
        return Err(Failure::usage("S3 allows at most 10 tags on an object"));
    }
    let tagging = (!args.tags.is_empty()).then(|| {
        form_urlencoded::Serializer::new(String::new())
            .extend_pairs(args.tags.iter())
            .finish()
    });
    if args.sse_kms_key_id.is_some() && args.sse == Some(Sse::Aes256) {
        return Err(Failure::usage(
            "--sse-kms-key-id goes with --sse aws:kms, not AES256",
        ));
    }
    Ok(ObjectSettings {
        url: args.url.clone(),
        content_type: args.content_type.clone(),
        storage_class: args.storage_class.clone(),
        sse: args.sse.map(|sse| match sse {
            Sse::Aes256 => ServerSideEncryption::Aes256,
            Sse::AwsKms => ServerSideEncryption::AwsKms,
            Sse::AwsKmsDsse => ServerSideEncryption::AwsKmsDsse,
        }),
        sse_kms_key_id: args.sse_kms_key_id.clone(),
        metadata,
        tagging,
        acl: args.acl.map(|acl| {
            ObjectCannedAcl::from(
                acl.to_possible_value()
                    .map(|v| v.get_name().to_string())
                    .unwrap_or_default()
                    .as_str(),
            )
        }),
        if_none_match: args.if_none_match,
        checksum: args.checksum,
    })
}

/// A producer started with `-- COMMAND`.
#[derive(Debug)]
struct Producer {
    child: Child,
    name: String,
}

impl Producer {
    fn start(command: &[OsString]) -> Result<(Self, Source), Failure> {
        let name = command[0].to_string_lossy().into_owned();
        let mut child = Process::new(&command[0])
            .args(&command[1..])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|err| Failure::usage(format!("cannot run producer '{name}': {err}")))?;
        let stdout = child.stdout.take().expect("stdout was piped");
        Ok((Producer { child, name }, Source::Producer(stdout)))
    }

    /// Waits for the producer off the async threads; its status decides whether to complete.
    async fn finish(self) -> Result<(), Failure> {
        let Producer { child, name } = self;
        tokio::task::spawn_blocking(move || input::producer_outcome(child, &name))
            .await
            .map_err(|err| Failure::new(ExitCode::Failure, err.to_string()))?
    }

    /// Stops a producer whose output is no longer wanted.
    fn stop(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn run(args: Args, cancellation: Cancellation) -> Result<(), Failure> {
    let started = Instant::now();
    let part_size = choose_part_size(args.part_size, args.size.or(args.expected_size))?;
    if part_size != args.part_size {
        tracing::info!(
            "part size {} so that the stream fits in {MAX_PARTS} parts",
            format_size(part_size)
        );
    }
    let settings = Arc::new(object_settings(&args)?);
    let sink = EventSink::from_option(
        args.events.as_deref(),
        if args.tee {
            EventSink::stderr
        } else {
            EventSink::stdout
        },
    )
    .map_err(|err| Failure::usage(format!("cannot open --events file: {err}")))?;
    let client = args.s3.client().await?;
    if args.if_none_match {
        upload::refuse_if_exists(&client, &args.url).await?;
    }

    let (mut producer, source) = if args.producer.is_empty() {
        (None, Source::Stdin)
    } else {
        let (producer, source) = Producer::start(&args.producer)?;
        (Some(producer), source)
    };
    let concurrency = usize::from(args.concurrency);
    let progress = s3pipe::progress::bytes(
        args.size.or(args.expected_size),
        args.log.quiet > 0,
        "upload",
    );
    let reader = ReaderSettings {
        part_size,
        exact_size: args.size,
        checksum: args.checksum,
        tee: args.tee,
    };
    let buffers = Arc::new(Semaphore::new(concurrency + 2));
    let pool = input::BufferPool::default();
    let mut messages = input::start(source, reader, buffers, pool.clone(), progress.clone());

    let result = store(
        &client,
        &settings,
        &mut messages,
        &mut producer,
        &cancellation,
        part_size,
        concurrency,
        pool,
    )
    .await;
    progress.finish_and_clear();
    if let Some(producer) = producer.take() {
        producer.stop();
    }
    let (stored, end) = result?;
    let seconds = started.elapsed().as_secs_f64();
    let mut event = Event::new(TOOL, "upload_complete")
        .with("bucket", args.url.bucket.as_str())
        .with("key", args.url.key.as_str())
        .with("size", end.bytes)
        .with("parts", end.parts.max(1))
        .with("part_size", part_size)
        .with("etag", stored.etag.as_str())
        .with("sha256", hex::encode(end.sha256))
        .with("sha256_in_metadata", stored.sha256_in_metadata)
        .with("seconds", (seconds * 1000.0).round() / 1000.0)
        .with(
            "bytes_per_second",
            (end.bytes as f64 / seconds.max(1e-9)).round() as u64,
        );
    if let Some(version) = &stored.version_id {
        event = event.with("version_id", version.as_str());
    }
    if let Some(crc) = end.crc32c {
        event = event.with("crc32c", format!("{crc:08x}"));
    }
    if let Err(err) = sink.emit(&event)
        && !s3pipe::output::is_broken_pipe(&err)
    {
        return Err(Failure::new(
            ExitCode::Failure,
            format!("the object is stored, but the event could not be written: {err}"),
        ));
    }
    Ok(())
}

/// Receives the next message from the reader, unless a signal comes first.
async fn next_message(
    messages: &mut mpsc::Receiver<Message>,
    cancellation: &Cancellation,
) -> Result<Message, Failure> {
    tokio::select! {
        biased;
        _ = cancellation.token().cancelled() => Err(cancellation.failure("nothing was stored")),
        message = messages.recv() => match message {
            Some(Message::Failed(failure)) => Err(failure),
            Some(message) => Ok(message),
            None => Err(Failure::new(ExitCode::Failure, "the input reader stopped unexpectedly")),
        },
    }
}

/// Checks the producer (if any) once the stream has ended: only a producer that exited 0 lets
/// the object be stored.
async fn producer_succeeded(
    producer: &mut Option<Producer>,
    cancellation: &Cancellation,
) -> Result<(), Failure> {
    let Some(producer) = producer.take() else {
        return Ok(());
    };
    tokio::select! {
        biased;
        _ = cancellation.token().cancelled() => Err(cancellation.failure("nothing was stored")),
        outcome = producer.finish() => outcome,
    }
}

#[allow(clippy::too_many_arguments)]
async fn store(
    client: &aws_sdk_s3::Client,
    settings: &Arc<ObjectSettings>,
    messages: &mut mpsc::Receiver<Message>,
    producer: &mut Option<Producer>,
    cancellation: &Cancellation,
    part_size: u64,
    concurrency: usize,
    pool: input::BufferPool,
) -> Result<(Stored, StreamEnd), Failure> {
    // One part of look-ahead decides between a single PutObject and a multipart upload.
    let first = match next_message(messages, cancellation).await? {
        Message::End(end) => {
            producer_succeeded(producer, cancellation).await?;
            let stored = upload::put_single(client, settings, bytes::Bytes::new(), &end).await?;
            return Ok((stored, end));
        }
        Message::Part(part) => part,
        Message::Failed(failure) => return Err(failure),
    };
    let second = match next_message(messages, cancellation).await? {
        Message::End(end) => {
            producer_succeeded(producer, cancellation).await?;
            let stored = upload::put_single(client, settings, first.data.clone(), &end).await?;
            return Ok((stored, end));
        }
        Message::Part(part) => part,
        Message::Failed(failure) => return Err(failure),
    };

    let multipart = Arc::new(Multipart::create(client, settings.clone(), pool).await?);
    let outcome = async {
        let requests = Arc::new(Semaphore::new(concurrency));
        let mut uploads = JoinSet::new();
        for part in [first, second] {
            let (multipart, requests) = (multipart.clone(), requests.clone());
            uploads.spawn(async move { multipart.upload_part(part, requests).await });
        }
        let mut completed = Vec::new();
        let end = loop {
            tokio::select! {
                biased;
                _ = cancellation.token().cancelled() => return Err(cancellation.failure("upload aborted, nothing was stored")),
                Some(joined) = uploads.join_next(), if !uploads.is_empty() => {
                    completed.push(joined.map_err(|err| Failure::new(ExitCode::Failure, err.to_string()))??);
                }
                message = messages.recv() => match message {
                    Some(Message::Part(part)) => {
                        let (multipart, requests) = (multipart.clone(), requests.clone());
                        uploads.spawn(async move { multipart.upload_part(part, requests).await });
                    }
                    Some(Message::End(end)) => break end,
                    Some(Message::Failed(failure)) => return Err(failure),
                    None => return Err(Failure::new(ExitCode::Failure, "the input reader stopped unexpectedly")),
                },
            }
        };
        while !uploads.is_empty() {
            tokio::select! {
                biased;
                _ = cancellation.token().cancelled() => return Err(cancellation.failure("upload aborted, nothing was stored")),
                Some(joined) = uploads.join_next() => {
                    completed.push(joined.map_err(|err| Failure::new(ExitCode::Failure, err.to_string()))??);
                }
            }
        }
        producer_succeeded(producer, cancellation).await?;
        if settings.if_none_match {
            upload::refuse_if_exists(client, &settings.url).await?;
        }
        let stored = multipart.complete(completed, &end).await?;
        Ok((stored, end))
    }
    .await;
    match outcome {
        Ok((stored, end)) => {
            let stored = upload::add_sha256_metadata(
                client,
                settings,
                &stored,
                &end,
                part_size,
                concurrency,
            )
            .await;
            Ok((stored, end))
        }
        Err(failure) => {
            multipart.abort().await;
            Err(failure)
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn part_size_limits() {
        assert_eq!(choose_part_size(16 << 20, None).expect("valid"), 16 << 20);
        assert_eq!(
            choose_part_size(4 << 20, None).unwrap_err().exit,
            ExitCode::Usage
        );
        assert_eq!(
            choose_part_size(6 << 30, None).unwrap_err().exit,
            ExitCode::Usage
        );
    }

    #[test]
    fn expected_size_grows_parts_to_fit_ten_thousand() {
        // 1 TiB needs parts of at least 105 MiB (rounded up to whole MiB).
        let part = choose_part_size(16 << 20, Some(1 << 40)).expect("valid");
        assert!(part.div_ceil(1) * MAX_PARTS >= 1 << 40);
        assert_eq!(part % (1 << 20), 0);
        assert!(part < 120 << 20);
        // Small streams keep the flag's size.
        assert_eq!(
            choose_part_size(16 << 20, Some(1 << 30)).expect("valid"),
            16 << 20
        );
        assert_eq!(
            choose_part_size(16 << 20, Some(6 << 40)).unwrap_err().exit,
            ExitCode::Usage
        );
    }

    #[test]
    fn key_values() {
        assert_eq!(parse_key_value("a=b=c"), Ok(("a".into(), "b=c".into())));
        assert!(parse_key_value("novalue").is_err());
        assert!(parse_key_value("=v").is_err());
    }
}
