//! `blockdump restore`: a stream back onto a device, an image file or a directory.
//!
//! The compression is recognised from the first bytes (zstd and gzip magic, anything else is taken
//! as uncompressed), and the content from the first decoded block: a tar archive has "ustar" at
//! offset 257, anything else is a raw image. So a stream made by plain `dd | gzip` or `tar | zstd`
//! restores as well as one made by blockdump.
//!
//! What is checked: every zstd frame and gzip member carries its own checksum, which the decoders
//! verify; blockdump's own streams also end in a marker with the size and SHA-256 of the content,
//! so a stream cut at a frame boundary, or spliced, fails too; and `--expect-sha256` or
//! `--expect-from` (the dump's events) give a SHA-256 from outside the stream.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Cursor, Read, Seek, SeekFrom};
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use sha2::{Digest, Sha256};

use s3pipe::event::{Event, EventReader, EventSink};
use s3pipe::signals::Cancellation;
use s3pipe::{ExitCode, Failure};

use crate::files;
use crate::stream::{self, Codec, Content};

/// Keeps the last bytes read from the compressed input (where the end marker is) and the first
/// ones (the start marker).
#[derive(Debug, Default)]
struct Ends {
    head: Vec<u8>,
    tail: Vec<u8>,
    total: u64,
}

const KEEP: usize = 256;

struct Recording<R> {
    inner: R,
    ends: Arc<Mutex<Ends>>,
}

impl<R: Read> Read for Recording<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        let mut ends = self.ends.lock().unwrap_or_else(|p| p.into_inner());
        ends.total += n as u64;
        if ends.head.len() < KEEP {
            let room = KEEP - ends.head.len();
            let take = room.min(n);
            ends.head.extend_from_slice(&buf[..take]);
        }
        ends.tail.extend_from_slice(&buf[..n]);
        if ends.tail.len() > 4 * KEEP {
            let cut = ends.tail.len() - KEEP;
            ends.tail.drain(..cut);
        }
        Ok(n)
    }
}

/// Hashes and counts what the decoder produces; `cancellation` stops it.
struct Hashing<R> {
    inner: R,
    hasher: Sha256,
    size: u64,
    cancellation: Cancellation,
    progress: indicatif::ProgressBar,
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.cancellation.is_cancelled() {
            return Err(io::Error::other("cancelled"));
        }
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.size += n as u64;
        self.progress.inc(n as u64);
        Ok(n)
    }
}

/// Reads up to `n` bytes (fewer only at the end of the input).
fn read_up_to(reader: &mut impl Read, n: usize) -> io::Result<Vec<u8>> {
    let mut buf = Vec::with_capacity(n);
    reader.take(n as u64).read_to_end(&mut buf)?;
    Ok(buf)
}

/// Recognises the compression from the magic bytes.
pub fn detect_codec(head: &[u8]) -> Codec {
    if head.starts_with(&[0x28, 0xB5, 0x2F, 0xFD]) || is_zstd_skippable(head) {
        Codec::Zstd
    } else if head.starts_with(&[0x1f, 0x8b]) {
        Codec::Gzip
    } else {
        Codec::None
    }
}

fn is_zstd_skippable(head: &[u8]) -> bool {
    head.len() >= 4 && head[1..4] == [0x2A, 0x4D, 0x18] && head[0] & 0xF0 == 0x50
}

/// Recognises a tar archive from its first block.
pub fn detect_content(first: &[u8]) -> Content {
    if first.len() >= 262 && &first[257..262] == b"ustar" {
        Content::Tar
    } else {
        Content::Raw
    }
}

/// Temporary images being written, for [`remove_partial_files`].
fn partial_files() -> std::sync::MutexGuard<'static, Vec<PathBuf>> {
    static FILES: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());
    FILES.lock().unwrap_or_else(|p| p.into_inner())
}

