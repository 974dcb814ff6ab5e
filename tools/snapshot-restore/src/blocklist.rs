//! The s3pipe block list: the blocks of a snapshot that changed since its parent, as one stream
//! that can be stored (`| s3-put-multipart`) and later applied over the parent's image.
//!
//! Format, version 1 (all integers big-endian):
//!
//! ```text
//! "S3PIPE-BLOCKLIST 1\n"
//! one line of JSON: {"snapshot_id", "parent_snapshot_id", "block_size", "volume_size", "blocks"}
//! `blocks` records, in increasing index order:
//!     u64 block index, then one byte:
//!     'D' followed by block_size bytes: the block's new contents
//!     'Z': the block is now all zeros (absent from the newer snapshot)
//! the end record: u64 0xFFFF_FFFF_FFFF_FFFF, 'E', then the 32-byte SHA-256 of every byte before it
//! ```
//!
//! The end record makes a truncated or damaged list detectable: `snapshot-restore apply` refuses
//! anything that does not end with a matching digest (exit 5). Applying the list of snapshot B
//! since A to an image of A gives an image of B; `volume_size` lets the image grow.

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;

use bytes::Bytes;
use clap::Args;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use s3pipe::event::{Event, EventSink};
use s3pipe::{ExitCode, Failure};

use crate::TOOL;
use crate::blocks::{BLOCK_SIZE, Listing, Outcome, Piece, Writer};

pub const MAGIC: &[u8] = b"S3PIPE-BLOCKLIST 1\n";
const END_INDEX: u64 = u64::MAX;

/// The JSON header line.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Header {
    pub snapshot_id: String,
    pub parent_snapshot_id: String,
    pub block_size: u64,
    /// Size of the newer snapshot's volume, in bytes.
    pub volume_size: u64,
    pub blocks: u64,
}

/// Writes a block list from fetched blocks (empty data means a zero record).
pub async fn write(
    out: Box<dyn std::io::Write + Send>,
    parent: &str,
    snapshot_id: &str,
    listing: &Listing,
    stream: impl futures::Stream<Item = Result<(u64, Bytes), Failure>>,
) -> Result<Outcome, Failure> {
    let writer = Writer::spawn(out, false);
    let mut hasher = Sha256::new();
    let header = Header {
        snapshot_id: snapshot_id.to_string(),
        parent_snapshot_id: parent.to_string(),
        block_size: BLOCK_SIZE,
        volume_size: listing.volume_size_gib * 1024 * 1024 * 1024,
        blocks: listing.blocks.len() as u64,
    };
    let mut head = MAGIC.to_vec();
    head.extend(
        serde_json::to_vec(&header).map_err(|e| Failure::new(ExitCode::Failure, e.to_string()))?,
    );
    head.push(b'\n');
    let mut open = true;
    let mut send = |piece: Bytes| {
        hasher.update(&piece);
        writer.send(Piece::Data(piece))
    };
    open &= send(Bytes::from(head)).await;
    let mut stream = std::pin::pin!(stream);
    while open {
        let Some(item) = stream.next().await else {
            break;
        };
        let (index, data) = item?;
        let mut record = index.to_be_bytes().to_vec();
        if data.is_empty() {
            record.push(b'Z');
            open &= send(Bytes::from(record)).await;
        } else {
            record.push(b'D');
            open &= send(Bytes::from(record)).await;
            open &= send(data).await;
        }
    }
    if open {
        let mut end = END_INDEX.to_be_bytes().to_vec();
        end.push(b'E');
        hasher.update(&end);
        end.extend_from_slice(&hasher.finalize());
        writer.send(Piece::Data(Bytes::from(end))).await;
    }
    let (bytes, _, reader_stayed) = writer.finish()?;
    Ok(Outcome {
        bytes,
        reader_stayed,
    })
}

#[derive(Debug, Clone, Args)]
pub struct ApplyArgs {
    /// Image file or block device holding the parent snapshot's image, updated in place
    #[arg(long, value_name = "FILE|DEVICE")]
    pub target: PathBuf,

    /// Block list to read [default: stdin]
    #[arg(long, value_name = "FILE")]
    pub input: Option<PathBuf>,
}

/// `snapshot-restore apply`: a block list written over the parent's image.
pub async fn apply(args: ApplyArgs) -> Result<(), Failure> {
    let summary = tokio::task::spawn_blocking(move || apply_blocking(&args))
        .await
        .map_err(|err| Failure::new(ExitCode::Failure, err.to_string()))??;
    EventSink::stderr()
        .emit(&summary)
        .map_err(|err| Failure::new(ExitCode::Failure, format!("cannot write the event: {err}")))
}

