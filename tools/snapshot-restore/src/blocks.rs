//! `snapshot-restore blocks`: a snapshot read through the EBS direct APIs, without a volume.
//!
//! ListSnapshotBlocks (every page) says which 512 KiB blocks the snapshot holds; GetSnapshotBlock
//! fetches them, a bounded number at a time, each checked against the SHA-256 the service sends
//! with it. Blocks are written in offset order to stdout, with zeros for the indexes that were not
//! listed (never what the service returns for them: for encrypted snapshots that can be random
//! data), or at their offsets into `--output`, leaving holes.
//!
//! Memory is bounded by `--concurrency` blocks in flight plus a few queued for the writer. The EBS
//! client uses the SDK's adaptive retry mode, so throttling (the per-snapshot request limit) slows
//! the reads down instead of failing them.
//!
//! `--changed-since PARENT` writes the block list format of [`crate::blocklist`] instead.

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::{FileExt, FileTypeExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use clap::Args;
use futures::StreamExt;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use s3pipe::event::{Event, EventSink};
use s3pipe::signals::Cancellation;
use s3pipe::{ExitCode, Failure};

use crate::TOOL;
use crate::blocklist;
use s3pipe::aws::{AwsOptions, aws_failure};

/// The EBS snapshot block size. ListSnapshotBlocks reports it too, but some emulators report
/// 512 (bytes) while serving 512 KiB blocks, and every real snapshot uses this size.
pub const BLOCK_SIZE: u64 = 512 * 1024;

const GIB: u64 = 1024 * 1024 * 1024;

#[derive(Debug, Clone, Args)]
pub struct BlocksArgs {
    /// Snapshot to read (snap-...)
    #[arg(long, value_name = "SNAPSHOT_ID")]
    pub snapshot_id: String,

    /// Write the image to this file or block device instead of stdout. A file is written sparsely
    /// under a temporary name and renamed when complete; a device gets zeros where the snapshot
    /// has no block
    #[arg(long, short, value_name = "FILE|DEVICE")]
    pub output: Option<PathBuf>,

    /// Export only the blocks that changed since this earlier snapshot of the same volume, in the
    /// s3pipe block list format (apply it with `snapshot-restore apply`)
    #[arg(long, value_name = "PARENT_SNAPSHOT_ID")]
    pub changed_since: Option<String>,

    /// GetSnapshotBlock requests in flight (each holds one 512 KiB block in memory)
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=1024), value_name = "N")]
    pub concurrency: u32,

    /// Reads of one block whose data does not match its SHA-256 before giving up (exit 5)
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=20), value_name = "N")]
    pub verify_attempts: u32,

    /// Where the final event goes: a file (appended), or - for stdout when --output is given [default: stderr]
    #[arg(long, value_name = "FILE")]
    pub events: Option<PathBuf>,
}

/// One block the snapshot holds.
#[derive(Debug, Clone)]
pub struct BlockRef {
    pub index: u64,
    /// None: the block is absent in this snapshot (a changed block that was removed).
    pub token: Option<String>,
}

/// What ListSnapshotBlocks / ListChangedBlocks told us.
#[derive(Debug)]
pub struct Listing {
    pub blocks: Vec<BlockRef>,
    pub volume_size_gib: u64,
}

/// Reads every page of ListSnapshotBlocks.
pub async fn list_blocks(ebs: &aws_sdk_ebs::Client, snapshot_id: &str) -> Result<Listing, Failure> {
    let mut blocks = Vec::new();
    let mut token: Option<String> = None;
    let mut volume_size_gib;
    loop {
        let out = ebs
            .list_snapshot_blocks()
            .snapshot_id(snapshot_id)
            .max_results(10_000)
            .set_next_token(token.clone())
            .send()
            .await
            .map_err(|err| aws_failure(format!("cannot list the blocks of {snapshot_id}"), &err))?;
        volume_size_gib = out.volume_size().unwrap_or(0).max(0) as u64;
        for block in out.blocks() {
            if let Some(index) = block.block_index() {
                blocks.push(BlockRef {
                    index: index as u64,
                    token: block.block_token().map(str::to_string),
                });
            }
        }
        match out.next_token() {
            Some(next) if !next.is_empty() && token.as_deref() != Some(next) => {
                token = Some(next.to_string())
            }
            _ => break,
        }
    }
    finish_listing(blocks, volume_size_gib)
}

