//! `write`: stdin becomes the next file on the loaded tape, block objects PUT in parallel.
//!
//! Order matters, because Amanda decides what exists from what it can find: the blocks go first,
//! then our manifest, and the `-filestart` header last. Until the header is there Amanda does
//! not see the file at all (the end of a tape is its first missing file start), so a run that
//! fails or is interrupted, which deletes what it wrote, never leaves a file with a hole that
//! Amanda would read as a short but complete dump.
//!
//! Memory: a reader thread fills one block at a time and hands it over a channel of one; at most
//! `NB_THREADS_BACKUP` blocks are being uploaded, so a run holds about (threads + 3) blocks.
//! A block's buffer goes back to the reader once its upload is done ([`BlockPool`]): a fresh
//! 10 MiB buffer for every block would cost a page fault per 4 KiB, over the whole dump.

use std::io::Read;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use sha2::{Digest, Sha256};
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinSet;

use s3pipe::signals::Cancellation;
use s3pipe::units::format_size;
use s3pipe::{ExitCode, Failure};

use crate::slots::Slot;
use crate::tape::{self, MANIFEST_FORMAT, Manifest, Tapes};

/// What the reader thread sends.
#[derive(Debug)]
enum Chunk {
    Block(Bytes),
    End { sha256: String, size: u64 },
    Failed(std::io::Error),
}

/// Block buffers handed back after their upload, for the reader to fill again.
#[derive(Debug, Clone, Default)]
struct BlockPool(Arc<Mutex<Vec<BytesMut>>>);

impl BlockPool {
    /// A buffer of `len` bytes (old content, about to be overwritten).
    fn take(&self, len: usize) -> BytesMut {
        let reused = self.0.lock().unwrap_or_else(|p| p.into_inner()).pop();
        match reused {
            Some(mut block) => {
                block.resize(len, 0);
                block
            }
            None => BytesMut::zeroed(len),
        }
    }

    /// Takes `block` back if nothing else holds it any more (the SHA-256 thread may still).
    fn give(&self, block: Bytes, block_size: usize, keep: usize) {
        if let Ok(block) = block.try_into_mut()
            && block.capacity() >= block_size
        {
            let mut pool = self.0.lock().unwrap_or_else(|p| p.into_inner());
            if pool.len() < keep {
                pool.push(block);
            }
        }
    }
}

fn spawn_reader(
    mut input: Box<dyn Read + Send>,
    block_size: usize,
    pool: BlockPool,
    tx: mpsc::Sender<Chunk>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        // The SHA-256 of the stream is sequential work: a thread of its own keeps it off the
        // path between reading a block and handing it to the uploads.
        let (to_hasher, blocks) = std::sync::mpsc::sync_channel::<Bytes>(1);
        let hasher = std::thread::spawn(move || {
            let mut hasher = Sha256::new();
            for block in blocks {
                hasher.update(&block);
            }
            hex::encode(hasher.finalize())
        });
        let mut total = 0u64;
        loop {
            let mut block = pool.take(block_size);
            let mut filled = 0;
            while filled < block_size {
                match input.read(&mut block[filled..]) {
                    Ok(0) => break,
                    Ok(n) => filled += n,
                    Err(err) if err.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(err) => {
                        let _ = tx.blocking_send(Chunk::Failed(err));
                        return;
                    }
                }
            }
            block.truncate(filled);
            total += filled as u64;
            let last = filled < block_size;
            if filled > 0 {
                let block = block.freeze();
                if to_hasher.send(block.clone()).is_err()
                    || tx.blocking_send(Chunk::Block(block)).is_err()
                {
                    return;
                }
            }
            if last {
                drop(to_hasher);
                let Ok(sha256) = hasher.join() else {
                    let _ = tx.blocking_send(Chunk::Failed(std::io::Error::other(
                        "the hashing thread panicked",
                    )));
                    return;
                };
                let _ = tx.blocking_send(Chunk::End {
                    sha256,
                    size: total,
                });
                return;
            }
        }
    })
}

/// What was written.
#[derive(Debug, Clone)]
pub struct Written {
    pub size: u64,
    pub blocks: u64,
    pub sha256: String,
    pub seconds: f64,
}

/// The file's place and limits.
#[derive(Debug)]
pub struct Target<'a> {
    pub slot: &'a Slot,
    pub label: &'a str,
    pub file: u32,
    /// Bytes already on the tape, and the tapetype length, for the "tape is full" check.
    pub used: u64,
    pub length: Option<u64>,
}

