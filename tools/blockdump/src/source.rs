//! The input: a block device, an image file or stdin, and reading it as raw chunks.
//!
//! A device's size comes from seeking to its end (the kernel answers that from the same value the
//! BLKGETSIZE64 ioctl returns, without `unsafe`). Files are read with `pread` so that a read
//! error can be retried sector by sector at a known offset; holes in image files are found with
//! `SEEK_DATA`/`SEEK_HOLE` and never read at all.
//!
//! Devices are read with `O_DIRECT`, straight into our buffers. A device has no holes to skip, so
//! its zeros must be read, and through the page cache that costs far more than it should: a loop
//! device (an image attached with losetup) copies every block from its file's page cache into its
//! own, at 0.4-1.5 GB/s here, against 10 GB/s and more direct. On any device a dump read through
//! the cache also pushes the host's useful pages out for data read once. Where the kernel refuses
//! `O_DIRECT` (some devices, an unaligned tail), reading falls back to the page cache.

use std::cell::Cell;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::unistd::{Whence, lseek};
use serde_json::json;

use s3pipe::Failure;
use s3pipe::event::EventReader;
use s3pipe::signals::Cancellation;

use crate::stream::ChunkSink;

/// What kind of thing the input is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Device,
    File,
    Stdin,
}

/// An opened input.
#[derive(Debug)]
pub struct Source {
    pub path: PathBuf,
    pub kind: Kind,
    /// Known for devices and files, not for stdin.
    pub size: Option<u64>,
    pub file: Option<File>,
    /// The same device opened with `O_DIRECT`, when the kernel allows it.
    pub direct: Option<File>,
}

impl Source {
    pub fn display(&self) -> String {
        match self.kind {
            Kind::Stdin => "-".to_string(),
            _ => self.path.display().to_string(),
        }
    }
}

/// Opens `path` (or stdin for `-`) read-only.
pub fn open(path: &Path) -> Result<Source, Failure> {
    if path == Path::new("-") {
        return Ok(Source {
            path: path.to_path_buf(),
            kind: Kind::Stdin,
            size: None,
            file: None,
            direct: None,
        });
    }
    let mut file = File::open(path)
        .map_err(|err| Failure::input(format!("cannot open {}: {err}", path.display())))?;
    let meta = file
        .metadata()
        .map_err(|err| Failure::input(format!("cannot stat {}: {err}", path.display())))?;
    let kind = if meta.file_type().is_block_device() {
        Kind::Device
    } else if meta.is_file() {
        Kind::File
    } else {
        return Err(Failure::usage(format!(
            "{} is neither a block device nor a regular file (use - for stdin)",
            path.display()
        )));
    };
    let size = match kind {
        Kind::Device => {
            let size = file.seek(SeekFrom::End(0)).map_err(|err| {
                Failure::input(format!("cannot read the size of {}: {err}", path.display()))
            })?;
            file.seek(SeekFrom::Start(0))?;
            size
        }
        _ => meta.len(),
    };
    let direct = match kind {
        Kind::Device => OpenOptions::new()
            .read(true)
            .custom_flags(nix::libc::O_DIRECT)
            .open(path)
            .inspect_err(|err| tracing::debug!("{}: no O_DIRECT ({err})", path.display()))
            .ok(),
        _ => None,
    };
    Ok(Source {
        path: path.to_path_buf(),
        kind,
        size: Some(size),
        file: Some(file),
        direct,
    })
}

/// Reads JSON events from `input` until the first one with a string `device` field (from
/// ebs-attach), without waiting for the end of the input: ebs-attach keeps its stdout open until
/// its reader exits, so that it can detach the volume afterwards.
pub fn device_from_events(
    input: impl io::BufRead,
) -> Result<(PathBuf, serde_json::Map<String, serde_json::Value>), Failure> {
    for event in EventReader::new(input) {
        let event = event.map_err(|err| Failure::input(format!("--from-event: {err}")))?;
        if let Some(device) = event.get_str("device") {
            let mut fields = serde_json::Map::new();
            fields.insert("event".into(), json!(event.event));
            fields.insert("tool".into(), json!(event.tool));
            if let Some(volume) = event.get("volume_id") {
                fields.insert("volume_id".into(), volume.clone());
            }
            return Ok((PathBuf::from(device), fields));
        }
    }
    Err(Failure::input(
        "--from-event: stdin ended without an event naming a device (a \"device\" field)",
    ))
}