/// Reads every page of ListChangedBlocks(parent, snapshot): the blocks to fetch from `snapshot`,
/// and those that it no longer has (no second token), which read as zeros.
pub async fn list_changed(
    ebs: &aws_sdk_ebs::Client,
    parent: &str,
    snapshot_id: &str,
) -> Result<Listing, Failure> {
    let mut blocks = Vec::new();
    let mut token: Option<String> = None;
    let mut volume_size_gib;
    loop {
        let out = ebs
            .list_changed_blocks()
            .first_snapshot_id(parent)
            .second_snapshot_id(snapshot_id)
            .max_results(10_000)
            .set_next_token(token.clone())
            .send()
            .await
            .map_err(|err| {
                aws_failure(
                    format!("cannot list the blocks changed between {parent} and {snapshot_id}"),
                    &err,
                )
            })?;
        volume_size_gib = out.volume_size().unwrap_or(0).max(0) as u64;
        for block in out.changed_blocks() {
            if let Some(index) = block.block_index() {
                blocks.push(BlockRef {
                    index: index as u64,
                    token: block.second_block_token().map(str::to_string),
                });
            }
        }
        match out.next_token() {
            Some(next) if !next.is_empty() && token.as_deref() != Some(next) => {
                token = Some(next.to_string())
            }
            _ => break,
        }
    }
    finish_listing(blocks, volume_size_gib)
}

fn finish_listing(mut blocks: Vec<BlockRef>, volume_size_gib: u64) -> Result<Listing, Failure> {
    blocks.sort_by_key(|b| b.index);
    blocks.dedup_by_key(|b| b.index);
    let total = volume_size_gib * GIB / BLOCK_SIZE;
    if let Some(last) = blocks.last()
        && last.index >= total
    {
        return Err(Failure::verify(format!(
            "the service listed block {} of a {volume_size_gib} GiB snapshot, past its end",
            last.index
        )));
    }
    Ok(Listing {
        blocks,
        volume_size_gib,
    })
}

/// Fetches one block and checks it against its SHA-256, reading it again (up to `attempts`
/// times) when the data does not match, since a bad read is more likely than a bad snapshot.
pub async fn fetch_block(
    ebs: aws_sdk_ebs::Client,
    snapshot_id: Arc<str>,
    block: BlockRef,
    attempts: u32,
    body_timeout: Duration,
) -> Result<Bytes, Failure> {
    let Some(token) = block.token.as_deref() else {
        return Ok(Bytes::new());
    };
    let index = block.index;
    let mut last_problem = String::new();
    for attempt in 1..=attempts {
        let out = ebs
            .get_snapshot_block()
            .snapshot_id(&*snapshot_id)
            .block_index(index as i32)
            .block_token(token)
            .send()
            .await
            .map_err(|err| {
                aws_failure(format!("cannot read block {index} of {snapshot_id}"), &err)
            })?;
        let expected = out.checksum().map(str::to_string);
        let algorithm = out.checksum_algorithm().map(|a| a.as_str().to_string());
        let data = match tokio::time::timeout(body_timeout, out.block_data.collect()).await {
            Ok(Ok(data)) => data.into_bytes(),
            Ok(Err(err)) => {
                last_problem = format!("reading its data failed: {err}");
                tracing::debug!(index, attempt, "{last_problem}");
                continue;
            }
            Err(_) => {
                last_problem = "reading its data timed out".to_string();
                tracing::debug!(index, attempt, "{last_problem}");
                continue;
            }
        };
        if algorithm.as_deref().is_some_and(|a| a != "SHA256") {
            return Err(Failure::verify(format!(
                "block {index} of {snapshot_id}: unknown checksum algorithm {}",
                algorithm.unwrap_or_default()
            )));
        }
        let Some(expected) = expected else {
            return Err(Failure::verify(format!(
                "block {index} of {snapshot_id} came without a checksum"
            )));
        };
        let actual = base64::engine::general_purpose::STANDARD.encode(Sha256::digest(&data));
        if actual == expected && data.len() as u64 == BLOCK_SIZE {
            return Ok(data);
        }
        last_problem = if actual != expected {
            format!("SHA-256 mismatch (expected {expected}, got {actual})")
        } else {
            format!("{} bytes instead of {BLOCK_SIZE}", data.len())
        };
        tracing::warn!(
            index,
            attempt,
            "block {index}: {last_problem}; reading it again"
        );
    }
    Err(Failure::verify(format!(
        "block {index} of {snapshot_id}: {last_problem}, {attempts} times"
    )))
}

/// What goes to the writer thread.
#[derive(Debug)]
pub enum Piece {
    Data(Bytes),
    /// This many zero bytes.
    Zeros(u64),
}

