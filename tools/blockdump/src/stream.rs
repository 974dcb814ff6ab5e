//! The compressed stream: chunks compressed in parallel, written in order, framed so that standard
//! tools decode it and blockdump can tell a complete stream from a cut one.
//!
//! Every chunk (`--chunk-size`, 1 MiB by default) becomes its own zstd frame or gzip member. The
//! formats define a stream of concatenated frames (members) as the concatenation of their
//! contents, so `zstd -d` and `gunzip` give back the source byte for byte, and the chunks can be
//! compressed by any number of threads with no coordination but putting them back in order.
//! A chunk of zeros is never compressed: its frame is computed once and copied, which is what
//! makes the empty half of a volume nearly free.
//!
//! Around the data, blockdump puts a marker frame at the start and an end frame carrying the size
//! and SHA-256 of the content: a zstd *skippable* frame, or an empty gzip member whose header
//! carries the record in an extra field. `zstd -d` skips the first kind and `gunzip` decodes the
//! second to nothing, so they cost the standard tools nothing; for blockdump's restore they turn
//! "the stream stopped at a frame boundary" from a silent truncation into an error. Uncompressed
//! output (`--compress none`) is the bare content and has neither.

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Mutex};
use std::thread;

use clap::ValueEnum;
use flate2::Compression;
use flate2::write::GzEncoder;
use sha2::{Digest, Sha256};

/// How the stream is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Codec {
    /// zstd frames (decode with `zstd -d`)
    Zstd,
    /// gzip members (decode with `gunzip`; pigz-compatible)
    Gzip,
    /// no compression: the bare image or tar archive
    None,
}

impl Codec {
    pub fn name(self) -> &'static str {
        match self {
            Codec::Zstd => "zstd",
            Codec::Gzip => "gzip",
            Codec::None => "none",
        }
    }

    /// The level used when `--level` is not given: each format's own command-line default.
    pub fn default_level(self) -> i32 {
        match self {
            Codec::Zstd => 3,
            Codec::Gzip => 6,
            Codec::None => 0,
        }
    }

    /// Accepted levels, as the standard tools accept them.
    pub fn levels(self) -> std::ops::RangeInclusive<i32> {
        match self {
            Codec::Zstd => 1..=19,
            Codec::Gzip => 1..=9,
            Codec::None => 0..=0,
        }
    }
}

/// What the content is: a raw image or a tar archive. Carried in the markers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Content {
    Raw,
    Tar,
}

impl Content {
    pub fn name(self) -> &'static str {
        match self {
            Content::Raw => "raw",
            Content::Tar => "files",
        }
    }
}

/// The record inside the start and end markers: magic, version/kind byte, content kind, size and
/// SHA-256 (zero in the start marker).
pub const RECORD_LEN: usize = 52;
const MAGIC: &[u8; 9] = b"BLOCKDUMP";
const KIND_START: u8 = 0;
const KIND_END: u8 = 1;
/// zstd skippable frame magic (0x184D2A50..5F are all skippable; this one is ours).
const ZSTD_SKIPPABLE: u32 = 0x184D_2A5B;
/// gzip extra subfield id for the record.
const GZIP_SUBFIELD: [u8; 2] = *b"BD";

fn record(kind: u8, content: Content, size: u64, sha256: &[u8; 32]) -> [u8; RECORD_LEN] {
    let mut rec = [0u8; RECORD_LEN];
    rec[..9].copy_from_slice(MAGIC);
    rec[9] = 1; // format version
    rec[10] = kind;
    rec[11] = match content {
        Content::Raw => 0,
        Content::Tar => 1,
    };
    rec[12..20].copy_from_slice(&size.to_le_bytes());
    rec[20..52].copy_from_slice(sha256);
    rec
}

