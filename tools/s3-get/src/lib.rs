//! `s3-get`: one S3 object, or a byte range of it, to stdout by parallel ranged GETs written in
//! order, in bounded memory, verified against the SHA-256 that s3-put-multipart stored (or the
//! ETag).
//!
//! The story of a run: HeadObject fixes which object is read (its ETag, or version id, pins every
//! later GET to that same object, so an overwrite during the download fails it instead of mixing
//! two objects); [`download`](run) fetches `--part-size` ranges `--concurrency` at a time; a writer
//! thread writes them to stdout in order while [`verify`] hashes them; the final event says what
//! was checked.

pub mod verify;

use std::collections::VecDeque;
use std::io::Write;
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_sdk_s3::Client;
use bytes::{Bytes, BytesMut};
use clap::{CommandFactory, Parser};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;

use s3pipe::event::{Event, EventSink};
use s3pipe::logging::Verbosity;
use s3pipe::man::ManExtras;
use s3pipe::s3::S3Options;
use s3pipe::signals::Cancellation;
use s3pipe::units::parse_size;
use s3pipe::{ExitCode, Failure, S3Url, SHA256_METADATA_KEY};

use verify::{Expected, Hasher};

pub const TOOL: &str = "s3-get";

/// Rounds of our own around the SDK's retries for one range: the SDK retries a request that
/// fails, not a body that breaks off halfway, and the range is simply asked for again.
const RANGE_ROUNDS: u32 = 4;

#[derive(Debug, Parser)]
#[command(
    name = TOOL,
    version,
    about = "Stream one S3 object (or a byte range) to stdout by parallel ranged GETs, in order, verified",
    long_about = "Writes an S3 object to stdout. Ranges of --part-size are fetched --concurrency at a time and \
written strictly in order; memory stays within about (concurrency + 2) x part size. Every GET is pinned to the \
object found at the start (by version id or ETag), so an object overwritten during the download fails the run \
rather than mixing two objects.\n\n\
The whole object is verified against the SHA-256 that s3-put-multipart stored in its metadata, or else against \
its ETag when that is an MD5 (single PUT) or a multipart MD5 (-N). The bytes have already been written when the \
check completes, so a mismatch shows in the exit status (5): use `set -o pipefail`. A JSON event on stderr (or \
--events FILE) reports size, SHA-256 and what was verified."
)]
pub struct Args {
    /// Object to read, s3://BUCKET/KEY
    #[arg(value_name = "S3_URL", value_parser = S3Url::parse_object)]
    pub url: S3Url,

    /// Only these bytes: START-END (inclusive), START- (to the end) or -N (the last N); sizes like 8MiB allowed
    #[arg(long, value_name = "RANGE", allow_hyphen_values = true)]
    pub range: Option<String>,

    /// Size of each ranged GET
    #[arg(long, default_value = "16MiB", value_parser = parse_size, value_name = "SIZE")]
    pub part_size: u64,

    /// Ranged GETs in flight
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..=64), value_name = "N")]
    pub concurrency: u16,

    /// Read this version of the object
    #[arg(long, value_name = "ID")]
    pub version_id: Option<String>,

    /// Do not verify the SHA-256 or the ETag
    #[arg(long)]
    pub no_verify: bool,

    /// Write the final JSON event to FILE (appended) instead of stderr
    #[arg(long, value_name = "FILE")]
    pub events: Option<PathBuf>,

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
        examples: vec![
            (
                "Restore a backup made with s3-put-multipart; pipefail makes a failed check fail the pipeline:",
                "set -o pipefail\ns3-get s3://backups/data.tar | tar -C /restore -xf -",
            ),
            (
                "The first MiB of an object:",
                "s3-get --range 0-1MiB s3://bucket/image.raw | file -",
            ),
            (
                "Keep the event for the record:",
                "s3-get --events get.jsonl s3://bucket/key > key",
            ),
        ],
        notes: vec![
            "A range is not verified (no checksum covers part of an object); the event then says \"verified\":\"none\". If the reader of stdout goes away (| head), s3-get stops and exits 0.",
        ],
        exit_notes: vec![
            "A verification failure (5) is reported after the data has been written: the consumer must not trust it.",
        ],
        environment: vec![],
        uses_s3: true,
        see_also: vec!["s3-put-multipart(1)"],
    }
}

/// Entry point of the binary.
pub fn main() -> ! {
    let args = Args::parse();
    let verbosity = args.log.clone();
    s3pipe::cli::run(TOOL, &verbosity, |cancellation| run(args, cancellation))
}