/// A thread that writes pieces in order to a blocking writer (stdout or a file), so the async
/// side never blocks on a slow reader. Returns the bytes written and, when asked, their SHA-256.
pub struct Writer {
    sender: mpsc::Sender<Piece>,
    thread: std::thread::JoinHandle<std::io::Result<Written>>,
}

/// Bytes written, their SHA-256 when asked for, and whether the reader stayed to the end.
type Written = (u64, Option<[u8; 32]>, bool);

impl std::fmt::Debug for Writer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Writer")
    }
}

impl Writer {
    pub fn spawn(mut out: Box<dyn Write + Send>, hash: bool) -> Self {
        let (sender, mut receiver) = mpsc::channel::<Piece>(8);
        let thread = std::thread::spawn(move || {
            let zeros = vec![0u8; BLOCK_SIZE as usize];
            let mut hasher = hash.then(Sha256::new);
            let mut written = 0u64;
            while let Some(piece) = receiver.blocking_recv() {
                let result = match &piece {
                    Piece::Data(data) => {
                        if let Some(h) = hasher.as_mut() {
                            h.update(data);
                        }
                        written += data.len() as u64;
                        s3pipe::output::write_stdout(&mut out, data)
                    }
                    Piece::Zeros(n) => {
                        let mut n = *n;
                        let mut ok = Ok(true);
                        while n > 0 && matches!(ok, Ok(true)) {
                            let len = n.min(zeros.len() as u64) as usize;
                            if let Some(h) = hasher.as_mut() {
                                h.update(&zeros[..len]);
                            }
                            ok = s3pipe::output::write_stdout(&mut out, &zeros[..len]);
                            written += len as u64;
                            n -= len as u64;
                        }
                        ok
                    }
                };
                match result {
                    Ok(true) => {}
                    Ok(false) => return Ok((written, None, false)),
                    Err(err) => return Err(err),
                }
            }
            match s3pipe::output::write_stdout(&mut out, b"").and_then(|ok| {
                out.flush().map(|()| ok).or_else(|err| {
                    if s3pipe::output::is_broken_pipe(&err) {
                        Ok(false)
                    } else {
                        Err(err)
                    }
                })
            }) {
                Ok(ok) => Ok((written, hasher.map(|h| h.finalize().into()), ok)),
                Err(err) => Err(err),
            }
        });
        Writer { sender, thread }
    }

    /// Queues a piece; false when the writer has stopped (reader gone or an error).
    pub async fn send(&self, piece: Piece) -> bool {
        self.sender.send(piece).await.is_ok()
    }

    /// Waits for everything queued to be written: (bytes, hash, whether the reader stayed).
    pub fn finish(self) -> Result<Written, Failure> {
        drop(self.sender);
        match self.thread.join() {
            Ok(Ok(result)) => Ok(result),
            Ok(Err(err)) => Err(Failure::new(
                ExitCode::Failure,
                format!("cannot write the output: {err}"),
            )),
            Err(_) => Err(Failure::new(
                ExitCode::Failure,
                "the writer thread panicked",
            )),
        }
    }
}

pub async fn run(
    args: BlocksArgs,
    aws: &AwsOptions,
    cancellation: &Cancellation,
) -> Result<(), Failure> {
    let events = EventSink::from_option(args.events.as_deref(), EventSink::stderr)
        .map_err(|err| Failure::usage(format!("cannot open the events file: {err}")))?;
    let ebs = aws_sdk_ebs::Client::new(&aws.sdk_config(true).await?);
    let listing = match &args.changed_since {
        Some(parent) => list_changed(&ebs, parent, &args.snapshot_id).await?,
        None => list_blocks(&ebs, &args.snapshot_id).await?,
    };
    let size = listing.volume_size_gib * GIB;
    tracing::info!(
        snapshot_id = args.snapshot_id,
        blocks = listing.blocks.len(),
        size,
        "listed the snapshot's blocks"
    );
    let fetched = Arc::new(AtomicU64::new(0));
    let stream = fetch_stream(&ebs, &args, &listing, aws.attempt_timeout, fetched.clone());

    let work = async {
        match (&args.changed_since, &args.output) {
            (Some(parent), output) => {
                let out = open_sequential(output.as_deref())?;
                blocklist::write(out, parent, &args.snapshot_id, &listing, stream).await
            }
            (None, None) => write_image_stream(&listing, stream).await,
            (None, Some(path)) => write_image_file(path, &listing, stream, cancellation).await,
        }
    };
    // An image file watches the signal itself (it must remove its temporary file first).
    let outcome = if args.changed_since.is_none() && args.output.is_some() {
        work.await?
    } else {
        tokio::select! {
            outcome = work => outcome?,
            _ = cancellation.token().cancelled() => {
                if let Some(list) = &args.output {
                    let _ = std::fs::remove_file(list);
                }
                return Err(cancellation.failure("the output is incomplete"));
            }
        }
    };
    if !outcome.reader_stayed {
        tracing::info!("the reader of stdout went away; stopped");
        return Ok(());
    }
    let mut event = Event::new(
        TOOL,
        if args.changed_since.is_some() {
            "changed_blocks_read"
        } else {
            "snapshot_read"
        },
    )
    .with("snapshot_id", args.snapshot_id.as_str())
    .with("volume_size", size)
    .with("block_size", BLOCK_SIZE)
    .with("blocks_listed", listing.blocks.len() as u64)
    .with("blocks_read", fetched.load(Ordering::Relaxed))
    .with("bytes_written", outcome.bytes);
    if let Some(parent) = &args.changed_since {
        event = event.with("parent_snapshot_id", parent.as_str());
    }
    if let Some(path) = &args.output {
        event = event.with("output", path.display().to_string());
    }
    events
        .emit(&event)
        .map_err(|err| Failure::new(ExitCode::Failure, format!("cannot write the event: {err}")))
}