/// A start or end marker as it appears in the compressed stream.
pub fn marker(codec: Codec, rec: &[u8; RECORD_LEN]) -> Vec<u8> {
    let mut out = Vec::new();
    match codec {
        Codec::Zstd => {
            out.extend_from_slice(&ZSTD_SKIPPABLE.to_le_bytes());
            out.extend_from_slice(&(RECORD_LEN as u32).to_le_bytes());
            out.extend_from_slice(rec);
        }
        Codec::Gzip => {
            // RFC 1952 header with FEXTRA, no mtime, OS unknown; one subfield "BD"; then an
            // empty final fixed-Huffman deflate block (03 00), CRC32 0 and ISIZE 0.
            out.extend_from_slice(&[0x1f, 0x8b, 8, 0x04, 0, 0, 0, 0, 0, 0xff]);
            out.extend_from_slice(&((RECORD_LEN + 4) as u16).to_le_bytes());
            out.extend_from_slice(&GZIP_SUBFIELD);
            out.extend_from_slice(&(RECORD_LEN as u16).to_le_bytes());
            out.extend_from_slice(rec);
            out.extend_from_slice(&[0x03, 0x00, 0, 0, 0, 0, 0, 0, 0, 0]);
        }
        Codec::None => {}
    }
    out
}

/// Length of a marker in the compressed stream.
pub fn marker_len(codec: Codec) -> usize {
    marker(codec, &[0; RECORD_LEN]).len()
}

/// The start marker written before any data.
pub fn start_marker(codec: Codec, content: Content) -> Vec<u8> {
    marker(codec, &record(KIND_START, content, 0, &[0; 32]))
}

/// The end marker, with the content's size and SHA-256.
pub fn end_marker(codec: Codec, content: Content, size: u64, sha256: &[u8; 32]) -> Vec<u8> {
    marker(codec, &record(KIND_END, content, size, sha256))
}

/// A marker found in a stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Marker {
    pub end: bool,
    pub content: Content,
    pub size: u64,
    pub sha256: [u8; 32],
}

/// Parses `bytes` (exactly one marker's length) as a marker of `codec`, if it is one.
pub fn parse_marker(codec: Codec, bytes: &[u8]) -> Option<Marker> {
    if codec == Codec::None || bytes.len() != marker_len(codec) {
        return None;
    }
    let offset = match codec {
        Codec::Zstd => 8,
        _ => 16,
    };
    let rec: &[u8; RECORD_LEN] = bytes.get(offset..offset + RECORD_LEN)?.try_into().ok()?;
    if &rec[..9] != MAGIC || rec[9] != 1 || rec[10] > 1 || rec[11] > 1 {
        return None;
    }
    // The whole marker must be byte for byte what we would write for this record.
    if marker(codec, rec) != bytes {
        return None;
    }
    let mut size = [0u8; 8];
    size.copy_from_slice(&rec[12..20]);
    let mut sha256 = [0u8; 32];
    sha256.copy_from_slice(&rec[20..52]);
    Some(Marker {
        end: rec[10] == KIND_END,
        content: if rec[11] == 1 {
            Content::Tar
        } else {
            Content::Raw
        },
        size: u64::from_le_bytes(size),
        sha256,
    })
}

/// One worker's compressor.
enum Compressor {
    Zstd(Box<zstd::bulk::Compressor<'static>>),
    Gzip(Compression),
    Copy,
}

impl Compressor {
    fn new(codec: Codec, level: i32) -> io::Result<Self> {
        Ok(match codec {
            Codec::Zstd => {
                let mut c = zstd::bulk::Compressor::new(level)?;
                // A per-frame checksum lets `zstd -d` (and restore) catch a corrupted frame.
                c.set_parameter(zstd::zstd_safe::CParameter::ChecksumFlag(true))?;
                Compressor::Zstd(Box::new(c))
            }
            Codec::Gzip => Compressor::Gzip(Compression::new(level.clamp(1, 9) as u32)),
            Codec::None => Compressor::Copy,
        })
    }

