//! `blockdump`: a block device, image or file system to a compressed, verified stream, and back.
//!
//! The story of a dump: the source is opened (a device, an image file, stdin, or the device named
//! by an `ebs-attach` event); in `files` or `auto` mode its file system is recognised and mounted
//! read-only in a private directory ([`files`]), otherwise it is read raw ([`source`]), holes and
//! zero blocks costing nearly nothing. Either way the bytes go into [`stream`], which hashes them,
//! cuts them into chunks, compresses the chunks on every core and writes them to stdout in order,
//! between a start and an end marker that standard decoders ignore. The final JSON event (stderr
//! or `--events FILE`) has the mode, sizes and SHA-256.
//!
//! `blockdump restore` ([`restore`]) reverses it and verifies the result.

pub mod files;
pub mod restore;
pub mod source;
pub mod stream;

use std::io::{BufWriter, IsTerminal};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::time::Instant;

use clap::{CommandFactory, Parser, Subcommand, ValueEnum};
use serde_json::json;

use s3pipe::event::{Event, EventSink};
use s3pipe::logging::Verbosity;
use s3pipe::man::ManExtras;
use s3pipe::signals::Cancellation;
use s3pipe::units::parse_size;
use s3pipe::{ExitCode, Failure};

use stream::{Codec, Content};

pub const TOOL: &str = "blockdump";

#[derive(Debug, Parser)]
#[command(
    name = TOOL,
    version,
    about = "A block device, image or file system to a compressed, verified stream, and back",
    long_about = "Dumps a block device, an image file or stdin to stdout as one compressed stream, and \
`blockdump restore` writes such a stream back. In raw mode the stream is the whole device; in files mode \
the file system (ext2/3/4 or XFS) is mounted read-only, with options that never write to the source, in a \
private temporary directory, and the stream is a tar archive of it (ownership, modes, times, symlinks, hard \
links, extended attributes and sparse files kept). auto (the default) uses files mode when the file system \
is recognised and mounts, raw mode otherwise.\n\n\
The stream is zstd (default) or gzip, compressed on every core, or uncompressed: `zstd -d` or `gunzip` of \
a raw dump gives the image byte for byte, and of a files dump a tar archive that `tar -x` extracts, so a \
restore never needs blockdump. Holes in image files and all-zero blocks are not compressed at all. The \
SHA-256 of the image (raw) or of the tar archive (files) is computed while streaming and reported in a \
JSON event on stderr (or --events FILE); stdout carries only data.",
    args_conflicts_with_subcommands = true
)]
pub struct Args {
    #[command(subcommand)]
    pub command: Option<Commands>,

    #[command(flatten)]
    pub dump: DumpArgs,

    #[command(flatten)]
    pub log: Verbosity,
}

#[derive(Debug, Subcommand)]
pub enum Commands {
    /// Write a stream (from stdin) back onto a device, an image file or a directory
    #[command(
        long_about = "Decodes a stream on stdin (zstd, gzip or uncompressed, recognised from its first bytes) \
and writes it to TARGET: a raw image onto a block device or into an image file (created sparse, holes for \
zero blocks, written beside the target and renamed over it only when complete and verified), a files-mode \
tar archive into a directory (created if missing). Raw image or tar archive is recognised from the content, \
so streams from plain `dd | gzip` or `tar | zstd` restore too.\n\n\
blockdump's own streams end with the size and SHA-256 of their content, which is checked; --expect-sha256 \
or --expect-from add a check from outside the stream. A device that is mounted (or otherwise in use) and a \
directory that is not empty are refused unless --force."
    )]
    Restore(RestoreArgs),
}

/// Which way to read the source.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    /// files mode when the file system is recognised and mounts, raw otherwise
    Auto,
    /// every byte of the device or image
    Raw,
    /// a tar archive of the file system, mounted read-only
    Files,
}

#[derive(Debug, Clone, clap::Args)]
pub struct DumpArgs {
    /// Block device, image file, or - for stdin (raw mode only)
    #[arg(value_name = "SOURCE")]
    pub source: Option<PathBuf>,

    /// Read the source device from the first JSON event on stdin that has a "device" field (as
    /// ebs-attach prints; waits up to 30s for the device to appear); stdin is not read further
    #[arg(long, conflicts_with = "source")]
    pub from_event: bool,

    /// raw: every byte; files: a tar archive of the mounted file system; auto: files when possible
    #[arg(long, value_enum, default_value_t = Mode::Auto)]
    pub mode: Mode,