/// Blocks fetched in listing order, `concurrency` at a time. Each fetch is its own task, so
/// fetches go on while the writer is busy.
fn fetch_stream<'a>(
    ebs: &aws_sdk_ebs::Client,
    args: &BlocksArgs,
    listing: &'a Listing,
    body_timeout: Duration,
    fetched: Arc<AtomicU64>,
) -> impl futures::Stream<Item = Result<(u64, Bytes), Failure>> + 'a {
    let snapshot_id: Arc<str> = Arc::from(args.snapshot_id.as_str());
    let attempts = args.verify_attempts;
    let ebs = ebs.clone();
    futures::stream::iter(listing.blocks.iter().cloned())
        .map(move |block| {
            let index = block.index;
            let task = tokio::spawn(fetch_block(
                ebs.clone(),
                snapshot_id.clone(),
                block,
                attempts,
                body_timeout,
            ));
            let fetched = fetched.clone();
            async move {
                let data = task.await.map_err(|err| {
                    Failure::new(ExitCode::Failure, format!("block task failed: {err}"))
                })??;
                if !data.is_empty() {
                    fetched.fetch_add(1, Ordering::Relaxed);
                }
                Ok((index, data))
            }
        })
        .buffered(args.concurrency as usize)
}

/// What writing produced.
#[derive(Debug)]
pub struct Outcome {
    pub bytes: u64,
    pub reader_stayed: bool,
}

async fn write_image_stream(
    listing: &Listing,
    stream: impl futures::Stream<Item = Result<(u64, Bytes), Failure>>,
) -> Result<Outcome, Failure> {
    let writer = Writer::spawn(Box::new(std::io::stdout()), false);
    let total = listing.volume_size_gib * GIB / BLOCK_SIZE;
    let mut next = 0u64;
    let mut stream = std::pin::pin!(stream);
    let mut open = true;
    while let Some(item) = stream.next().await {
        let (index, data) = item?;
        if index > next {
            open = writer.send(Piece::Zeros((index - next) * BLOCK_SIZE)).await;
        }
        if open {
            open = writer.send(Piece::Data(data)).await;
        }
        next = index + 1;
        if !open {
            break;
        }
    }
    if open && total > next {
        writer.send(Piece::Zeros((total - next) * BLOCK_SIZE)).await;
    }
    let (bytes, _, reader_stayed) = writer.finish()?;
    Ok(Outcome {
        bytes,
        reader_stayed,
    })
}

