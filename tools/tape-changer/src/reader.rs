//! `read`: one file of a tape to stdout, blocks fetched in parallel and written in order.
//!
//! Amanda ends a file at the first block that answers 404, so a lost middle block silently
//! truncates a restore. Here the end of a file is known before the first byte is written: from
//! our manifest (block count, each block's MD5, the SHA-256 of the whole) when the file has one,
//! otherwise from a listing of its blocks, where a gap followed by more blocks is an error rather
//! than an end. A block that is missing or does not match its MD5 stops the read before it is
//! written, with exit status 5.

use std::collections::VecDeque;
use std::io::Write;
use std::sync::mpsc::sync_channel;
use std::time::Instant;

use bytes::Bytes;
use sha2::{Digest, Sha256};
use tokio::task::JoinHandle;

use s3pipe::signals::Cancellation;
use s3pipe::{ExitCode, Failure};

use crate::header::{self, FileHeader, Header};
use crate::slots::Slot;
use crate::tape::{self, Layout, Manifest, Tapes};

/// What was read.
#[derive(Debug)]
pub struct ReadResult {
    pub header: FileHeader,
    pub size: u64,
    pub blocks: u64,
    pub sha256: String,
    /// `manifest` (size, every block's MD5 and the SHA-256 checked) or `listing` (a file
    /// written by Amanda: only the block sequence could be checked).
    pub verified: &'static str,
    pub seconds: f64,
}

/// A block GET in flight.
type Fetch = JoinHandle<Result<Option<Bytes>, Failure>>;

/// One object, or one byte range of an object, to fetch, and the MD5 it must have.
struct Piece {
    key: String,
    /// Bytes `first..=last` of a multipart (`-mp.data`) object; `None`: the whole object.
    range: Option<(u64, u64)>,
    md5: Option<String>,
}

