//! Reading the input into parts, on a thread of its own.
//!
//! Reading is blocking I/O on a pipe, and the SHA-256 of the whole stream has to be computed in
//! stream order, so both happen on one plain thread rather than in the async runtime. The thread
//! cuts the stream into parts of exactly `part_size` bytes (S3 and R2 want equal parts) and hands
//! each one over as `Bytes`, which the upload can retry without copying.
//!
//! Memory is bounded by a semaphore: the thread takes a permit before it allocates a part buffer,
//! and the permit travels with the part until its upload has finished. With `concurrency + 2`
//! permits (parts in flight, one waiting, one filling), memory stays within `(concurrency + 2) x
//! part size` however long the stream.

use std::io::{self, Read, Write};
use std::process::{Child, ChildStdout};
use std::sync::Arc;

use bytes::Bytes;
use sha2::{Digest, Sha256};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};

use s3pipe::Failure;
use s3pipe::units::format_size;

/// Part buffers handed back after their upload, for the reader to fill again. Reusing them saves
/// mapping and faulting in fresh pages for every part, which cost more CPU than the SHA-256.
pub type BufferPool = Arc<std::sync::Mutex<Vec<Vec<u8>>>>;

/// Returns a part's buffer to the pool once nothing else holds it.
pub fn recycle(part: Part, pool: &BufferPool) {
    if let Ok(unique) = part.data.try_into_mut() {
        let mut buffer = Vec::from(unique);
        buffer.clear();
        pool.lock().unwrap_or_else(|p| p.into_inner()).push(buffer);
    }
}

/// S3's limit on parts in one multipart upload.
pub const MAX_PARTS: u64 = 10_000;

/// One part of the stream, numbered from 1 as S3 numbers parts.
#[derive(Debug)]
pub struct Part {
    pub number: u64,
    pub data: Bytes,
    /// CRC32C of this part, for `--checksum crc32c`.
    pub crc32c: Option<u32>,
    /// SHA-256 of this part, for `--checksum sha256` (S3 combines part checksums itself).
    pub sha256: Option<[u8; 32]>,
    /// Frees this part's share of the memory budget when the part is dropped.
    pub _permit: OwnedSemaphorePermit,
}

/// What the whole stream came to, sent once after the last part.
#[derive(Debug)]
pub struct StreamEnd {
    pub bytes: u64,
    pub parts: u64,
    pub sha256: [u8; 32],
    /// CRC32C of the whole stream, for `--checksum crc32c` (a full-object checksum).
    pub crc32c: Option<u32>,
}

/// Messages from the reader thread, in stream order.
#[derive(Debug)]
pub enum Message {
    Part(Part),
    End(StreamEnd),
    Failed(Failure),
}

/// Where the bytes come from.
#[derive(Debug)]
pub enum Source {
    Stdin,
    /// The stdout of a producer we started (`-- COMMAND`).
    Producer(ChildStdout),
}

/// What the reader thread needs to know.
#[derive(Debug, Clone)]
pub struct ReaderSettings {
    pub part_size: u64,
    /// `--size`: the exact length the stream must have.
    pub exact_size: Option<u64>,
    /// `--checksum`: which per-part checksum S3 should verify, if any.
    pub checksum: Option<crate::Checksum>,
    pub tee: bool,
}

/// Starts the reader thread. Parts arrive on the returned channel.
pub fn start(
    source: Source,
    settings: ReaderSettings,
    buffers: Arc<Semaphore>,
    pool: BufferPool,
    progress: indicatif::ProgressBar,
) -> mpsc::Receiver<Message> {
    let (sender, receiver) = mpsc::channel(1);
    let runtime = tokio::runtime::Handle::current();
    std::thread::Builder::new()
        .name("input".into())
        .spawn(move || {
            let result = match source {
                Source::Stdin => {
                    let stdin = io::stdin();
                    widen_pipe(&stdin);
                    read_parts(
                        stdin.lock(),
                        &settings,
                        &buffers,
                        &pool,
                        &runtime,
                        &sender,
                        &progress,
                    )
                }
                Source::Producer(stdout) => {
                    widen_pipe(&stdout);
                    read_parts(
                        stdout, &settings, &buffers, &pool, &runtime, &sender, &progress,
                    )
                }
            };
            let message = match result {
                Ok(end) => Message::End(end),
                Err(failure) => Message::Failed(failure),
            };
            let _ = sender.blocking_send(message);
        })
        .expect("spawning a thread only fails when the system is out of resources");
    receiver
}