/// Resolves `--range` against the object's size into `start..end` (end exclusive).
pub fn resolve_range(text: &str, size: u64) -> Result<(u64, u64), Failure> {
    let bad = || Failure::usage(format!("--range '{text}' is not START-END, START- or -N"));
    let (start, end) = text.split_once('-').ok_or_else(bad)?;
    let number = |s: &str| parse_size(s).map_err(|err| Failure::usage(format!("--range: {err}")));
    let (start, end) = match (start.trim(), end.trim()) {
        ("", "") => return Err(bad()),
        ("", suffix) => (size.saturating_sub(number(suffix)?), size),
        (start, "") => (number(start)?, size),
        (start, end) => {
            let (start, last) = (number(start)?, number(end)?);
            if last < start {
                return Err(Failure::usage(format!(
                    "--range '{text}' ends before it starts"
                )));
            }
            (start, last.saturating_add(1).min(size))
        }
    };
    if start > size || (start == size && size > 0 && start != end) {
        return Err(Failure::usage(format!(
            "--range '{text}' starts past the end of the object ({size} bytes)"
        )));
    }
    Ok((start, end))
}

/// The object as HeadObject found it.
#[derive(Debug)]
struct Object {
    size: u64,
    etag: String,
    version_id: Option<String>,
    expected: Expected,
}

async fn head(client: &Client, args: &Args) -> Result<Object, Failure> {
    let head = client
        .head_object()
        .bucket(&args.url.bucket)
        .key(&args.url.key)
        .set_version_id(args.version_id.clone())
        .send()
        .await
        .map_err(|err| Failure::from_sdk(format!("cannot read {}", args.url), &err))?;
    let size = head.content_length.unwrap_or(0).max(0) as u64;
    let etag = head.e_tag.clone().unwrap_or_default();
    let stored_sha = head
        .metadata
        .as_ref()
        .and_then(|m| m.get(SHA256_METADATA_KEY))
        .map(|s| s.trim().to_ascii_lowercase());
    let encrypted = head.sse_customer_algorithm.is_some()
        || head
            .server_side_encryption
            .as_ref()
            .is_some_and(|sse| sse.as_str().starts_with("aws:kms"));
    let expected = match (stored_sha, verify::parse_etag(&etag)) {
        (_, _) if args.no_verify => Expected::Nothing,
        (Some(sha), _) => Expected::Sha256(sha),
        (None, _) if encrypted => Expected::Nothing,
        (None, Some((digest, None))) => Expected::Md5(digest),
        (None, Some((digest, Some(parts)))) => {
            // The size of part 1 gives every part's size but the last's.
            let first = client
                .head_object()
                .bucket(&args.url.bucket)
                .key(&args.url.key)
                .set_version_id(args.version_id.clone())
                .part_number(1)
                .send()
                .await
                .ok()
                .and_then(|h| h.content_length)
                .filter(|&len| len > 0);
            match first {
                Some(part_size) if parts > 1 || part_size as u64 == size => {
                    Expected::MultipartMd5 {
                        digest,
                        parts,
                        part_size: part_size as u64,
                    }
                }
                _ => Expected::Nothing,
            }
        }
        (None, None) => Expected::Nothing,
    };
    Ok(Object {
        size,
        etag,
        version_id: head.version_id.or(args.version_id.clone()),
        expected,
    })
}

/// Range buffers handed back by the writer for the next GETs. Reuse keeps the process at its
/// (concurrency + 2) buffers: freshly allocated 16 MiB buffers freed on another thread fragment
/// the allocator's arenas and leave RSS well above what is live.
type BufferPool = Arc<std::sync::Mutex<Vec<BytesMut>>>;