/// Removes the temporary image of a restore that is stuck (blocked reading a stalled stdin)
/// when the process has to exit without it.
pub fn remove_partial_files() {
    for path in partial_files().drain(..) {
        let _ = fs::remove_file(path);
    }
}

/// Options of a restore.
#[derive(Debug)]
pub struct Plan {
    pub target: PathBuf,
    pub input: Option<PathBuf>,
    pub expect_sha256: Option<String>,
    pub expect_from: Option<PathBuf>,
    pub force: bool,
    pub events: EventSink,
    pub quiet: bool,
}

/// Turns a decoder's error into the failure it means.
fn stream_failure(err: io::Error, codec: Codec, at: u64) -> Failure {
    if err.kind() == io::ErrorKind::UnexpectedEof {
        return Failure::input(format!(
            "the {} stream is truncated: it ends inside a frame after {at} bytes of content",
            codec.name()
        ));
    }
    Failure::verify(format!(
        "the {} stream is corrupted after {at} bytes of content: {err}",
        codec.name()
    ))
}

/// Where the data goes.
enum Target {
    Device(PathBuf),
    Image(PathBuf),
    Directory(PathBuf),
}

/// Runs a restore.
pub fn restore(plan: Plan, cancellation: Cancellation) -> Result<(), Failure> {
    let started = Instant::now();
    let expected = expected_sha256(&plan)?;
    let input: Box<dyn Read + Send> = match &plan.input {
        Some(path) if path != Path::new("-") => Box::new(
            File::open(path)
                .map_err(|err| Failure::input(format!("cannot open {}: {err}", path.display())))?,
        ),
        _ => Box::new(io::stdin()),
    };
    let ends: Arc<Mutex<Ends>> = Arc::default();
    let mut recording = Recording {
        inner: input,
        ends: Arc::clone(&ends),
    };
    let head = read_up_to(&mut recording, 4)
        .map_err(|err| Failure::input(format!("cannot read the stream: {err}")))?;
    if head.is_empty() {
        return Err(Failure::input("the stream is empty"));
    }
    let codec = detect_codec(&head);
    let compressed = Cursor::new(head).chain(recording);
    let decoder: Box<dyn Read> = match codec {
        Codec::Zstd => Box::new(
            zstd::stream::read::Decoder::new(compressed)
                .map_err(|err| Failure::new(ExitCode::Failure, format!("zstd: {err}")))?,
        ),
        Codec::Gzip => Box::new(flate2::read::MultiGzDecoder::new(BufReader::with_capacity(
            1 << 20,
            compressed,
        ))),
        Codec::None => Box::new(BufReader::with_capacity(1 << 20, compressed)),
    };
    let progress = s3pipe::progress::bytes(None, plan.quiet, "restoring");
    let mut decoded = Hashing {
        inner: decoder,
        hasher: Sha256::new(),
        size: 0,
        cancellation: cancellation.clone(),
        progress: progress.clone(),
    };
    let first = read_up_to(&mut decoded, 512).map_err(|err| stream_failure(err, codec, 0))?;
    let content = detect_content(&first);
    let target = choose_target(&plan, content)?;
    tracing::info!("restoring a {} {} stream", codec.name(), content.name());

    let mut temp_image: Option<tempfile::NamedTempFile> = None;
    let mut entries = None;
    match &target {
        Target::Directory(dir) => {
            fs::create_dir_all(dir).map_err(|err| {
                Failure::new(
                    ExitCode::Failure,
                    format!("cannot create {}: {err}", dir.display()),
                )
            })?;
            let reader = Cursor::new(first).chain(&mut decoded);
            entries = Some(files::extract(reader, dir).map_err(|failure| {
                if cancellation.is_cancelled() {
                    cancellation.failure("the directory is partly restored")
                } else {
                    failure
                }
            })?);
        }
        Target::Device(path) => {
            let mut options = OpenOptions::new();
            options.write(true);
            if !plan.force {
                // O_EXCL on a block device: the kernel refuses it while the device is mounted or
                // otherwise claimed, which no check of ours can race with.
                options.custom_flags(nix::libc::O_EXCL);
            }
            let file = options.open(path).map_err(|err| {
                Failure::new(
                    ExitCode::Failure,
                    format!(
                        "cannot open {} for writing: {err}{}",
                        path.display(),
                        if err.raw_os_error() == Some(nix::libc::EBUSY) {
                            " (it is in use; --force writes anyway)"
                        } else {
                            ""
                        }
                    ),
                )
            })?;
            let capacity = fs::metadata(path)
                .ok()
                .and_then(|_| File::open(path).ok())
                .and_then(|mut f| f.seek(SeekFrom::End(0)).ok());
            write_raw(&first, &mut decoded, file, false, capacity, codec)?;
        }
        Target::Image(path) => {
            let parent = path
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(Path::new("."));
            // Written beside the target and renamed over it only when complete and verified.
            let temp = tempfile::Builder::new()
                .prefix(".blockdump-")
                .tempfile_in(parent)
                .map_err(|err| {
                    Failure::new(
                        ExitCode::Failure,
                        format!("cannot create a file in {}: {err}", parent.display()),
                    )
                })?;
            let file = temp.reopen()?;
            partial_files().push(temp.path().to_path_buf());
            let written = write_raw(&first, &mut decoded, file, true, None, codec);
            partial_files().retain(|p| p != temp.path());
            written?;
            temp_image = Some(temp);
        }
    }

    // Whatever the archive reader left (tar's end padding) still counts towards the hash, and the
    // compressed input must be read to its end to find the end marker.
    io::copy(&mut decoded, &mut io::sink())
        .map_err(|err| stream_failure(err, codec, decoded.size))?;
    progress.finish_and_clear();
    let size = decoded.size;
    let sha256: [u8; 32] = decoded.hasher.clone().finalize().into();
    let sha_hex = hex::encode(sha256);
    drop(decoded);

    let ends = ends.lock().unwrap_or_else(|p| p.into_inner());
    let mut verified = Vec::new();
    if codec != Codec::None {
        let len = stream::marker_len(codec);
        let start = (ends.head.len() >= len)
            .then(|| stream::parse_marker(codec, &ends.head[..len]))
            .flatten()
            .filter(|m| !m.end);
        if start.is_some() {
            let end = (ends.tail.len() >= len)
                .then(|| stream::parse_marker(codec, &ends.tail[ends.tail.len() - len..]))
                .flatten()
                .filter(|m| m.end);
            let Some(end) = end else {
                return Err(Failure::input(format!(
                    "the stream is truncated: it has no end marker ({size} bytes of content decoded); nothing was {}",
                    if matches!(target, Target::Image(_)) {
                        "written to the image"
                    } else {
                        "verified"
                    }
                )));
            };
            if end.size != size || end.sha256 != sha256 || end.content != content {
                return Err(Failure::verify(format!(
                    "the stream does not match its end marker: {size} bytes with SHA-256 {sha_hex}, the marker says {} bytes with {}",
                    end.size,
                    hex::encode(end.sha256)
                )));
            }
            verified.push("stream");
        } else {
            tracing::info!(
                "not a blockdump stream (no start marker): only the frame checksums are checked"
            );
        }
    }
    if let Some(expected) = &expected {
        if *expected != sha_hex {
            return Err(Failure::verify(format!(
                "SHA-256 mismatch: the restored content is {sha_hex}, expected {expected}"
            )));
        }
        verified.push("expected");
    }
    if let Some(temp) = temp_image
        && let Target::Image(path) = &target
    {
        temp.persist(path).map_err(|err| {
            Failure::new(
                ExitCode::Failure,
                format!(
                    "cannot rename the restored image to {}: {err}",
                    path.display()
                ),
            )
        })?;
    }
    let target_path = match &target {
        Target::Device(p) | Target::Image(p) | Target::Directory(p) => p.display().to_string(),
    };
    let mut event = Event::new(crate::TOOL, "restore_complete")
        .with("target", target_path)
        .with(
            "target_kind",
            match target {
                Target::Device(_) => "device",
                Target::Image(_) => "image",
                Target::Directory(_) => "directory",
            },
        )
        .with("mode", content.name())
        .with("compression", codec.name())
        .with("size", size)
        .with("bytes_in", ends.total)
        .with("sha256", sha_hex)
        .with(
            "verified",
            if verified.is_empty() {
                "none".to_string()
            } else {
                verified.join("+")
            },
        )
        .with("seconds", started.elapsed().as_secs_f64());
    if let Some(n) = entries {
        event = event.with("entries", n);
    }
    plan.events
        .emit(&event)
        .map_err(|err| Failure::new(ExitCode::Failure, format!("cannot write the event: {err}")))?;
    Ok(())
}