/// Asks for a 1 MiB pipe buffer: with the default 64 KiB, a fast producer and this reader take
/// turns sleeping. Failure (not a pipe, over the system limit) just leaves the default.
fn widen_pipe(fd: &impl std::os::fd::AsFd) {
    let _ = nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_SETPIPE_SZ(1 << 20));
}

fn read_parts(
    mut input: impl Read,
    settings: &ReaderSettings,
    buffers: &Arc<Semaphore>,
    pool: &BufferPool,
    runtime: &tokio::runtime::Handle,
    sender: &mpsc::Sender<Message>,
    progress: &indicatif::ProgressBar,
) -> Result<StreamEnd, Failure> {
    let mut stream_sha = Sha256::new();
    let mut stream_crc = 0u32;
    let mut total = 0u64;
    let mut number = 0u64;
    let mut stdout = settings.tee.then(io::stdout);
    loop {
        let permit = runtime
            .block_on(buffers.clone().acquire_owned())
            .map_err(|_| Failure::input("upload stopped"))?;
        let reused = pool.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let mut buffer = reused.unwrap_or_else(|| Vec::with_capacity(settings.part_size as usize));
        // `take` + `read_to_end` fills the buffer without zeroing it first and stops at the part
        // size; it retries EINTR and returns at EOF.
        (&mut input)
            .take(settings.part_size)
            .read_to_end(&mut buffer)
            .map_err(|err| {
                Failure::input(format!("cannot read the input after {total} bytes: {err}"))
            })?;
        if buffer.is_empty() {
            break;
        }
        total += buffer.len() as u64;
        if let Some(exact) = settings.exact_size
            && total > exact
        {
            return Err(Failure::input(format!(
                "the input is longer than --size {exact} bytes; upload aborted"
            )));
        }
        number += 1;
        if number > MAX_PARTS {
            return Err(Failure::input(format!(
                "the input needs more than {MAX_PARTS} parts of {}; S3 allows no more. Give --expected-size (an estimate of the stream's length) or a larger --part-size",
                format_size(settings.part_size)
            )));
        }
        stream_sha.update(&buffer);
        let crc32c = (settings.checksum == Some(crate::Checksum::Crc32c)).then(|| {
            let crc = crc32c::crc32c(&buffer);
            stream_crc = crc32c::crc32c_combine(stream_crc, crc, buffer.len());
            crc
        });
        let sha256 = (settings.checksum == Some(crate::Checksum::Sha256))
            .then(|| Sha256::digest(&buffer).into());
        if let Some(out) = stdout.as_mut() {
            out.write_all(&buffer)
                .and_then(|()| out.flush())
                .map_err(|err| match err.kind() {
                    io::ErrorKind::BrokenPipe => {
                        Failure::input("--tee: the reader of stdout went away; upload aborted")
                    }
                    _ => Failure::input(format!("--tee: cannot write to stdout: {err}")),
                })?;
        }
        progress.inc(buffer.len() as u64);
        let part = Part {
            number,
            data: Bytes::from(buffer),
            crc32c,
            sha256,
            _permit: permit,
        };
        if sender.blocking_send(Message::Part(part)).is_err() {
            // The upload side has stopped (it failed or was cancelled) and says why itself.
            return Err(Failure::input("upload stopped"));
        }
    }
    if let Some(exact) = settings.exact_size
        && total != exact
    {
        return Err(Failure::input(format!(
            "the input ended after {total} bytes, short of --size {exact}; upload aborted"
        )));
    }
    Ok(StreamEnd {
        bytes: total,
        parts: number,
        sha256: stream_sha.finalize().into(),
        crc32c: (settings.checksum == Some(crate::Checksum::Crc32c)).then_some(stream_crc),
    })
}

/// Waits for a producer and turns a failed exit into the failure the upload ends with.
pub fn producer_outcome(mut child: Child, name: &str) -> Result<(), Failure> {
    use std::os::unix::process::ExitStatusExt;
    let status = child
        .wait()
        .map_err(|err| Failure::input(format!("cannot wait for producer '{name}': {err}")))?;
    if status.success() {
        return Ok(());
    }
    let (code, how) = match (status.code(), status.signal()) {
        (Some(code), _) => (code, format!("exited with status {code}")),
        (None, Some(signal)) => (128 + signal, format!("was killed by signal {signal}")),
        _ => (1, "failed".to_string()),
    };
    Err(Failure::with_status(
        code,
        format!("producer '{name}' {how}; upload aborted, nothing was stored"),
    ))
}