    /// Compression of the stream
    #[arg(long, value_enum, default_value_t = Codec::Zstd, value_name = "FORMAT")]
    pub compress: Codec,

    /// Compression level: zstd 1-19 (default 3), gzip 1-9 (default 6)
    #[arg(long, value_name = "N")]
    pub level: Option<i32>,

    /// Compression threads (default: one per core)
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=256))]
    pub threads: Option<u16>,

    /// Bytes per compressed frame; all-zero chunks of this size are never compressed
    #[arg(long, default_value = "1MiB", value_parser = parse_size, value_name = "SIZE")]
    pub chunk_size: u64,

    /// Read at most this many bytes per second from the source (e.g. 200MiB)
    #[arg(long, value_parser = parse_size, value_name = "SIZE")]
    pub rate_limit: Option<u64>,

    /// Turn unreadable sectors into zeros and list them in the final event, instead of failing
    /// (files mode: unreadable parts of files become zeros, unreadable entries are skipped; a
    /// read error in a sparse file still fails)
    #[arg(long)]
    pub continue_on_error: bool,

    /// Report the size and the mode that would be used (files when the file system is recognised;
    /// the mount is not tried), and write no data
    #[arg(long)]
    pub dry_run: bool,

    /// Write the JSON events to FILE (appended) instead of stderr
    #[arg(long, value_name = "FILE")]
    pub events: Option<PathBuf>,
}

#[derive(Debug, Clone, clap::Args)]
pub struct RestoreArgs {
    /// Block device, image file (created if missing) or directory (files-mode streams)
    #[arg(value_name = "TARGET")]
    pub target: PathBuf,

    /// Read the stream from FILE instead of stdin
    #[arg(long, short, value_name = "FILE")]
    pub input: Option<PathBuf>,

    /// Fail (exit 5) unless the restored content has this SHA-256
    #[arg(long, value_name = "HEX")]
    pub expect_sha256: Option<String>,

    /// Take the SHA-256 to expect from the dump's events file (its dump_complete event)
    #[arg(long, value_name = "FILE", conflicts_with = "expect_sha256")]
    pub expect_from: Option<PathBuf>,

    /// Write over a mounted or busy device, or into a directory that is not empty
    #[arg(long)]
    pub force: bool,

    /// Write the JSON event to FILE (appended) instead of stderr
    #[arg(long, value_name = "FILE")]
    pub events: Option<PathBuf>,
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
                "Export an EBS volume attached as /dev/nvme1n1 (files mode if it mounts, raw otherwise):",
                "set -o pipefail\nblockdump --events dump.jsonl /dev/nvme1n1 | s3-put-multipart s3://exports/vol-0abc.zst",
            ),
            (
                "The whole pipeline, the device named by ebs-attach:",
                "ebs-attach --cleanup-on-exit vol-0abc | blockdump --from-event | s3-put-multipart s3://exports/vol-0abc.zst",
            ),
            (
                "Restore a raw dump onto a device, checking the SHA-256 the dump reported:",
                "s3-get s3://exports/vol-0abc.zst | blockdump restore --expect-from dump.jsonl /dev/nvme2n1",
            ),
            (
                "Restore a files dump into a directory, or without blockdump:",
                "s3-get s3://exports/vol-0abc.zst | blockdump restore /restore/vol-0abc\ns3-get s3://exports/vol-0abc.zst | zstd -d | tar -C /restore/vol-0abc -xpf -",
            ),
            (
                "A gzip image of a disk, at most 100 MiB/s, bad sectors read as zeros:",
                "blockdump --mode raw --compress gzip --rate-limit 100MiB --continue-on-error /dev/sdb > sdb.img.gz",
            ),
        ],
        notes: vec![
            "Files mode mounts ext2/3/4 with ro,noload and XFS with ro,norecovery,nouuid (plus nosuid, nodev, noexec, noatime) in a fresh 0700 directory under $TMPDIR, so the source is never written, not even to replay a journal; it is unmounted however the run ends. An image file is mounted through a read-only loop device. A whole disk with a partition table is not a recognised file system: name the partition for files mode.",
            "Each chunk is its own zstd frame or gzip member, so the chunks compress in parallel and the standard decoders read the concatenation. blockdump adds a zstd skippable frame (gzip: an empty member with an extra field) at the start and at the end, carrying the size and SHA-256 of the content; the standard tools ignore them, and restore uses them to detect a stream cut short at a frame boundary.",
            "Read errors fail the dump with the offset of the failing read (raw mode) or the name of the file (files mode) unless --continue-on-error is given; then each unreadable range (tried sector by sector) becomes zeros and is listed in the final event as bad_ranges, with the file's name in files mode. A failed or interrupted dump exits non-zero, so with set -o pipefail the upload stage aborts.",
        ],
        exit_notes: vec![
            "A read error on the source exits 6; a restore whose content does not match the stream's end marker, --expect-sha256 or --expect-from exits 5, a stream cut short exits 6. Refusing a mounted device or a non-empty directory exits 2.",
        ],
        environment: vec![(
            "TMPDIR",
            "where files mode creates its private mount point and restore its temporary files.",
        )],
        uses_s3: false,
        see_also: vec![
            "s3-put-multipart(1)",
            "s3-get(1)",
            "ebs-attach(1)",
            "zstd(1)",
            "gzip(1)",
            "tar(1)",
        ],
    }
}