    fn compress(&mut self, data: &[u8], out: &mut Vec<u8>) -> io::Result<()> {
        out.clear();
        match self {
            Compressor::Zstd(c) => {
                out.reserve(zstd::zstd_safe::compress_bound(data.len()));
                c.compress_to_buffer(data, out)?;
            }
            Compressor::Gzip(level) => {
                out.reserve(data.len() / 2 + 64);
                let mut encoder = GzEncoder::new(std::mem::take(out), *level);
                encoder.write_all(data)?;
                *out = encoder.finish()?;
            }
            Compressor::Copy => out.extend_from_slice(data),
        }
        Ok(())
    }
}

/// Content read into a buffer: the bytes from `start` on. A chunk read with `O_DIRECT` starts
/// where its buffer is aligned in memory, which for a `Vec<u8>` is some way in; keeping the offset
/// spares copying every chunk to the front.
struct Chunk {
    buf: Vec<u8>,
    start: usize,
}

impl std::ops::Deref for Chunk {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.buf[self.start..]
    }
}

/// A chunk handed to the workers.
enum Payload {
    Data(Arc<Chunk>),
    Zero(usize),
}

struct Job {
    seq: u64,
    payload: Payload,
}

/// Buffers going round between the stages, so a 1 MiB chunk is not a fresh allocation (and a
/// round of page faults) each time.
#[derive(Default, Clone)]
struct Pool(Arc<Mutex<Vec<Vec<u8>>>>);

impl Pool {
    fn take(&self, capacity: usize) -> Vec<u8> {
        let mut buf = self
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pop()
            .unwrap_or_default();
        buf.clear();
        if buf.capacity() < capacity {
            buf.reserve(capacity);
        }
        buf
    }

    fn give(&self, buf: Vec<u8>) {
        let mut pool = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if pool.len() < 64 {
            pool.push(buf);
        }
    }
}

/// A slice of zeros to compare chunks against and to hash zero chunks from.
pub fn zeros(len: usize) -> &'static [u8] {
    static ZEROS: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    let all = ZEROS.get_or_init(|| vec![0u8; 8 << 20]);
    &all[..len.min(all.len())]
}

/// Whether `data` is all zeros (a memcmp against a zero page run, which is vectorised).
pub fn is_zero(data: &[u8]) -> bool {
    data.chunks(8 << 20).all(|part| part == zeros(part.len()))
}

/// Settings of a compression pipeline.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    pub codec: Codec,
    pub level: i32,
    pub threads: usize,
    pub chunk_size: usize,
}

/// The sending end of the pipeline: the source pushes content in, in order.
///
/// It hashes and counts the content, cuts it into chunks and hands them to the workers. As an
/// [`io::Write`] it takes a byte stream (the tar archive); [`ChunkSink::push_zeros`] takes a run
/// of zeros without any buffer (a hole in the source).
pub struct ChunkSink {
    settings: Settings,
    jobs: Option<SyncSender<Job>>,
    pool: Pool,
    buf: Vec<u8>,
    seq: u64,
    /// To the hashing thread, in order. Hashing has a thread of its own so that the SHA-256 of a
    /// run of zeros (the one cost zeros cannot avoid) overlaps with compressing the data around it.
    hashes: Option<SyncSender<Payload>>,
    pub size: u64,
    pub zero_bytes: u64,
    /// Of `zero_bytes`, those pushed as holes: never read.
    pub hole_bytes: u64,
    /// Set when a stage behind us failed: the error to report instead of "channel closed".
    failed: Arc<Mutex<Option<io::Error>>>,
}

impl std::fmt::Debug for ChunkSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChunkSink")
            .field("size", &self.size)
            .finish()
    }
}

fn closed(failed: &Arc<Mutex<Option<io::Error>>>) -> io::Error {
    match failed.lock().unwrap_or_else(|p| p.into_inner()).take() {
        Some(err) => err,
        None => io::Error::new(io::ErrorKind::BrokenPipe, "the output stage stopped"),
    }
}

impl ChunkSink {
    fn send(&mut self, payload: Payload) -> io::Result<()> {
        // A stage that failed (a worker, the writer) stops the source at once, rather than
        // letting the writer hold every later chunk while it waits for the missing one.
        if self
            .failed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some()
        {
            return Err(closed(&self.failed));
        }
        let for_hash = match &payload {
            Payload::Data(data) => Payload::Data(Arc::clone(data)),
            Payload::Zero(n) => Payload::Zero(*n),
        };
        if let Some(hashes) = &self.hashes {
            hashes
                .send(for_hash)
                .map_err(|_| io::Error::other("the hashing thread stopped"))?;
        }
        let job = Job {
            seq: self.seq,
            payload,
        };
        self.seq += 1;
        let Some(jobs) = &self.jobs else {
            return Err(closed(&self.failed));
        };
        jobs.send(job).map_err(|_| closed(&self.failed))
    }