/// Writes the data blocks, the manifest and the header; on any failure deletes what it wrote.
pub async fn write_file(
    tapes: &Tapes,
    target: &Target<'_>,
    header_text: String,
    input: Box<dyn Read + Send>,
    cancellation: &Cancellation,
) -> Result<Written, Failure> {
    let result = write_inner(tapes, target, header_text, input, cancellation).await;
    if result.is_err() {
        let slot = target.slot;
        let prefix = tape::file_prefix(slot, target.file);
        // Clean up even after a signal: the objects must not outlive the failed file. A PUT
        // abandoned just as its body had been sent may still be stored a moment later, hence a
        // second pass.
        for pass in 0..2 {
            if pass > 0 {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            match tapes.list(&slot.bucket, &prefix).await {
                Ok(listed) => {
                    let keys: Vec<String> = listed.into_iter().map(|l| l.key).collect();
                    if let Err(err) = tapes.delete(&slot.bucket, &keys).await {
                        tracing::error!("could not delete the blocks of the failed file: {err}");
                    }
                }
                Err(err) => {
                    tracing::error!("could not list the blocks of the failed file: {err}")
                }
            }
        }
    }
    result
}

async fn write_inner(
    tapes: &Tapes,
    target: &Target<'_>,
    header_text: String,
    input: Box<dyn Read + Send>,
    cancellation: &Cancellation,
) -> Result<Written, Failure> {
    let started = Instant::now();
    let slot = target.slot;
    let device = &tapes.device;
    let block_size = device.block_size as usize;
    let threads = device.threads_backup;
    let (tx, mut rx) = mpsc::channel(1);
    let pool = BlockPool::default();
    let _reader = spawn_reader(input, block_size, pool.clone(), tx);
    let permits = Arc::new(Semaphore::new(threads));
    let mut uploads: JoinSet<Result<(u64, String), Failure>> = JoinSet::new();
    let mut md5s: Vec<String> = Vec::new();
    let mut index = 0u64;
    let mut sent = 0u64;
    // MAX_SEND_SPEED is per thread in Amanda; the whole file may go threads times as fast.
    let speed = device
        .max_send_speed
        .map(|s| s.saturating_mul(threads as u64).max(1));
    let record = |md5s: &mut Vec<String>, (i, md5): (u64, String)| {
        let i = i as usize;
        if md5s.len() <= i {
            md5s.resize(i + 1, String::new());
        }
        md5s[i] = md5;
    };
    let (sha256, size) = loop {
        let chunk = tokio::select! {
            chunk = rx.recv() => chunk,
            _ = cancellation.token().cancelled() => {
                uploads.abort_all();
                return Err(cancellation.failure(&format!("file {} was not written to {}", target.file, target.label)));
            }
        };
        let Some(chunk) = chunk else {
            return Err(Failure::new(
                ExitCode::Failure,
                "the input reader stopped unexpectedly",
            ));
        };
        match chunk {
            Chunk::Failed(err) => {
                uploads.abort_all();
                return Err(Failure::input(format!("cannot read the input: {err}")));
            }
            Chunk::End { sha256, size } => break (sha256, size),
            Chunk::Block(data) => {
                if let Some(length) = target.length
                    && target.used + sent + data.len() as u64 > length
                {
                    uploads.abort_all();
                    return Err(Failure::input(format!(
                        "tape {} is full: {} used, the tapetype length is {}; nothing was added to it",
                        target.label,
                        format_size(target.used),
                        format_size(length)
                    )));
                }
                if let Some(speed) = speed {
                    let due = Duration::from_secs_f64(sent as f64 / speed as f64);
                    if let Some(wait) = due.checked_sub(started.elapsed()) {
                        tokio::select! {
                            _ = tokio::time::sleep(wait) => {}
                            _ = cancellation.token().cancelled() => {}
                        }
                    }
                }
                if cancellation.is_cancelled() {
                    uploads.abort_all();
                    return Err(cancellation.failure(&format!(
                        "file {} was not written to {}",
                        target.file, target.label
                    )));
                }
                let permit = tokio::select! {
                    permit = permits.clone().acquire_owned() => permit.map_err(|_| Failure::new(ExitCode::Failure, "upload slots closed"))?,
                    _ = cancellation.token().cancelled() => {
                        uploads.abort_all();
                        return Err(cancellation.failure(&format!("file {} was not written to {}", target.file, target.label)));
                    }
                };
                while let Some(done) = uploads.try_join_next() {
                    record(&mut md5s, joined(done)?);
                }
                sent += data.len() as u64;
                let key = tape::key_block(slot, target.file, index);
                let tapes = tapes.clone();
                let bucket = slot.bucket.clone();
                let block = index;
                let pool = pool.clone();
                uploads.spawn(async move {
                    let result = tapes
                        .put(&bucket, &key, data.clone(), "application/octet-stream")
                        .await;
                    pool.give(data, block_size, threads + 2);
                    drop(permit);
                    Ok((block, result?))
                });
                index += 1;
            }
        }
    };
    loop {
        let next = tokio::select! {
            next = uploads.join_next() => next,
            _ = cancellation.token().cancelled() => {
                uploads.abort_all();
                return Err(cancellation.failure(&format!("file {} was not written to {}", target.file, target.label)));
            }
        };
        match next {
            Some(done) => record(&mut md5s, joined(done)?),
            None => break,
        }
    }
    let manifest = Manifest {
        format: MANIFEST_FORMAT.to_string(),
        file: target.file,
        size,
        block_size: device.block_size,
        blocks: index,
        sha256: sha256.clone(),
        block_md5: md5s,
    };
    let manifest_json = serde_json::to_vec_pretty(&manifest)
        .map_err(|err| Failure::new(ExitCode::Failure, err.to_string()))?;
    tapes
        .put(
            &slot.bucket,
            &tape::key_manifest(slot, target.file),
            Bytes::from(manifest_json),
            "application/json",
        )
        .await?;
    if cancellation.is_cancelled() {
        return Err(cancellation.failure(&format!(
            "file {} was not written to {}",
            target.file, target.label
        )));
    }
    // The commit point: from here on Amanda (and we) see the file.
    tapes
        .put(
            &slot.bucket,
            &tape::key_filestart(slot, target.file),
            Bytes::from(header_text.into_bytes()),
            "application/octet-stream",
        )
        .await?;
    Ok(Written {
        size,
        blocks: index,
        sha256,
        seconds: started.elapsed().as_secs_f64(),
    })
}

fn joined(
    done: Result<Result<(u64, String), Failure>, tokio::task::JoinError>,
) -> Result<(u64, String), Failure> {
    match done {
        Ok(result) => result,
        Err(err) => Err(Failure::new(
            ExitCode::Failure,
            format!("a block upload stopped: {err}"),
        )),
    }
}