/// One ranged GET, read whole into memory, retried when the body breaks off.
async fn fetch_range(
    client: Client,
    url: Arc<S3Url>,
    pin: Arc<(Option<String>, String)>,
    start: u64,
    end: u64,
    requests: Arc<Semaphore>,
    pool: BufferPool,
) -> Result<Bytes, Failure> {
    let _slot = requests
        .acquire_owned()
        .await
        .map_err(|_| Failure::new(ExitCode::Failure, "stopped"))?;
    let (version_id, etag) = &*pin;
    let mut round = 0;
    loop {
        round += 1;
        let response = client
            .get_object()
            .bucket(&url.bucket)
            .key(&url.key)
            .range(format!("bytes={start}-{}", end - 1))
            .set_version_id(version_id.clone())
            .set_if_match((version_id.is_none() && !etag.is_empty()).then(|| etag.clone()))
            .send()
            .await;
        let failure = match response {
            Ok(output) => {
                let reused = pool.lock().unwrap_or_else(|p| p.into_inner()).pop();
                let mut buffer = reused.unwrap_or_default();
                buffer.clear();
                buffer.reserve((end - start) as usize);
                let mut body = output.body;
                let mut broke = None;
                loop {
                    match body.try_next().await {
                        Ok(Some(chunk)) => buffer.extend_from_slice(&chunk),
                        Ok(None) => break,
                        Err(err) => {
                            broke = Some(Failure::new(
                                ExitCode::Network,
                                format!("reading bytes {start}-{} of {url}: {err}", end - 1),
                            ));
                            break;
                        }
                    }
                }
                match broke {
                    None if buffer.len() as u64 == end - start => return Ok(buffer.freeze()),
                    None => Failure::new(
                        ExitCode::Network,
                        format!(
                            "bytes {start}-{} of {url}: received {} bytes instead of {}",
                            end - 1,
                            buffer.len(),
                            end - start
                        ),
                    ),
                    Some(failure) => failure,
                }
            }
            Err(err) => {
                let failure = Failure::from_sdk(
                    format!("cannot read bytes {start}-{} of {url}", end - 1),
                    &err,
                );
                if failure.exit == ExitCode::Exists {
                    return Err(Failure::verify(format!(
                        "{url} changed during the download (its ETag no longer matches); run again"
                    )));
                }
                failure
            }
        };
        if failure.exit != ExitCode::Network || round >= RANGE_ROUNDS {
            return Err(failure);
        }
        tracing::warn!("{failure}; asking for the range again (round {round} of {RANGE_ROUNDS})");
        tokio::time::sleep(Duration::from_millis(500 * u64::from(round))).await;
    }
}

/// What the writer thread hands back: the hasher, and whether the reader of stdout went away.
type WriterResult = Result<(Hasher, bool), Failure>;

/// Starts the thread that writes ranges to stdout in order and hashes them.
fn start_writer(
    expected: &Expected,
    pool: BufferPool,
) -> Result<
    (
        std::sync::mpsc::SyncSender<Bytes>,
        std::thread::JoinHandle<WriterResult>,
    ),
    Failure,
> {
    // Our own handle on fd 1 rather than `Stdout`: `Stdout` is line-buffered and would scan every
    // 16 MiB range for newlines.
    let mut out = std::fs::File::from(
        std::io::stdout()
            .as_fd()
            .try_clone_to_owned()
            .map_err(|err| Failure::new(ExitCode::Failure, format!("stdout: {err}")))?,
    );
    let (sender, receiver) = std::sync::mpsc::sync_channel::<Bytes>(0);
    let mut hasher = Hasher::new(expected);
    let handle = std::thread::Builder::new()
        .name("output".into())
        .spawn(move || {
            for data in receiver {
                match s3pipe::output::write_stdout(&mut out, &data) {
                    Ok(true) => {
                        hasher.update(&data);
                        if let Ok(buffer) = data.try_into_mut() {
                            pool.lock().unwrap_or_else(|p| p.into_inner()).push(buffer);
                        }
                    }
                    Ok(false) => return Ok((hasher, true)),
                    Err(err) => {
                        return Err(Failure::new(
                            ExitCode::Failure,
                            format!("cannot write to stdout: {err}"),
                        ));
                    }
                }
            }
            out.flush().map_err(|err| {
                Failure::new(ExitCode::Failure, format!("cannot write to stdout: {err}"))
            })?;
            Ok((hasher, false))
        })
        .map_err(|err| {
            Failure::new(ExitCode::Failure, format!("cannot start the writer: {err}"))
        })?;
    Ok((sender, handle))
}