/// Writes file `file` of the tape in `slot` to stdout.
pub async fn read_file(
    tapes: &Tapes,
    slot: &Slot,
    label: &str,
    file: u32,
    raw: bool,
    cancellation: &Cancellation,
) -> Result<ReadResult, Failure> {
    let started = Instant::now();
    let Some(header_bytes) = tapes
        .get(&slot.bucket, &tape::key_filestart(slot, file))
        .await?
    else {
        let layout = Layout::of(
            slot,
            &tapes.list(&slot.bucket, &tape::files_prefix(slot)).await?,
        );
        return Err(Failure::new(
            ExitCode::NotFound,
            format!(
                "tape {label} has no file {file} (it holds {} files)",
                layout.files().len()
            ),
        ));
    };
    let header = match header::parse(&header_bytes) {
        Ok(Header::File(h)) => h,
        Ok(_) => {
            return Err(Failure::verify(format!(
                "file {file} of tape {label}: its header is not a dump file header"
            )));
        }
        Err(err) => {
            return Err(Failure::verify(format!(
                "file {file} of tape {label}: {err}"
            )));
        }
    };
    let manifest = tapes.manifest(slot, file).await?;
    let (pieces, verified) = match &manifest {
        Some(m) => {
            if m.block_md5.len() as u64 != m.blocks {
                return Err(Failure::verify(format!(
                    "file {file} of tape {label}: the manifest lists {} block MD5s for {} blocks",
                    m.block_md5.len(),
                    m.blocks
                )));
            }
            let pieces = (0..m.blocks)
                .map(|b| Piece {
                    key: tape::key_block(slot, file, b),
                    range: None,
                    md5: Some(m.block_md5[b as usize].clone()),
                })
                .collect::<Vec<_>>();
            (pieces, "manifest")
        }
        None => (amanda_pieces(tapes, slot, label, file).await?, "listing"),
    };
    let blocks = pieces.len() as u64;

    // The writer thread: stdout in order, hashing as it goes.
    let (tx, rx) = sync_channel::<Bytes>(1);
    let prefix = if raw {
        Some(header::padded(&header_bytes))
    } else {
        None
    };
    let writer = std::thread::spawn(move || -> std::io::Result<(String, u64, bool)> {
        let stdout = std::io::stdout();
        let mut out = stdout.lock();
        let mut hasher = Sha256::new();
        let mut size = 0u64;
        if let Some(prefix) = prefix
            && !s3pipe::output::write_stdout(&mut out, &prefix)?
        {
            return Ok((String::new(), 0, false));
        }
        for data in rx {
            hasher.update(&data);
            size += data.len() as u64;
            if !s3pipe::output::write_stdout(&mut out, &data)? {
                return Ok((hex::encode(hasher.finalize()), size, false));
            }
        }
        out.flush()?;
        Ok((hex::encode(hasher.finalize()), size, true))
    });

    let threads = tapes.device.threads_recovery.max(1);
    let mut pending: VecDeque<(usize, Fetch)> = VecDeque::new();
    let mut next = 0;
    let mut reader_gone = false;
    let total_pieces = pieces.len();
    let started_recv = Instant::now();
    let mut received = 0u64;
    while next < total_pieces || !pending.is_empty() {
        while pending.len() < threads && next < total_pieces {
            let tapes = tapes.clone();
            let bucket = slot.bucket.clone();
            let key = pieces[next].key.clone();
            let range = pieces[next].range;
            pending.push_back((
                next,
                tokio::spawn(async move {
                    match range {
                        Some(range) => get_range(&tapes, &bucket, &key, range).await,
                        None => tapes.get(&bucket, &key).await,
                    }
                }),
            ));
            next += 1;
        }
        let Some((index, handle)) = pending.pop_front() else {
            break;
        };
        let result = tokio::select! {
            result = handle => result,
            _ = cancellation.token().cancelled() => {
                for (_, h) in pending { h.abort(); }
                return Err(cancellation.failure("the restore is incomplete"));
            }
        };
        let data = result.map_err(|err| {
            Failure::new(
                ExitCode::Failure,
                format!("a block download stopped: {err}"),
            )
        })??;
        let Some(data) = data else {
            return Err(Failure::verify(format!(
                "block {index} of file {file} on tape {label} is missing ({} has {total_pieces} blocks): the restore is incomplete",
                if verified == "manifest" {
                    "the manifest says the file"
                } else {
                    "the listing says the file"
                }
            )));
        };
        if let Some(expected) = &pieces[index].md5 {
            let (actual, _) = tape::md5_base64(&data);
            if &actual != expected {
                return Err(Failure::verify(format!(
                    "block {index} of file {file} on tape {label} is damaged: MD5 {actual}, the manifest says {expected}"
                )));
            }
        }
        received += data.len() as u64;
        if let Some(limit) = tapes.device.max_recv_speed {
            let speed = limit.saturating_mul(threads as u64).max(1);
            let due = std::time::Duration::from_secs_f64(received as f64 / speed as f64);
            if let Some(wait) = due.checked_sub(started_recv.elapsed()) {
                tokio::time::sleep(wait).await;
            }
        }
        if tx.send(data).is_err() {
            reader_gone = true;
            break;
        }
    }
    drop(tx);
    let (sha256, size, complete) = tokio::task::spawn_blocking(move || writer.join())
        .await
        .map_err(|err| Failure::new(ExitCode::Failure, err.to_string()))?
        .map_err(|_| Failure::new(ExitCode::Failure, "the output thread panicked"))?
        .map_err(|err| Failure::new(ExitCode::Failure, format!("cannot write to stdout: {err}")))?;
    if reader_gone || !complete {
        // The reader of stdout went away (| head): an ordinary end, nothing to verify.
        return Ok(ReadResult {
            header,
            size,
            blocks,
            sha256,
            verified: "none",
            seconds: started.elapsed().as_secs_f64(),
        });
    }
    if let Some(Manifest {
        size: want_size,
        sha256: want_sha,
        ..
    }) = &manifest
        && (*want_size != size || *want_sha != sha256)
    {
        return Err(Failure::verify(format!(
            "file {file} of tape {label} does not match its manifest: read {size} bytes with SHA-256 {sha256}, written {want_size} bytes with {want_sha}"
        )));
    }
    Ok(ReadResult {
        header,
        size,
        blocks,
        sha256,
        verified,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// The pieces of a file Amanda wrote: its `-mp.data` object, or its blocks 0, 1, 2, ... with a
/// gap before later blocks refused (Amanda would stop there without a word).
///
/// An `-mp.data` object holds the whole file (S3_MULTI_PART_UPLOAD), which can be any size up
/// to the tape length: it is read in `BLOCK_SIZE` ranges, in parallel and in order like blocks,
/// so that memory stays at a few blocks rather than the size of the file.
async fn amanda_pieces(
    tapes: &Tapes,
    slot: &Slot,
    label: &str,
    file: u32,
) -> Result<Vec<Piece>, Failure> {
    let listing = tapes
        .list(&slot.bucket, &tape::file_prefix(slot, file))
        .await?;
    let layout = Layout::of(slot, &listing);
    if let Some(size) = layout.multipart_size(file) {
        let key = tape::key_multipart(slot, file);
        let step = tapes.device.block_size.max(1);
        tracing::info!(
            file,
            size,
            "no manifest (written by Amanda with S3_MULTI_PART_UPLOAD): read in ranges, the content is not checked"
        );
        return Ok((0..size.div_ceil(step))
            .map(|i| Piece {
                key: key.clone(),
                range: Some((i * step, ((i + 1) * step).min(size) - 1)),
                md5: None,
            })
            .collect());
    }
    let blocks = layout.blocks(file);
    for (expected, (block, _)) in blocks.iter().enumerate() {
        if *block != expected as u64 {
            return Err(Failure::verify(format!(
                "file {file} of tape {label}: block {expected} is missing but block {block} exists; Amanda would silently stop at the gap, the restore would be incomplete"
            )));
        }
    }
    tracing::info!(
        file,
        "no manifest (written by Amanda): the block sequence is checked, not the content"
    );
    Ok(blocks
        .iter()
        .map(|(b, _)| Piece {
            key: tape::key_block(slot, file, *b),
            range: None,
            md5: None,
        })
        .collect())
}

/// GETs bytes `first..=last` of an object; `None` when the object is gone. A shorter answer (the
/// object shrank since it was listed) is an error, never a quiet end.
async fn get_range(
    tapes: &Tapes,
    bucket: &str,
    key: &str,
    (first, last): (u64, u64),
) -> Result<Option<Bytes>, Failure> {
    let want = last - first + 1;
    let mut rounds = 0;
    loop {
        rounds += 1;
        let output = match tapes
            .client
            .get_object()
            .bucket(bucket)
            .key(key)
            .range(format!("bytes={first}-{last}"))
            .send()
            .await
        {
            Ok(output) => output,
            Err(err)
                if err.as_service_error().is_some_and(|e| e.is_no_such_key())
                    || err.raw_response().map(|r| r.status().as_u16()) == Some(404) =>
            {
                return Ok(None);
            }
            Err(err) => {
                return Err(Failure::from_sdk(
                    format!("cannot read bytes {first}-{last} of s3://{bucket}/{key}"),
                    &err,
                ));
            }
        };
        match output.body.collect().await {
            Ok(body) => {
                let data = body.into_bytes();
                if data.len() as u64 != want {
                    return Err(Failure::verify(format!(
                        "s3://{bucket}/{key}: asked for bytes {first}-{last}, got {} bytes: the object changed while it was read",
                        data.len()
                    )));
                }
                return Ok(Some(data));
            }
            Err(err) if rounds < 4 => {
                tracing::warn!(key, "body broke off ({err}); reading it again");
            }
            Err(err) => {
                return Err(Failure::new(
                    ExitCode::Network,
                    format!("cannot read bytes {first}-{last} of s3://{bucket}/{key}: {err}"),
                ));
            }
        }
    }
}