    /// Sends the buffered partial chunk, if any.
    fn flush_buf(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let buf = std::mem::replace(&mut self.buf, self.pool.take(self.settings.chunk_size));
        if is_zero(&buf) {
            let len = buf.len();
            self.zero_bytes += len as u64;
            self.pool.give(buf);
            self.send(Payload::Zero(len))
        } else {
            self.send(Payload::Data(Arc::new(Chunk { buf, start: 0 })))
        }
    }

    /// A buffer of `chunk_size` capacity to read the next chunk into (for [`Self::push_chunk`]).
    pub fn buffer(&self) -> Vec<u8> {
        self.pool.take(self.settings.chunk_size)
    }

    /// A buffer to read `len` bytes into at an address aligned to `align` (a power of two), as
    /// `O_DIRECT` needs: the buffer and where in it the aligned `len` bytes start. Hand both to
    /// [`Self::push_chunk_at`].
    pub fn aligned_buffer(&self, len: usize, align: usize) -> (Vec<u8>, usize) {
        let mut buf = self.pool.take(self.settings.chunk_size.max(len) + align);
        // The capacity is reserved, so growing the length below never moves the allocation.
        let start = buf.as_ptr().align_offset(align);
        buf.resize(start + len, 0);
        (buf, start)
    }

    /// Pushes one chunk read by the caller (no larger than the chunk size); zeros are detected.
    pub fn push_chunk(&mut self, data: Vec<u8>) -> io::Result<()> {
        self.push_chunk_at(data, 0)
    }

    /// Pushes the bytes of `buf` from `start` on as one chunk (see [`Self::aligned_buffer`]).
    pub fn push_chunk_at(&mut self, buf: Vec<u8>, start: usize) -> io::Result<()> {
        self.flush_buf()?;
        let chunk = Chunk { buf, start };
        let len = chunk.len();
        self.size += len as u64;
        if is_zero(&chunk) {
            self.zero_bytes += len as u64;
            self.pool.give(chunk.buf);
            self.send(Payload::Zero(len))
        } else {
            self.send(Payload::Data(Arc::new(chunk)))
        }
    }

    /// Pushes `len` zero bytes that were never read (a hole).
    pub fn push_zeros(&mut self, mut len: u64) -> io::Result<()> {
        self.flush_buf()?;
        self.zero_bytes += len;
        self.hole_bytes += len;
        self.size += len;
        while len > 0 {
            let n = len.min(self.settings.chunk_size as u64) as usize;
            self.send(Payload::Zero(n))?;
            len -= n as u64;
        }
        Ok(())
    }

    pub fn chunk_size(&self) -> usize {
        self.settings.chunk_size
    }
}