/// Writes blocks at their offsets. A regular file is written under a temporary name in the same
/// directory (holes where there are no blocks, and where blocks are all zeros) and renamed when
/// complete, so a failed run never leaves a plausible but partial image; a block device is written
/// in place and gets explicit zeros, since it may hold older data.
async fn write_image_file(
    path: &Path,
    listing: &Listing,
    stream: impl futures::Stream<Item = Result<(u64, Bytes), Failure>>,
    cancellation: &Cancellation,
) -> Result<Outcome, Failure> {
    let size = listing.volume_size_gib * GIB;
    let is_device = std::fs::metadata(path)
        .map(|m| m.file_type().is_block_device())
        .unwrap_or(false);
    let temp = if is_device {
        None
    } else {
        let name = path.file_name().ok_or_else(|| {
            Failure::usage(format!("--output {}: not a file name", path.display()))
        })?;
        let mut temp_name = std::ffi::OsString::from(".");
        temp_name.push(name);
        temp_name.push(format!(".{}.partial", std::process::id()));
        Some(path.with_file_name(temp_name))
    };
    let target = temp.clone().unwrap_or_else(|| path.to_path_buf());
    let file = File::options()
        .write(true)
        .create(!is_device)
        .truncate(!is_device)
        .open(&target)
        .map_err(|err| Failure::usage(format!("cannot open {}: {err}", target.display())))?;
    if is_device {
        let device_size = std::fs::File::open(path)
            .and_then(|mut f| std::io::Seek::seek(&mut f, std::io::SeekFrom::End(0)))
            .map_err(|err| Failure::usage(format!("cannot size {}: {err}", path.display())))?;
        if device_size < size {
            return Err(Failure::usage(format!(
                "{} holds {device_size} bytes, less than the snapshot's {size}",
                path.display()
            )));
        }
    } else {
        file.set_len(size).map_err(|err| {
            Failure::new(
                ExitCode::Failure,
                format!("cannot size {}: {err}", target.display()),
            )
        })?;
    }
    let file = Arc::new(file);
    // A signal must still remove the temporary file, so it is watched here, not by the caller.
    let result = tokio::select! {
        result = write_blocks_at(&file, listing, stream, is_device) => result,
        _ = cancellation.token().cancelled() => Err(cancellation.failure(&format!("{} was not written", path.display()))),
    };
    let result = result.and_then(|bytes| {
        file.sync_all().map_err(|err| {
            Failure::new(
                ExitCode::Failure,
                format!("cannot flush {}: {err}", target.display()),
            )
        })?;
        Ok(bytes)
    });
    match (result, temp) {
        (Ok(bytes), Some(temp)) => {
            std::fs::rename(&temp, path).map_err(|err| {
                let _ = std::fs::remove_file(&temp);
                Failure::new(
                    ExitCode::Failure,
                    format!("cannot rename to {}: {err}", path.display()),
                )
            })?;
            Ok(Outcome {
                bytes,
                reader_stayed: true,
            })
        }
        (Ok(bytes), None) => Ok(Outcome {
            bytes,
            reader_stayed: true,
        }),
        (Err(failure), temp) => {
            if let Some(temp) = temp {
                let _ = std::fs::remove_file(temp);
            }
            Err(failure)
        }
    }
}

async fn write_blocks_at(
    file: &Arc<File>,
    listing: &Listing,
    stream: impl futures::Stream<Item = Result<(u64, Bytes), Failure>>,
    zero_fill: bool,
) -> Result<u64, Failure> {
    let total = listing.volume_size_gib * GIB / BLOCK_SIZE;
    let mut next = 0u64;
    let mut written = 0u64;
    let mut stream = std::pin::pin!(stream);
    let write_at = |data: Bytes, offset: u64| {
        let file = file.clone();
        async move {
            tokio::task::spawn_blocking(move || file.write_all_at(&data, offset))
                .await
                .map_err(|err| Failure::new(ExitCode::Failure, err.to_string()))?
                .map_err(|err| Failure::new(ExitCode::Failure, format!("cannot write: {err}")))
        }
    };
    let zeros = Bytes::from(vec![0u8; BLOCK_SIZE as usize]);
    while let Some(item) = stream.next().await {
        let (index, data) = item?;
        if zero_fill {
            for gap in next..index {
                write_at(zeros.clone(), gap * BLOCK_SIZE).await?;
            }
        }
        next = index + 1;
        if data.iter().all(|&b| b == 0) && !zero_fill {
            continue;
        }
        let data = if data.is_empty() { zeros.clone() } else { data };
        written += data.len() as u64;
        write_at(data, index * BLOCK_SIZE).await?;
    }
    if zero_fill {
        for gap in next..total {
            write_at(zeros.clone(), gap * BLOCK_SIZE).await?;
        }
    }
    Ok(written)
}

fn open_sequential(path: Option<&Path>) -> Result<Box<dyn Write + Send>, Failure> {
    match path {
        None => Ok(Box::new(std::io::stdout())),
        Some(path) => File::create(path)
            .map(|f| {
                Box::new(std::io::BufWriter::with_capacity(1 << 20, f)) as Box<dyn Write + Send>
            })
            .map_err(|err| Failure::usage(format!("cannot create {}: {err}", path.display()))),
    }
}