/// The SHA-256 to expect, from `--expect-sha256` or the dump's events file.
fn expected_sha256(plan: &Plan) -> Result<Option<String>, Failure> {
    if let Some(hex_text) = &plan.expect_sha256 {
        let text = hex_text.trim().to_ascii_lowercase();
        if text.len() != 64 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(Failure::usage(format!(
                "--expect-sha256 '{hex_text}' is not 64 hexadecimal digits"
            )));
        }
        return Ok(Some(text));
    }
    let Some(path) = &plan.expect_from else {
        return Ok(None);
    };
    let file = File::open(path)
        .map_err(|err| Failure::usage(format!("--expect-from {}: {err}", path.display())))?;
    let mut found = None;
    for event in EventReader::new(BufReader::new(file)) {
        let event = event
            .map_err(|err| Failure::usage(format!("--expect-from {}: {err}", path.display())))?;
        if event.tool == crate::TOOL
            && event.event == "dump_complete"
            && let Some(sha) = event.get_str("sha256")
        {
            found = Some(sha.to_ascii_lowercase());
        }
    }
    found.map(Some).ok_or_else(|| {
        Failure::usage(format!(
            "--expect-from {}: no blockdump dump_complete event with a sha256",
            path.display()
        ))
    })
}

/// Decides what the target is, and refuses the unsafe cases.
fn choose_target(plan: &Plan, content: Content) -> Result<Target, Failure> {
    let path = &plan.target;
    let meta = fs::metadata(path).ok();
    match (meta, content) {
        (Some(meta), Content::Raw) if meta.file_type().is_block_device() => {
            if !plan.force
                && let Some(mount) = mounted_at(meta.rdev())
            {
                return Err(Failure::usage(format!(
                    "{} is mounted at {mount}: refusing to write over it (unmount it, or --force)",
                    path.display()
                )));
            }
            Ok(Target::Device(path.clone()))
        }
        (Some(meta), Content::Tar) if meta.file_type().is_block_device() => {
            Err(Failure::usage(format!(
                "the stream is a files-mode tar archive; restore it into a directory, not the device {}",
                path.display()
            )))
        }
        (Some(meta), Content::Raw) if meta.is_dir() => Err(Failure::usage(format!(
            "the stream is a raw image; restore it onto a device or an image file, not the directory {}",
            path.display()
        ))),
        (Some(meta), Content::Tar) if meta.is_dir() => {
            if !plan.force && !files::dir_is_empty(path).unwrap_or(false) {
                return Err(Failure::usage(format!(
                    "{} is not empty: refusing to restore into it (--force merges into it)",
                    path.display()
                )));
            }
            Ok(Target::Directory(path.clone()))
        }
        (Some(meta), Content::Raw) if meta.is_file() => Ok(Target::Image(path.clone())),
        (Some(_), Content::Tar) => Err(Failure::usage(format!(
            "the stream is a files-mode tar archive; restore it into a directory, not {}",
            path.display()
        ))),
        (Some(_), Content::Raw) => Err(Failure::usage(format!(
            "{} is neither a block device nor a regular file",
            path.display()
        ))),
        (None, Content::Raw) => Ok(Target::Image(path.clone())),
        (None, Content::Tar) => Ok(Target::Directory(path.clone())),
    }
}