/// Entry point of the binary.
pub fn main() -> ! {
    let args = Args::parse();
    let verbosity = args.log.clone();
    s3pipe::cli::run(TOOL, &verbosity, |cancellation| run(args, cancellation))
}

/// The work of one run.
pub async fn run(args: Args, cancellation: Cancellation) -> Result<(), Failure> {
    let quiet = args.log.quiet > 0;
    let work_cancel = cancellation.clone();
    // A plain thread rather than spawn_blocking: the runtime waits for its blocking tasks when
    // it is dropped, and a task blocked reading a stalled stdin would then never let the process
    // exit after a signal.
    let (done, mut work) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("blockdump-work".into())
        .spawn(move || {
            let result = match args.command {
                Some(Commands::Restore(restore)) => run_restore(restore, quiet, work_cancel),
                None => dump(args.dump, quiet, work_cancel),
            };
            let _ = done.send(result);
        })
        .map_err(|err| Failure::new(ExitCode::Failure, format!("cannot start a thread: {err}")))?;
    // The work checks the cancellation between chunks, but it may be blocked in a read of a
    // stalled stdin or a write to a stalled stdout; after a grace period for cleaning up
    // (unmounting, removing a partial image), exit anyway.
    let joined = tokio::select! {
        joined = &mut work => joined,
        () = cancellation.token().cancelled() => {
            match tokio::time::timeout(CANCEL_GRACE, &mut work).await {
                Ok(joined) => joined,
                Err(_) => {
                    restore::remove_partial_files();
                    return Err(cancellation.failure("the output is incomplete"));
                }
            }
        }
    };
    let result = joined.map_err(|_| Failure::new(ExitCode::Failure, "the work thread failed"))?;
    match result {
        Err(_) if cancellation.is_cancelled() => {
            Err(cancellation.failure("the output is incomplete"))
        }
        other => other,
    }
}

/// How long a signalled run waits for its work to stop by itself.
const CANCEL_GRACE: std::time::Duration = std::time::Duration::from_secs(3);

fn events_sink(path: Option<&Path>) -> Result<EventSink, Failure> {
    EventSink::from_option(path, EventSink::stderr).map_err(|err| {
        Failure::usage(format!(
            "--events {}: {err}",
            path.map(|p| p.display().to_string()).unwrap_or_default()
        ))
    })
}

fn run_restore(args: RestoreArgs, quiet: bool, cancellation: Cancellation) -> Result<(), Failure> {
    let plan = restore::Plan {
        target: args.target,
        input: args.input,
        expect_sha256: args.expect_sha256,
        expect_from: args.expect_from,
        force: args.force,
        events: events_sink(args.events.as_deref())?,
        quiet,
    };
    if plan.input.is_none() && std::io::stdin().is_terminal() {
        return Err(Failure::usage(
            "stdin is a terminal: pipe the stream in, or name it with --input",
        ));
    }
    restore::restore(plan, cancellation)
}

/// How the source will be read, once decided.
enum Plan {
    Raw { fallback: Option<String> },
    Files { mount: files::Mount },
}