/// Byte ranges `[start, end)` of the `size` bytes of `file` from `base` on that hold data,
/// relative to `base`; everything else is a hole. `None` when the file system cannot say (then
/// everything is read).
pub fn data_ranges(file: &File, base: u64, size: u64) -> Option<Vec<(u64, u64)>> {
    let limit = base.checked_add(size)?;
    let mut ranges = Vec::new();
    let mut pos = base;
    while pos < limit {
        let start = match lseek(file, i64::try_from(pos).ok()?, Whence::SeekData) {
            Ok(start) => start as u64,
            Err(nix::errno::Errno::ENXIO) => break, // no data after pos
            Err(_) => return None,
        };
        if start >= limit {
            break;
        }
        let end = match lseek(file, start as i64, Whence::SeekHole) {
            Ok(end) => (end as u64).min(limit),
            Err(_) => return None,
        };
        ranges.push((start - base, end - base));
        pos = end;
    }
    Some(ranges)
}

/// The file behind a loop device and the device's offset in it, when that can be trusted.
///
/// A loop device over a sparse image (a VM disk, or the stand-in volumes of our own tests) reads
/// its holes as zeros, but each costs the kernel a page allocation and a zero-fill on the way:
/// 20 GiB of holes took 50 s through the device, against no time at all found with SEEK_HOLE in
/// the file. losetup names the file; its inode and device numbers must match the file we open,
/// so a file replaced at that path since is never taken for the device's. Data is still read
/// from the device itself; only where the holes are comes from the file.
pub fn loop_backing(device: &Path) -> Option<(File, u64)> {
    let out = std::process::Command::new("losetup")
        .args([
            "--json",
            "--list",
            "--output",
            "BACK-FILE,BACK-INO,BACK-MAJ:MIN,OFFSET",
        ])
        .arg(device)
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let listing: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    let entry = listing.get("loopdevices")?.get(0)?;
    let backing = entry.get("back-file")?.as_str()?;
    let inode = entry.get("back-ino")?.as_u64()?;
    let (major, minor) = entry
        .get("back-maj:min")?
        .as_str()?
        .trim()
        .split_once(':')?;
    let offset = entry.get("offset")?.as_u64()?;
    let file = File::open(backing).ok()?;
    let meta = file.metadata().ok()?;
    let dev = nix::sys::stat::makedev(major.trim().parse().ok()?, minor.trim().parse().ok()?);
    if meta.ino() != inode || meta.dev() != dev {
        tracing::debug!(
            "{}: {backing} is not the loop device's file any more; reading every block",
            device.display()
        );
        return None;
    }
    Some((file, offset))
}

/// Limits the rate of reading to `rate` bytes a second (averaged from the start).
#[derive(Debug)]
pub struct RateLimit {
    rate: Option<u64>,
    start: Instant,
    bytes: u64,
}

impl RateLimit {
    pub fn new(rate: Option<u64>) -> Self {
        RateLimit {
            rate: rate.filter(|r| *r > 0),
            start: Instant::now(),
            bytes: 0,
        }
    }

    /// Counts `n` bytes read and sleeps while ahead of the allowed rate.
    pub fn consume(&mut self, n: u64) {
        let Some(rate) = self.rate else { return };
        self.bytes += n;
        let due = Duration::from_secs_f64(self.bytes as f64 / rate as f64);
        let elapsed = self.start.elapsed();
        if due > elapsed {
            std::thread::sleep(due - elapsed);
        }
    }
}

/// A range of the source that could not be read and was replaced by zeros.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadRange {
    pub offset: u64,
    pub length: u64,
}

/// How to read: what to do on errors, how fast, when to stop.
#[derive(Debug)]
pub struct ReadOptions<'a> {
    pub continue_on_error: bool,
    pub sector: usize,
    pub rate: RateLimit,
    pub cancellation: &'a Cancellation,
    pub progress: &'a indicatif::ProgressBar,
}

/// What to do about a read error.
#[derive(Debug, Clone, Copy)]
pub struct ReadErrors {
    pub continue_on_error: bool,
    pub sector: usize,
}