/// Where the device numbered `rdev` (or a partition of it) is mounted, from /proc/self/mountinfo.
pub fn mounted_at(rdev: u64) -> Option<String> {
    let major = nix::sys::stat::major(rdev);
    let minor = nix::sys::stat::minor(rdev);
    let info = fs::read_to_string("/proc/self/mountinfo").ok()?;
    // The device itself, and its partitions (listed in sysfs under the disk).
    let mut numbers = vec![format!("{major}:{minor}")];
    let sys = format!("/sys/dev/block/{major}:{minor}");
    if let Ok(dir) = fs::read_dir(&sys) {
        for entry in dir.flatten() {
            if let Ok(dev) = fs::read_to_string(entry.path().join("dev")) {
                numbers.push(dev.trim().to_string());
            }
        }
    }
    for line in info.lines() {
        let mut fields = line.split(' ');
        let (Some(_), Some(_), Some(dev), Some(_), Some(mount_point)) = (
            fields.next(),
            fields.next(),
            fields.next(),
            fields.next(),
            fields.next(),
        ) else {
            continue;
        };
        if numbers.iter().any(|n| n == dev) {
            return Some(mount_point.to_string());
        }
    }
    None
}

/// Writes a raw image: to a device every byte, to an image file with holes for zero blocks.
fn write_raw(
    first: &[u8],
    decoded: &mut impl Read,
    mut file: File,
    sparse: bool,
    capacity: Option<u64>,
    codec: Codec,
) -> Result<(), Failure> {
    const BLOCK: usize = 64 << 10;
    let mut buf = vec![0u8; 1 << 20];
    let mut pos: u64 = 0;
    let mut pending: Vec<u8> = first.to_vec();
    let write_err = |err: io::Error, at: u64| {
        Failure::new(
            ExitCode::Failure,
            format!("write error at offset {at}: {err}"),
        )
    };
    loop {
        let n = if pending.is_empty() {
            let n = read_full(decoded, &mut buf).map_err(|err| stream_failure(err, codec, pos))?;
            if n == 0 {
                break;
            }
            n
        } else {
            let n = pending.len();
            buf[..n].copy_from_slice(&pending);
            pending.clear();
            n
        };
        if let Some(capacity) = capacity
            && pos + n as u64 > capacity
        {
            return Err(Failure::usage(format!(
                "the image is larger than the target ({capacity} bytes): nothing past that was written"
            )));
        }
        if sparse {
            for block in buf[..n].chunks(BLOCK) {
                if !stream::is_zero(block) {
                    file.write_all_at_pos(block, pos)
                        .map_err(|e| write_err(e, pos))?;
                }
                pos += block.len() as u64;
            }
        } else {
            file.write_all_at_pos(&buf[..n], pos)
                .map_err(|e| write_err(e, pos))?;
            pos += n as u64;
        }
    }
    if sparse {
        file.set_len(pos).map_err(|e| write_err(e, pos))?;
    }
    file.sync_all().map_err(|e| write_err(e, pos))?;
    Ok(())
}

fn read_full(reader: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match reader.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
            Err(err) => return Err(err),
        }
    }
    Ok(got)
}

trait WriteAt {
    fn write_all_at_pos(&mut self, data: &[u8], pos: u64) -> io::Result<()>;
}

impl WriteAt for File {
    fn write_all_at_pos(&mut self, data: &[u8], pos: u64) -> io::Result<()> {
        std::os::unix::fs::FileExt::write_all_at(self, data, pos)
    }
}