fn apply_blocking(args: &ApplyArgs) -> Result<Event, Failure> {
    let input: Box<dyn Read> = match &args.input {
        Some(path) => Box::new(
            File::open(path)
                .map_err(|err| Failure::usage(format!("cannot open {}: {err}", path.display())))?,
        ),
        None => Box::new(std::io::stdin().lock()),
    };
    let mut input = HashingReader {
        inner: BufReader::with_capacity(1 << 20, input),
        hasher: Sha256::new(),
    };
    let bad = |what: &str| Failure::verify(format!("not a valid s3pipe block list: {what}"));
    let mut magic = vec![0u8; MAGIC.len()];
    input.read_exact(&mut magic).map_err(|_| bad("too short"))?;
    if magic != MAGIC {
        return Err(bad("wrong magic line"));
    }
    let mut line = String::new();
    input
        .read_line(&mut line)
        .map_err(|_| bad("no header line"))?;
    let header: Header =
        serde_json::from_str(line.trim()).map_err(|e| bad(&format!("header: {e}")))?;
    if header.block_size != BLOCK_SIZE {
        return Err(bad("unsupported block size"));
    }
    let target = File::options()
        .write(true)
        .open(&args.target)
        .map_err(|err| Failure::usage(format!("cannot open {}: {err}", args.target.display())))?;
    let meta = target
        .metadata()
        .map_err(|err| Failure::usage(format!("cannot stat {}: {err}", args.target.display())))?;
    if meta.file_type().is_file() && meta.len() < header.volume_size {
        target.set_len(header.volume_size).map_err(|err| {
            Failure::new(ExitCode::Failure, format!("cannot grow the image: {err}"))
        })?;
    }
    let write_err = |err: std::io::Error| {
        Failure::new(
            ExitCode::Failure,
            format!("cannot write {}: {err}", args.target.display()),
        )
    };
    let zeros = vec![0u8; BLOCK_SIZE as usize];
    let mut block = vec![0u8; BLOCK_SIZE as usize];
    let mut applied = 0u64;
    loop {
        let mut head = [0u8; 9];
        input
            .read_exact(&mut head)
            .map_err(|_| bad("truncated (no end record)"))?;
        let index = u64::from_be_bytes(head[..8].try_into().expect("8 bytes"));
        match (index, head[8]) {
            (END_INDEX, b'E') => break,
            (index, kind @ (b'D' | b'Z')) => {
                let offset = index
                    .checked_mul(BLOCK_SIZE)
                    .filter(|o| o + BLOCK_SIZE <= header.volume_size)
                    .ok_or_else(|| bad("block index past the volume's end"))?;
                if kind == b'D' {
                    input
                        .read_exact(&mut block)
                        .map_err(|_| bad("truncated block"))?;
                    target.write_all_at(&block, offset).map_err(write_err)?;
                } else {
                    target.write_all_at(&zeros, offset).map_err(write_err)?;
                }
                applied += 1;
            }
            _ => return Err(bad("unknown record kind")),
        }
    }
    let computed = input.hasher.clone().finalize();
    let mut digest = [0u8; 32];
    input
        .inner
        .read_exact(&mut digest)
        .map_err(|_| bad("truncated digest"))?;
    if computed.as_slice() != digest {
        return Err(Failure::verify(format!(
            "block list digest mismatch: the list is damaged and {} may now be inconsistent",
            args.target.display()
        )));
    }
    if applied != header.blocks {
        return Err(bad("block count differs from the header"));
    }
    target.sync_all().map_err(write_err)?;
    Ok(Event::new(TOOL, "blocks_applied")
        .with("snapshot_id", header.snapshot_id)
        .with("parent_snapshot_id", header.parent_snapshot_id)
        .with("blocks", applied)
        .with("target", args.target.display().to_string()))
}

/// Hashes what is read through it, for the end record's digest.
struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
}

impl<R: BufRead> HashingReader<R> {
    fn read_exact(&mut self, buf: &mut [u8]) -> std::io::Result<()> {
        self.inner.read_exact(buf)?;
        self.hasher.update(&*buf);
        Ok(())
    }

    fn read_line(&mut self, line: &mut String) -> std::io::Result<usize> {
        let n = self.inner.read_line(line)?;
        self.hasher.update(line.as_bytes());
        Ok(n)
    }
}