/// Streams the whole source into `sink` as raw bytes. Returns the unreadable ranges (only with
/// `continue_on_error`; otherwise the first error fails with its offset).
pub fn read_raw(
    source: &mut Source,
    sink: &mut ChunkSink,
    options: &mut ReadOptions<'_>,
) -> io::Result<Vec<BadRange>> {
    let chunk = sink.chunk_size();
    let mut bad = Vec::new();
    let Some(file) = source.file.as_ref() else {
        // stdin: sequential reads, no holes, no retries.
        let mut stdin = io::stdin().lock();
        loop {
            if options.cancellation.is_cancelled() {
                return Err(io::Error::other("cancelled"));
            }
            let mut buf = sink.buffer();
            let n = (&mut stdin)
                .take(chunk as u64)
                .read_to_end(&mut buf)
                .map_err(|err| {
                    io::Error::new(
                        err.kind(),
                        format!("read error on stdin at offset {}: {err}", sink.size),
                    )
                })?;
            if n == 0 {
                return Ok(bad);
            }
            options.rate.consume(n as u64);
            options.progress.inc(n as u64);
            sink.push_chunk(buf)?;
        }
    };
    let size = source.size.unwrap_or(0);
    let ranges = match source.kind {
        Kind::File => data_ranges(file, 0, size),
        Kind::Device => loop_backing(&source.path).and_then(|(backing, offset)| {
            let ranges = data_ranges(&backing, offset, size)?;
            tracing::debug!(
                "{}: loop device over a file; its holes are skipped",
                source.path.display()
            );
            Some(ranges)
        }),
        Kind::Stdin => None,
    };
    let ranges = ranges.unwrap_or_else(|| vec![(0, size)]);
    let reader = SourceReader {
        direct: source.direct.as_ref(),
        buffered: file,
        path: &source.path,
        direct_refused: Cell::new(false),
    };
    let mut pos = 0u64;
    for (start, end) in ranges {
        // Holes are whole chunks of zeros never read; a chunk part hole, part data is read (a
        // hole reads back as zeros, and the zero check still spares it compression).
        let aligned_start = start - start % chunk as u64;
        if aligned_start > pos {
            sink.push_zeros(aligned_start - pos)?;
            options.progress.inc(aligned_start - pos);
            pos = aligned_start;
        }
        let aligned_end = end
            .div_ceil(chunk as u64)
            .saturating_mul(chunk as u64)
            .min(size);
        while pos < aligned_end {
            if options.cancellation.is_cancelled() {
                return Err(io::Error::other("cancelled"));
            }
            let n = (aligned_end - pos).min(chunk as u64) as usize;
            let (mut buf, start) = sink.aligned_buffer(n, DIRECT_ALIGN);
            let errors = ReadErrors {
                continue_on_error: options.continue_on_error,
                sector: options.sector,
            };
            read_chunk(
                &reader,
                &source.path,
                pos,
                &mut buf[start..],
                &errors,
                &mut bad,
            )?;
            options.rate.consume(n as u64);
            options.progress.inc(n as u64);
            sink.push_chunk_at(buf, start)?;
            pos += n as u64;
        }
    }
    if pos < size {
        sink.push_zeros(size - pos)?;
        options.progress.inc(size - pos);
    }
    Ok(bad)
}

/// Reading at an offset: a file or device (`pread`), or a stand-in with bad sectors in tests,
/// since this machine offers no way (device-mapper, fault injection) to make a real device fail.
pub trait ReadAt {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
}

impl ReadAt for File {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        FileExt::read_exact_at(self, buf, offset)
    }
}

/// Memory alignment of read buffers: `O_DIRECT` wants buffers aligned to the device's logical
/// block size, which is at most a page.
const DIRECT_ALIGN: usize = 4096;

/// Reads a source through its `O_DIRECT` handle while the kernel accepts that, else through the
/// page cache.
struct SourceReader<'a> {
    direct: Option<&'a File>,
    buffered: &'a File,
    path: &'a Path,
    /// Set when the kernel refused an `O_DIRECT` read (EINVAL: an alignment the device does not
    /// allow); from then on the source is read through the page cache.
    direct_refused: Cell<bool>,
}

impl ReadAt for SourceReader<'_> {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        if let Some(direct) = self.direct.filter(|_| !self.direct_refused.get()) {
            match FileExt::read_exact_at(direct, buf, offset) {
                Err(err) if err.raw_os_error() == Some(nix::libc::EINVAL) => {
                    tracing::debug!(
                        "{}: O_DIRECT read of {} bytes at {offset} refused ({err}); reading through the page cache",
                        self.path.display(),
                        buf.len()
                    );
                    self.direct_refused.set(true);
                }
                other => return other,
            }
        }
        FileExt::read_exact_at(self.buffered, buf, offset)
    }
}