impl Write for ChunkSink {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let room = self.settings.chunk_size - self.buf.len();
        let n = room.min(data.len());
        self.buf.extend_from_slice(&data[..n]);
        self.size += n as u64;
        if self.buf.len() == self.settings.chunk_size {
            self.flush_buf()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// What a finished pipeline reports.
#[derive(Debug, Clone)]
pub struct Summary {
    pub size: u64,
    pub zero_bytes: u64,
    pub hole_bytes: u64,
    pub sha256: [u8; 32],
    pub bytes_out: u64,
}

/// Runs `produce` with a [`ChunkSink`] whose chunks are compressed by `settings.threads` workers
/// and written to `output` in order, between the start and end markers.
pub fn run<W, F, T>(
    settings: Settings,
    content: Content,
    mut output: W,
    produce: F,
) -> io::Result<(T, Summary)>
where
    W: Write + Send + 'static,
    F: FnOnce(&mut ChunkSink) -> io::Result<T>,
{
    let workers = settings.threads.max(1);
    let depth = workers * 2 + 2;
    let (job_tx, job_rx) = sync_channel::<Job>(depth);
    let (done_tx, done_rx) = sync_channel::<(u64, Vec<u8>)>(depth);
    let job_rx = Arc::new(Mutex::new(job_rx));
    let in_pool = Pool::default();
    let out_pool = Pool::default();
    let failed: Arc<Mutex<Option<io::Error>>> = Arc::default();

    // The frame of a whole chunk of zeros, computed once, at the format's highest level since
    // it costs nothing more (gzip -1 would leave 1 GiB of zeros at 10 MiB, -9 at 1 MiB).
    let zero_frame = {
        let mut c = Compressor::new(settings.codec, *settings.codec.levels().end())?;
        let mut out = Vec::new();
        c.compress(zeros(settings.chunk_size), &mut out)?;
        Arc::new(out)
    };

    let mut handles = Vec::new();
    for _ in 0..workers {
        let job_rx = Arc::clone(&job_rx);
        let done_tx = done_tx.clone();
        let in_pool = in_pool.clone();
        let out_pool = out_pool.clone();
        let zero_frame = Arc::clone(&zero_frame);
        let failed = Arc::clone(&failed);
        let mut compressor = Compressor::new(settings.codec, settings.level)?;
        let chunk_size = settings.chunk_size;
        handles.push(thread::spawn(move || {
            loop {
                let job = {
                    let rx = job_rx.lock().unwrap_or_else(|p| p.into_inner());
                    rx.recv()
                };
                let Ok(job) = job else { return };
                let mut out = out_pool.take(0);
                let result = match job.payload {
                    Payload::Zero(len) if len == chunk_size => {
                        out.extend_from_slice(&zero_frame);
                        Ok(())
                    }
                    Payload::Zero(len) => compressor.compress(zeros(len), &mut out),
                    Payload::Data(data) => {
                        let r = compressor.compress(&data, &mut out);
                        if let Ok(chunk) = Arc::try_unwrap(data) {
                            in_pool.give(chunk.buf);
                        }
                        r
                    }
                };
                if let Err(err) = result {
                    *failed.lock().unwrap_or_else(|p| p.into_inner()) = Some(err);
                    return;
                }
                if done_tx.send((job.seq, out)).is_err() {
                    return;
                }
            }
        }));
    }
    drop(done_tx);

    let writer_failed = Arc::clone(&failed);
    let writer_pool = out_pool.clone();
    let start = start_marker(settings.codec, content);
    let writer = thread::spawn(move || -> io::Result<(W, u64)> {
        let result = write_in_order(&mut output, &start, done_rx, &writer_pool);
        match result {
            Ok(n) => Ok((output, n)),
            Err(err) => {
                let copy = io::Error::new(err.kind(), err.to_string());
                *writer_failed.lock().unwrap_or_else(|p| p.into_inner()) = Some(err);
                Err(copy)
            }
        }
    });

    let (hash_tx, hash_rx) = sync_channel::<Payload>(64);
    let hash_pool = in_pool.clone();
    let hasher = thread::spawn(move || {
        let mut hasher = Sha256::new();
        for payload in hash_rx {
            match payload {
                Payload::Zero(n) => hasher.update(zeros(n)),
                Payload::Data(data) => {
                    hasher.update(&data[..]);
                    if let Ok(chunk) = Arc::try_unwrap(data) {
                        hash_pool.give(chunk.buf);
                    }
                }
            }
        }
        let digest: [u8; 32] = hasher.finalize().into();
        digest
    });

    let mut sink = ChunkSink {
        settings,
        jobs: Some(job_tx),
        pool: in_pool.clone(),
        buf: in_pool.take(settings.chunk_size),
        seq: 0,
        hashes: Some(hash_tx),
        size: 0,
        zero_bytes: 0,
        hole_bytes: 0,
        failed: Arc::clone(&failed),
    };
    let produced = produce(&mut sink).and_then(|value| sink.flush_buf().map(|()| value));
    sink.jobs = None; // closes the job channel: the workers finish, then the writer
    sink.hashes = None;
    let digest = hasher.join();
    for handle in handles {
        let _ = handle.join();
    }
    let written = writer
        .join()
        .map_err(|_| io::Error::other("the output thread panicked"))?;
    let value = produced?;
    let (mut output, mut bytes_out) = written?;
    if let Some(err) = failed.lock().unwrap_or_else(|p| p.into_inner()).take() {
        return Err(err);
    }
    let sha256 = digest.map_err(|_| io::Error::other("the hashing thread panicked"))?;
    let end = end_marker(settings.codec, content, sink.size, &sha256);
    output.write_all(&end)?;
    output.flush()?;
    bytes_out += end.len() as u64;
    Ok((
        value,
        Summary {
            size: sink.size,
            zero_bytes: sink.zero_bytes,
            hole_bytes: sink.hole_bytes,
            sha256,
            bytes_out,
        },
    ))
}

fn write_in_order<W: Write>(
    output: &mut W,
    start: &[u8],
    done: Receiver<(u64, Vec<u8>)>,
    pool: &Pool,
) -> io::Result<u64> {
    output.write_all(start)?;
    let mut written = start.len() as u64;
    let mut next = 0u64;
    let mut waiting: BTreeMap<u64, Vec<u8>> = BTreeMap::new();
    for (seq, frame) in done {
        waiting.insert(seq, frame);
        while let Some(frame) = waiting.remove(&next) {
            output.write_all(&frame)?;
            written += frame.len() as u64;
            pool.give(frame);
            next += 1;
        }
    }
    if !waiting.is_empty() {
        return Err(io::Error::other("a compression worker stopped early"));
    }
    output.flush()?;
    Ok(written)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::io::Read;

    fn roundtrip(codec: Codec) {
        let settings = Settings {
            codec,
            level: codec.default_level(),
            threads: 3,
            chunk_size: 4096,
        };
        let mut content = Vec::new();
        for i in 0..50_000u32 {
            content.extend_from_slice(format!("line {i}\n").as_bytes());
        }
        content.extend_from_slice(&[0u8; 20000]);
        let data = content.clone();
        let out = Arc::new(Mutex::new(Vec::new()));
        struct Shared(Arc<Mutex<Vec<u8>>>);
        impl Write for Shared {
            fn write(&mut self, b: &[u8]) -> io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let ((), summary) = run(settings, Content::Raw, Shared(out.clone()), |sink| {
            sink.write_all(&data[..1000])?;
            sink.push_zeros(10_000)?;
            sink.write_all(&data[1000..])
        })
        .unwrap();
        let mut expected = data[..1000].to_vec();
        expected.extend_from_slice(&[0u8; 10_000]);
        expected.extend_from_slice(&data[1000..]);
        assert_eq!(summary.size, expected.len() as u64);
        let sha: [u8; 32] = Sha256::digest(&expected).into();
        assert_eq!(summary.sha256, sha);
        let bytes = out.lock().unwrap().clone();
        let mut decoded = Vec::new();
        match codec {
            Codec::Zstd => {
                zstd::stream::read::Decoder::new(&bytes[..])
                    .unwrap()
                    .read_to_end(&mut decoded)
                    .unwrap();
            }
            Codec::Gzip => {
                flate2::read::MultiGzDecoder::new(&bytes[..])
                    .read_to_end(&mut decoded)
                    .unwrap();
            }
            Codec::None => decoded = bytes.clone(),
        }
        assert_eq!(decoded, expected);
        let len = marker_len(codec);
        if codec != Codec::None {
            let start = parse_marker(codec, &bytes[..len]).unwrap();
            assert!(!start.end);
            let end = parse_marker(codec, &bytes[bytes.len() - len..]).unwrap();
            assert!(end.end);
            assert_eq!(end.sha256, sha);
            assert_eq!(end.size, expected.len() as u64);
        }
    }

    #[test]
    fn zstd_roundtrip() {
        roundtrip(Codec::Zstd);
    }

    #[test]
    fn gzip_roundtrip() {
        roundtrip(Codec::Gzip);
    }

    #[test]
    fn none_roundtrip() {
        roundtrip(Codec::None);
    }
}