async fn run(args: Args, cancellation: Cancellation) -> Result<(), Failure> {
    let started = Instant::now();
    if args.part_size == 0 {
        return Err(Failure::usage("--part-size must be more than 0"));
    }
    let sink = EventSink::from_option(args.events.as_deref(), EventSink::stderr)
        .map_err(|err| Failure::usage(format!("cannot open --events file: {err}")))?;
    let client = args.s3.client().await?;
    let object = head(&client, &args).await?;
    let (start, end) = match &args.range {
        Some(range) => resolve_range(range, object.size)?,
        None => (0, object.size),
    };
    let whole = start == 0 && end == object.size;
    let expected = if whole {
        object.expected.clone()
    } else {
        Expected::Nothing
    };
    tracing::info!(
        size = object.size,
        start,
        end,
        verify = expected.name(),
        "downloading"
    );

    let progress = s3pipe::progress::bytes(Some(end - start), args.log.quiet > 0, "download");
    let pool = BufferPool::default();
    let (sender, writer) = start_writer(&expected, pool.clone())?;
    let url = Arc::new(args.url.clone());
    let pin = Arc::new((object.version_id.clone(), object.etag.clone()));
    let concurrency = usize::from(args.concurrency);
    let requests = Arc::new(Semaphore::new(concurrency));
    let mut offsets = (start..end).step_by(args.part_size as usize);
    let mut pending: VecDeque<JoinHandle<Result<Bytes, Failure>>> = VecDeque::new();
    let mut reader_gone = false;
    let outcome: Result<(), Failure> = async {
        loop {
            // Keep `concurrency` ranges in flight or waiting, one being handed over and one being
            // written: (concurrency + 2) buffers, bounded
            // by how many are pending, not by the object's size.
            while pending.len() < concurrency {
                let Some(offset) = offsets.next() else { break };
                let range_end = (offset + args.part_size).min(end);
                pending.push_back(tokio::spawn(fetch_range(
                    client.clone(),
                    url.clone(),
                    pin.clone(),
                    offset,
                    range_end,
                    requests.clone(),
                    pool.clone(),
                )));
            }
            let Some(next) = pending.pop_front() else { return Ok(()) };
            let data = tokio::select! {
                biased;
                _ = cancellation.token().cancelled() => return Err(cancellation.failure("download stopped")),
                joined = next => joined.map_err(|err| Failure::new(ExitCode::Failure, err.to_string()))??,
            };
            progress.inc(data.len() as u64);
            let sender = sender.clone();
            let sent = tokio::task::spawn_blocking(move || sender.send(data).is_ok())
                .await
                .unwrap_or(false);
            if !sent {
                reader_gone = true;
                return Ok(());
            }
        }
    }
    .await;
    for task in &pending {
        task.abort();
    }
    drop(sender);
    progress.finish_and_clear();
    let written = writer
        .join()
        .map_err(|_| Failure::new(ExitCode::Failure, "the writer thread failed"))?;
    outcome?;
    let (hasher, gone) = written?;
    if gone || reader_gone {
        tracing::info!("the reader of stdout went away; stopping");
        return Ok(());
    }
    let (sha256, verdict) = hasher.finish(&expected);
    let seconds = started.elapsed().as_secs_f64();
    let mut event = Event::new(TOOL, "download_complete")
        .with("bucket", args.url.bucket.as_str())
        .with("key", args.url.key.as_str())
        .with("size", end - start)
        .with("sha256", sha256)
        .with(
            "verified",
            if verdict.is_ok() {
                expected.name()
            } else {
                "failed"
            },
        )
        .with("seconds", (seconds * 1000.0).round() / 1000.0)
        .with(
            "bytes_per_second",
            ((end - start) as f64 / seconds.max(1e-9)).round() as u64,
        );
    if let Some(version) = &object.version_id {
        event = event.with("version_id", version.as_str());
    }
    if !whole {
        event = event.with("range", format!("{start}-{}", end.saturating_sub(1)));
    }
    let _ = sink.emit(&event);
    verdict.map_err(|why| Failure::verify(format!("{} is corrupt or changed: {why}", args.url)))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        assert_eq!(resolve_range("0-99", 1000).expect("valid"), (0, 100));
        assert_eq!(resolve_range("900-", 1000).expect("valid"), (900, 1000));
        assert_eq!(resolve_range("-100", 1000).expect("valid"), (900, 1000));
        assert_eq!(resolve_range("-5000", 1000).expect("valid"), (0, 1000));
        assert_eq!(resolve_range("0-1MiB", 1000).expect("valid"), (0, 1000));
        assert_eq!(resolve_range("1KiB-", 4096).expect("valid"), (1024, 4096));
        assert_eq!(
            resolve_range("5-4", 1000).unwrap_err().exit,
            ExitCode::Usage
        );
        assert_eq!(
            resolve_range("2000-", 1000).unwrap_err().exit,
            ExitCode::Usage
        );
        assert_eq!(
            resolve_range("abc", 1000).unwrap_err().exit,
            ExitCode::Usage
        );
    }
}