fn read_chunk(
    file: &impl ReadAt,
    path: &Path,
    offset: u64,
    buf: &mut [u8],
    options: &ReadErrors,
    bad: &mut Vec<BadRange>,
) -> io::Result<()> {
    let err = match file.read_exact_at(buf, offset) {
        Ok(()) => return Ok(()),
        Err(err) => err,
    };
    if err.kind() == io::ErrorKind::UnexpectedEof {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!(
                "{} ended at offset {} or before, earlier than its size said (did it shrink?)",
                path.display(),
                offset + buf.len() as u64
            ),
        ));
    }
    if !options.continue_on_error {
        return Err(io::Error::new(
            err.kind(),
            format!(
                "read error on {} in the {} bytes at offset {offset}: {err} (--continue-on-error reads past it)",
                path.display(),
                buf.len()
            ),
        ));
    }
    // Sector by sector: what reads is kept, what does not becomes zeros and is listed.
    let sector = options.sector.max(512);
    let mut at = 0usize;
    while at < buf.len() {
        let n = sector.min(buf.len() - at);
        let part = &mut buf[at..at + n];
        if let Err(err) = file.read_exact_at(part, offset + at as u64) {
            tracing::warn!(
                "unreadable: {} bytes at offset {} of {}: {err}",
                n,
                offset + at as u64,
                path.display()
            );
            part.fill(0);
            let here = offset + at as u64;
            match bad.last_mut() {
                Some(last) if last.offset + last.length == here => last.length += n as u64,
                _ => bad.push(BadRange {
                    offset: here,
                    length: n as u64,
                }),
            }
        }
        at += n;
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// A 1 MiB "device" whose sectors 8 and 9 (4 KiB each) cannot be read.
    struct BadSectors;

    impl ReadAt for BadSectors {
        fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
            let bad = 8 * 4096..10 * 4096;
            let end = offset + buf.len() as u64;
            if offset < bad.end && end > bad.start {
                return Err(io::Error::from_raw_os_error(nix::libc::EIO));
            }
            buf.fill(0xAB);
            Ok(())
        }
    }

    /// A read the kernel refuses with O_DIRECT (here: a buffer at an odd address) is done through
    /// the page cache instead, and so is every later read.
    #[test]
    fn a_refused_direct_read_falls_back_to_the_page_cache() {
        // Beside the test binary: a real disk file system (tmpfs would take any alignment).
        let exe = std::env::current_exe().unwrap();
        let dir = tempfile::tempdir_in(exe.parent().unwrap()).unwrap();
        let path = dir.path().join("image");
        let content: Vec<u8> = (0..65536u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &content).unwrap();
        let buffered = File::open(&path).unwrap();
        let Ok(direct) = OpenOptions::new()
            .read(true)
            .custom_flags(nix::libc::O_DIRECT)
            .open(&path)
        else {
            panic!(
                "the file system under {} has no O_DIRECT",
                dir.path().display()
            );
        };
        let reader = SourceReader {
            direct: Some(&direct),
            buffered: &buffered,
            path: &path,
            direct_refused: Cell::new(false),
        };
        let mut buf = vec![0u8; 8192 + 2 * DIRECT_ALIGN];
        let start = buf.as_ptr().align_offset(DIRECT_ALIGN);
        // Aligned: read directly.
        reader
            .read_exact_at(&mut buf[start..start + 8192], 4096)
            .unwrap();
        assert_eq!(&buf[start..start + 8192], &content[4096..4096 + 8192]);
        assert!(!reader.direct_refused.get());
        // One byte off: refused by the kernel, read through the cache.
        reader
            .read_exact_at(&mut buf[start + 1..start + 1 + 8192], 8192)
            .unwrap();
        assert_eq!(
            &buf[start + 1..start + 1 + 8192],
            &content[8192..8192 + 8192]
        );
        assert!(reader.direct_refused.get());
    }

    #[test]
    fn a_read_error_fails_with_its_offset() {
        let mut buf = vec![0u8; 1 << 20];
        let mut bad = Vec::new();
        let errors = ReadErrors {
            continue_on_error: false,
            sector: 4096,
        };
        let err = read_chunk(
            &BadSectors,
            Path::new("/dev/x"),
            0,
            &mut buf,
            &errors,
            &mut bad,
        )
        .unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("read error on /dev/x") && text.contains("at offset 0:"),
            "{text}"
        );
        assert!(bad.is_empty());
    }

    #[test]
    fn continue_on_error_zeroes_and_lists_bad_sectors() {
        let mut buf = vec![0u8; 1 << 20];
        let mut bad = Vec::new();
        let errors = ReadErrors {
            continue_on_error: true,
            sector: 4096,
        };
        read_chunk(
            &BadSectors,
            Path::new("/dev/x"),
            0,
            &mut buf,
            &errors,
            &mut bad,
        )
        .expect("continues");
        assert_eq!(
            bad,
            vec![BadRange {
                offset: 8 * 4096,
                length: 2 * 4096
            }]
        );
        assert!(buf[8 * 4096..10 * 4096].iter().all(|b| *b == 0));
        assert!(buf[..8 * 4096].iter().all(|b| *b == 0xAB));
        assert!(buf[10 * 4096..].iter().all(|b| *b == 0xAB));
    }
}