fn dump(args: DumpArgs, quiet: bool, cancellation: Cancellation) -> Result<(), Failure> {
    let started = Instant::now();
    let codec = args.compress;
    let level = args.level.unwrap_or_else(|| codec.default_level());
    if codec != Codec::None && !codec.levels().contains(&level) {
        return Err(Failure::usage(format!(
            "--level {level}: {} takes {}-{}",
            codec.name(),
            codec.levels().start(),
            codec.levels().end()
        )));
    }
    if !(64 << 10..=64 << 20).contains(&args.chunk_size) {
        return Err(Failure::usage(
            "--chunk-size must be between 64KiB and 64MiB",
        ));
    }
    let events = events_sink(args.events.as_deref())?;

    let mut origin = serde_json::Map::new();
    let path = match (&args.source, args.from_event) {
        (_, true) => {
            let stdin = std::io::stdin();
            let (device, fields) = source::device_from_events(stdin.lock())?;
            origin = fields;
            device
        }
        (Some(path), false) => path.clone(),
        (None, false) => {
            return Err(Failure::usage(
                "name the SOURCE (a block device, an image file, or - for stdin) or use --from-event",
            ));
        }
    };
    if !args.dry_run && std::io::stdout().is_terminal() {
        return Err(Failure::usage(
            "stdout is a terminal: pipe blockdump into a file or the next stage",
        ));
    }
    if args.from_event {
        wait_for_device(&path, &cancellation)?;
    }
    let mut src = source::open(&path)?;
    if src.kind == source::Kind::Stdin && args.mode == Mode::Files {
        return Err(Failure::usage(
            "files mode needs a device or an image file to mount, not stdin",
        ));
    }
    let fs_type = src.file.as_ref().and_then(files::detect);

    // Files mode needs a block device: an image file goes through a read-only loop device.
    let mut loop_device = None;
    let plan = match (args.mode, fs_type) {
        (Mode::Raw, _) => Plan::Raw { fallback: None },
        (Mode::Files, None) => {
            return Err(Failure::usage(format!(
                "files mode: no ext2/3/4 or XFS file system found on {} (--mode raw dumps it whole)",
                src.display()
            )));
        }
        (Mode::Auto, None) => Plan::Raw {
            fallback: Some(if src.kind == source::Kind::Stdin {
                "stdin cannot be mounted".to_string()
            } else {
                "no ext2/3/4 or XFS file system recognised".to_string()
            }),
        },
        // A dry run does not mount: it reports files mode when the file system is recognised.
        (_, Some(_)) if args.dry_run => Plan::Raw { fallback: None },
        (mode, Some(fs)) => {
            let device = match src.kind {
                source::Kind::File => match files::LoopDevice::attach(&src.path) {
                    Ok(dev) => {
                        let path = dev.path.clone();
                        loop_device = Some(dev);
                        Ok(path)
                    }
                    Err(err) => Err(err),
                },
                _ => Ok(src.path.clone()),
            };
            match device.and_then(|device| files::Mount::new(&device, fs)) {
                Ok(mount) => Plan::Files { mount },
                Err(err) if mode == Mode::Auto => {
                    tracing::warn!("{err}; dumping raw");
                    Plan::Raw {
                        fallback: Some(err),
                    }
                }
                Err(err) => {
                    return Err(Failure::input(format!("files mode: {err}")));
                }
            }
        }
    };

    let mode_name = match (&plan, args.dry_run, args.mode, fs_type) {
        (_, true, Mode::Raw, _) => "raw",
        (_, true, _, Some(_)) => "files",
        (Plan::Files { .. }, _, _, _) => "files",
        _ => "raw",
    };
    let mut base = Event::new(TOOL, "dump_complete")
        .with("source", src.display())
        .with(
            "source_kind",
            match src.kind {
                source::Kind::Device => "device",
                source::Kind::File => "image",
                source::Kind::Stdin => "stdin",
            },
        )
        .with("mode", mode_name)
        .with("compression", codec.name())
        .with("level", if codec == Codec::None { 0 } else { level });
    if let Some(size) = src.size {
        base = base.with("source_size", size);
    }
    if let Some(fs) = fs_type {
        base = base.with("fs_type", fs.name());
    }
    if let Plan::Raw {
        fallback: Some(reason),
    } = &plan
        && args.mode == Mode::Auto
    {
        base = base.with("fallback_reason", reason.as_str());
    }
    for (key, value) in origin {
        let name = match key.as_str() {
            "event" => "from_event",
            "tool" => "from_tool",
            other => other,
        };
        base = base.with(name, value);
    }
    if args.dry_run {
        base.event = "dump_plan".to_string();
        events.emit(&base).map_err(|err| {
            Failure::new(ExitCode::Failure, format!("cannot write the event: {err}"))
        })?;
        return Ok(());
    }

    let threads = args.threads.map(usize::from).unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2)
    });
    let settings = stream::Settings {
        codec,
        level,
        threads,
        chunk_size: args.chunk_size as usize,
    };
    let stdout = std::io::stdout()
        .as_fd()
        .try_clone_to_owned()
        .map_err(|err| Failure::new(ExitCode::Failure, format!("stdout: {err}")))?;
    let output = BufWriter::with_capacity(1 << 20, std::fs::File::from(stdout));
    let progress_total = match plan {
        Plan::Raw { .. } => src.size,
        Plan::Files { .. } => None,
    };
    let progress = s3pipe::progress::bytes(progress_total, quiet, "dumping");

    let result = match &plan {
        Plan::Raw { .. } => {
            let mut options = source::ReadOptions {
                continue_on_error: args.continue_on_error,
                sector: 4096,
                rate: source::RateLimit::new(args.rate_limit),
                cancellation: &cancellation,
                progress: &progress,
            };
            stream::run(settings, Content::Raw, output, |sink| {
                source::read_raw(&mut src, sink, &mut options)
            })
            .map(|(bad, summary)| (bad, None, summary))
        }
        Plan::Files { mount } => {
            let root = mount.path().to_path_buf();
            let mut rate = source::RateLimit::new(args.rate_limit);
            stream::run(settings, Content::Tar, output, |sink| {
                let limited = RateLimited {
                    inner: sink,
                    rate: &mut rate,
                };
                files::archive(
                    &root,
                    limited,
                    args.continue_on_error,
                    &cancellation,
                    &progress,
                )
            })
            .map(|(walk, summary)| (Vec::new(), Some(walk), summary))
        }
    };
    progress.finish_and_clear();
    drop(plan);
    drop(loop_device);
    let (bad, walk, summary) = result.map_err(|err| {
        if err.kind() == std::io::ErrorKind::BrokenPipe {
            Failure::new(
                ExitCode::Failure,
                "stdout was closed before the dump was complete",
            )
        } else {
            Failure::input(err.to_string())
        }
    })?;

    let mut event = base
        .with("size", summary.size)
        .with("zero_bytes", summary.zero_bytes)
        .with("hole_bytes", summary.hole_bytes)
        .with("bytes_out", summary.bytes_out)
        .with("sha256", hex::encode(summary.sha256))
        .with("seconds", started.elapsed().as_secs_f64());
    if let Some(walk) = &walk {
        event = event.with("entries", walk.entries);
        if !walk.skipped.is_empty() {
            event = event.with("skipped", walk.skipped.clone());
        }
    }
    if args.continue_on_error {
        let mut ranges: Vec<_> = bad
            .iter()
            .map(|r| json!({"offset": r.offset, "length": r.length}))
            .collect();
        let mut bad_bytes = bad.iter().map(|r| r.length).sum::<u64>();
        if let Some(walk) = &walk {
            ranges.extend(
                walk.bad
                    .iter()
                    .map(|r| json!({"path": r.path, "offset": r.offset, "length": r.length})),
            );
            bad_bytes += walk.bad.iter().map(|r| r.length).sum::<u64>();
        }
        event = event
            .with("bad_bytes", bad_bytes)
            .with("bad_ranges", ranges);
    }
    events
        .emit(&event)
        .map_err(|err| Failure::new(ExitCode::Failure, format!("cannot write the event: {err}")))?;
    Ok(())
}

/// How long `--from-event` waits for the device node to appear: the event can come before udev
/// has made it (a volume just attached).
const DEVICE_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

fn wait_for_device(path: &Path, cancellation: &Cancellation) -> Result<(), Failure> {
    let deadline = Instant::now() + DEVICE_WAIT;
    while !path.exists() {
        if cancellation.is_cancelled() {
            return Err(cancellation.failure("no dump was made"));
        }
        if Instant::now() > deadline {
            return Err(Failure::input(format!(
                "--from-event: {} did not appear within {}s",
                path.display(),
                DEVICE_WAIT.as_secs()
            )));
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    Ok(())
}

/// The tar stream on its way into the pipeline, held to `--rate-limit`.
struct RateLimited<'a, 'b> {
    inner: &'a mut stream::ChunkSink,
    rate: &'b mut source::RateLimit,
}

impl std::io::Write for RateLimited<'_, '_> {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(data)?;
        self.rate.consume(n as u64);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}
