//! `syslog-rotate`: log lines on stdin to rotated, compressed S3 objects with syslog-ng s3()
//! semantics, losing nothing.
//!
//! The story of a run: [`input`] reads stdin on its own thread; [`router`] parses each line
//! ([`message`]), renders its key and text ([`template`]), and appends it to its object's
//! compression stream, cutting parts at `--chunk-size` and finishing objects by size, timestamp,
//! idle time, age, SIGHUP and at the end; [`upload`] stores the parts as multipart uploads and
//! prints one JSON event per stored object. With `--spool-dir`, [`spool`] keeps every line on disk
//! until its object is stored, so a crash loses nothing and a restart duplicates nothing.

pub mod input;
pub mod message;
pub mod router;
pub mod spool;
pub mod template;
pub mod upload;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use aws_sdk_s3::types::{ObjectCannedAcl, ServerSideEncryption, StorageClass};
use clap::{CommandFactory, Parser, ValueEnum};
use tokio::signal::unix::{SignalKind, signal};

use s3pipe::event::{Event, EventSink};
use s3pipe::logging::Verbosity;
use s3pipe::man::ManExtras;
use s3pipe::s3::S3Options;
use s3pipe::signals::Cancellation;
use s3pipe::units::{parse_duration, parse_size};
use s3pipe::{ExitCode, Failure};

use message::InputFormat;
use router::{Compression, Config, Flags, Processor};
use template::Template;
use upload::{Context, KeyChooser, ObjectSettings};

pub const TOOL: &str = "syslog-rotate";

/// S3's smallest part (all but the last), and its largest.
const MIN_CHUNK: u64 = 5 << 20;
const MAX_CHUNK: u64 = 5 << 30;

/// Server-side encryption.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Sse {
    #[value(name = "AES256")]
    Aes256,
    #[value(name = "aws:kms")]
    AwsKms,
}

#[derive(Debug, Parser)]
#[command(
    name = TOOL,
    version,
    about = "Log lines on stdin to rotated, compressed S3 objects with syslog-ng s3() semantics, losing nothing",
    long_about = "Reads log lines on stdin and stores them as S3 objects the way syslog-ng's s3() destination does: \
the key is rendered from --object-key (and --object-key-timestamp) for every line, and an object is finished \
when its stored size reaches --max-object-size, when the rendered timestamp moves on, after --flush-grace-period \
without lines, after --max-object-age, on SIGHUP, and at EOF, SIGTERM or SIGINT (which then exit 0 once \
everything is stored). A later object for the same key gets an index: KEY, KEY-1, KEY-2..., always one past \
the highest index among the objects that exist and the multipart uploads in progress, so no key is ever \
written twice. Objects go up as multipart uploads in --chunk-size parts while lines keep arriving; each is \
one gzip or zstd stream that decodes on its own. One JSON event a stored object goes to stdout.\n\n\
Memory is bounded: at most --max-pending-uploads parts wait for S3, and each open object collects at \
most one part (--max-open-objects caps how many are open); when S3 falls behind, stdin is no longer read \
and the writer blocks. Nothing is dropped: over-long lines are cut into pieces, lines that do \
not parse are kept whole, and both are counted.\n\n\
Without --spool-dir a crash (kill -9, power loss) loses the lines of every object not yet finished (their \
multipart uploads stay open until a lifecycle rule removes them; their keys are never reused). With \
--spool-dir every line is written to a local file before any part holding it is sent, and a restart with \
the same spool stores every unfinished object exactly once under the key it had reserved."
)]
pub struct Args {
    /// Bucket to store the objects in
    #[arg(long, value_name = "BUCKET")]
    pub bucket: String,

    /// Object key template, e.g. '${HOST}/syslog' (macros as in syslog-ng; see TEMPLATES)
    #[arg(long, value_name = "TEMPLATE")]
    pub object_key: String,

    /// Template appended to the key; a line whose rendering differs starts a new object, e.g. '-${YEAR}${MONTH}${DAY}'
    #[arg(long, value_name = "TEMPLATE")]
    pub object_key_timestamp: Option<String>,

    /// Appended to every key after the index; the compression's extension (.gz, .zst) follows it
    #[arg(long, default_value = ".log", value_name = "SUFFIX")]
    pub object_key_suffix: String,

    /// How each line is written into its object
    #[arg(long, default_value = "${MESSAGE}\\n", value_name = "TEMPLATE")]
    pub template: String,

    /// How input lines are parsed
    #[arg(long, value_enum, default_value_t = InputFormat::Plain, value_name = "FORMAT")]
    pub input_format: InputFormat,

    /// Compression of each object (one stream per object)
    #[arg(long, value_enum, default_value_t = Compression::None, value_name = "ALGORITHM")]
    pub compression: Compression,

    /// Compression level: gzip 0-9 (default 6), zstd 1-19 (default 3)
    #[arg(long, value_name = "LEVEL", allow_negative_numbers = true)]
    pub compresslevel: Option<i32>,

    /// Size of each uploaded part of compressed data; at least 5MiB
    #[arg(long, default_value = "5MiB", value_parser = parse_size, value_name = "SIZE")]
    pub chunk_size: u64,

    /// Finish an object once this many bytes are stored (compressed), and start the next index
    #[arg(long, default_value = "5120GiB", value_parser = parse_size, value_name = "SIZE")]
    pub max_object_size: u64,

    /// Part uploads in flight at once
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..=256), value_name = "N")]
    pub upload_threads: u16,

    /// Parts cut but not yet stored; when reached, stdin is not read until one is stored
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u16).range(1..=1024), value_name = "N")]
    pub max_pending_uploads: u16,

    /// Finish an object when no line has arrived for this long (a bare number is minutes, as in syslog-ng)
    #[arg(long, default_value = "60m", value_parser = parse_grace, value_name = "DURATION")]
    pub flush_grace_period: Duration,

    /// Finish an object this long after it was started, even while lines keep arriving
    #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
    pub max_object_age: Option<Duration>,

    /// Objects open at once (each holds up to --chunk-size in memory); past it the longest idle one is finished. 0: no limit
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub max_open_objects: usize,

    /// Lines longer than this are cut into pieces of this size (kept, and counted)
    #[arg(long, default_value = "64KiB", value_parser = parse_size, value_name = "SIZE")]
    pub max_line_length: u64,

    /// Storage class, e.g. STANDARD, STANDARD_IA, GLACIER_IR
    #[arg(long, value_name = "CLASS", value_parser = s3pipe::s3::parse_storage_class)]
    pub storage_class: Option<StorageClass>,

    /// Canned ACL, e.g. private, bucket-owner-full-control
    #[arg(long, value_name = "ACL", value_parser = s3pipe::s3::parse_canned_acl)]
    pub canned_acl: Option<ObjectCannedAcl>,

    /// Server-side encryption
    #[arg(long, value_enum, value_name = "ALGORITHM")]
    pub server_side_encryption: Option<Sse>,

    /// KMS key (id, ARN or alias) for --server-side-encryption aws:kms
    #[arg(long, value_name = "KEY")]
    pub kms_key: Option<String>,

    /// Content-Type of the objects
    #[arg(long, default_value = "application/octet-stream", value_name = "TYPE")]
    pub content_type: String,

    /// Keep every line in this directory until its object is stored; a restart stores what a crash left
    #[arg(long, value_name = "DIR")]
    pub spool_dir: Option<PathBuf>,

    /// When the spool holds this much, finish the largest object and stop reading until uploads free space
    #[arg(long, default_value = "1GiB", value_parser = parse_size, value_name = "SIZE", requires = "spool_dir")]
    pub spool_max_size: u64,

    /// Write the JSON events to FILE (appended) instead of stdout
    #[arg(long, value_name = "FILE")]
    pub events: Option<PathBuf>,

    /// S3 endpoint, syslog-ng's url() (same as --endpoint-url)
    #[arg(long, value_name = "URL", conflicts_with = "endpoint_url")]
    pub url: Option<String>,

    #[command(flatten)]
    pub s3: S3Options,

    #[command(flatten)]
    pub log: Verbosity,
}

fn parse_grace(text: &str) -> Result<Duration, String> {
    match text.trim().parse::<u64>() {
        Ok(minutes) => Ok(Duration::from_secs(minutes * 60)),
        Err(_) => parse_duration(text),
    }
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
                "Ship /var/log/syslog, one gzip object a day per host, at most 256 MiB each:",
                "tail -F /var/log/syslog | syslog-rotate --input-format syslog --bucket logs \\\n    --object-key '${HOST}/syslog' --object-key-timestamp '-${YEAR}${MONTH}${DAY}' \\\n    --max-object-size 256MiB --compression gzip",
            ),
            (
                "The journal as JSON, one object key per program, with a spool that survives crashes:",
                "journalctl -f -o json | syslog-rotate --input-format json --bucket logs \\\n    --object-key 'app/${.SYSLOG_IDENTIFIER}' --template '${ISODATE} ${HOST} ${MSGHDR}${MESSAGE}\\n' \\\n    --compression zstd --spool-dir /var/spool/syslog-rotate",
            ),
            (
                "From cron: ship yesterday's rotated file and exit when it is stored:",
                "zcat /var/log/syslog.2.gz | syslog-rotate --input-format syslog --bucket logs \\\n    --object-key \"$(hostname)/syslog-\" --object-key-timestamp '${YEAR}${MONTH}${DAY}' --compression gzip",
            ),
            (
                "Finish every open object now (logrotate postrotate, or before a shutdown):",
                "kill -HUP $(pidof syslog-rotate)",
            ),
        ],
        notes: vec![
            "TEMPLATES. Literal text with ${MACRO}, $MACRO and ${.json.field}; \\n, \\t and $$ are a newline, a tab and a dollar. Fields: HOST, PROGRAM, PID, MESSAGE (MSG), MSGHDR (PROGRAM[PID]: ), MSGID, RAWMSG (the whole input line), FACILITY, FACILITY_NUM, SEVERITY (LEVEL, PRIORITY), SEVERITY_NUM, PRI. Dates (in UTC): ISODATE, STAMP, DATE, FULLDATE, UNIXTIME, YEAR, MONTH, MONTH_ABBREV, MONTH_NAME, DAY, HOUR, MIN, SEC, MSEC, USEC, WEEKDAY, WEEK_DAY_NAME, WEEK_DAY, WEEK, YEAR_DAY, TZOFFSET. A bare date macro and its S_ form use the message's own time (the time it was read when the line carries none); the R_ form uses the time it was read. An unknown macro is a usage error.",
            "ROTATION. A new object is started when the stored (compressed) size reaches --max-object-size; when a line's rendered --object-key-timestamp differs from its object's and its message time is later (an older time never reopens a finished object: it goes to a backfill object whose key gets the next index); after --flush-grace-period without lines; after --max-object-age; on SIGHUP; and at EOF, SIGTERM and SIGINT, after which the tool exits 0 once everything is stored. An object may exceed --max-object-size by the data the compressor holds back (tens of KiB) and one line.",
            "KEYS. KEY is the rendered object key and timestamp; objects are stored as KEY+SUFFIX, then KEY-1+SUFFIX, KEY-2+SUFFIX..., where SUFFIX is --object-key-suffix plus .gz or .zst. A new object takes one past the highest index among the existing objects, the multipart uploads in progress and the keys reserved by this process and its spool, so neither a restart nor a second instance overwrites an object. (Two instances choosing an index for the same key at the same moment can still race.)",
            "EVENTS. Each stored object prints {\"event\":\"object_stored\",\"tool\":\"syslog-rotate\",\"time\":...,\"url\",\"bucket\",\"key\",\"size\" (bytes before compression),\"compressed_size\" (bytes stored),\"compression\",\"lines\",\"malformed_lines\",\"first_message_time\",\"last_message_time\",\"sha256\" (of the stored bytes),\"etag\",\"parts\",\"reason\" (size, timestamp, grace, age, hup, eof, signal, spool-full, open-limit, parts, recovered, input-error)}. At the end, {\"event\":\"summary\",...} counts lines, bytes, objects, long_lines, invalid_utf8, unparsed and recovered.",
            "CRASHES. Without --spool-dir a crash loses the lines of the objects not yet finished. With --spool-dir, every rendered line is written to DIR/ID.data, and the object's key to DIR/ID.meta, before any part holding it goes to S3; both are removed once the object is stored. A restart with the same spool stores each leftover entry exactly once under its reserved key (aborting any multipart upload left on it, or just removing the entry if the object was stored before the crash), then reads stdin. Lines read but not yet written to the spool (at most one 256 KiB buffer) are lost on kill -9. Receive-time macros of recovered lines keep the values they were rendered with.",
        ],
        exit_notes: vec![
            "EOF, SIGTERM and SIGINT all finish and store every open object, then exit 0. A second SIGINT or SIGTERM exits at once. An S3 error is retried with back-off (the SDK's --max-attempts, in up to four rounds); a permanent error (no such bucket: 3; access denied: 4; unreachable: 8) aborts the multipart uploads in progress and exits non-zero, leaving the spool, if any, for the next run. A read error on stdin stores what was read, then exits 6.",
        ],
        environment: vec![],
        uses_s3: true,
        see_also: vec![
            "s3-put-multipart(1)",
            "s3-get(1)",
            "syslog-ng(8)",
            "logrotate(8)",
        ],
    }
}

fn build_config(args: &Args) -> Result<Config, Failure> {
    let template = Template::parse(&args.template).map_err(Failure::usage)?;
    let object_key = Template::parse(&args.object_key).map_err(Failure::usage)?;
    if object_key.is_empty() {
        return Err(Failure::usage("--object-key must not be empty"));
    }
    let timestamp = args
        .object_key_timestamp
        .as_deref()
        .map(Template::parse)
        .transpose()
        .map_err(Failure::usage)?;
    if !(MIN_CHUNK..=MAX_CHUNK).contains(&args.chunk_size) {
        return Err(Failure::usage(format!(
            "--chunk-size must be between 5MiB and 5GiB (S3's part limits), not {}",
            args.chunk_size
        )));
    }
    if args.max_object_size == 0 {
        return Err(Failure::usage("--max-object-size must be more than 0"));
    }
    if args.max_line_length == 0 {
        return Err(Failure::usage("--max-line-length must be more than 0"));
    }
    if args.flush_grace_period.is_zero() {
        return Err(Failure::usage("--flush-grace-period must be more than 0"));
    }
    let level = args
        .compresslevel
        .unwrap_or_else(|| args.compression.default_level());
    match args.compression {
        Compression::Gzip if !(0..=9).contains(&level) => {
            return Err(Failure::usage("--compresslevel for gzip is 0 to 9"));
        }
        Compression::Zstd if !(1..=19).contains(&level) => {
            return Err(Failure::usage("--compresslevel for zstd is 1 to 19"));
        }
        _ => {}
    }
    let extension = args.compression.extension();
    let suffix = if args.object_key_suffix.ends_with(extension) {
        args.object_key_suffix.clone()
    } else {
        format!("{}{extension}", args.object_key_suffix)
    };
    Ok(Config {
        format: args.input_format,
        template,
        object_key,
        timestamp,
        suffix,
        compression: args.compression,
        level,
        chunk_size: args.chunk_size,
        max_object_size: args.max_object_size,
        grace: args.flush_grace_period,
        max_age: args.max_object_age,
        max_line: args.max_line_length.min(usize::MAX as u64) as usize,
        max_open: args.max_open_objects,
    })
}

/// The work of one run.
pub async fn run(mut args: Args, cancellation: Cancellation) -> Result<(), Failure> {
    let cfg = build_config(&args)?;
    if args.kms_key.is_some() && args.server_side_encryption != Some(Sse::AwsKms) {
        return Err(Failure::usage(
            "--kms-key needs --server-side-encryption aws:kms",
        ));
    }
    if let Some(url) = args.url.take() {
        args.s3.endpoint_url = Some(url);
    }
    let events = EventSink::from_option(args.events.as_deref(), EventSink::stdout)
        .map_err(|err| Failure::usage(format!("cannot open the events file: {err}")))?;
    let spool = args
        .spool_dir
        .as_deref()
        .map(|dir| spool::Spool::open(dir, args.spool_max_size))
        .transpose()?;
    let client = args.s3.client().await?;
    client
        .head_bucket()
        .bucket(&args.bucket)
        .send()
        .await
        .map_err(|err| Failure::from_sdk(format!("cannot use bucket {}", args.bucket), &err))?;

    let settings = ObjectSettings {
        bucket: args.bucket.clone(),
        content_type: args.content_type.clone(),
        storage_class: args.storage_class.clone(),
        acl: args.canned_acl.clone(),
        sse: args.server_side_encryption.map(|sse| match sse {
            Sse::Aes256 => ServerSideEncryption::Aes256,
            Sse::AwsKms => ServerSideEncryption::AwsKms,
        }),
        kms_key: args.kms_key.clone(),
    };
    let ctx = Arc::new(Context::new(
        client.clone(),
        settings,
        usize::from(args.upload_threads),
        usize::from(args.max_pending_uploads),
        events,
    ));
    let flags = Arc::new(Flags::default());

    let mut hangup = signal(SignalKind::hangup())
        .map_err(|err| Failure::new(ExitCode::Failure, format!("cannot watch SIGHUP: {err}")))?;
    let hup_flags = flags.clone();
    tokio::spawn(async move {
        while hangup.recv().await.is_some() {
            hup_flags.hangup.store(true, Ordering::SeqCst);
        }
    });
    let stop_flags = flags.clone();
    let token = cancellation.token().clone();
    tokio::spawn(async move {
        token.cancelled().await;
        stop_flags.stop.store(true, Ordering::SeqCst);
    });

    let max_line = cfg.max_line;
    let chooser = KeyChooser::new(client, args.bucket.clone());
    let mut processor = Processor::new(
        cfg,
        ctx.clone(),
        tokio::runtime::Handle::current(),
        chooser,
        spool,
    );
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    let thread_flags = flags.clone();
    std::thread::Builder::new()
        .name("lines".into())
        .spawn(move || {
            let result = processor.recover().and_then(|()| {
                let (tx, rx) = std::sync::mpsc::sync_channel(4);
                std::thread::Builder::new()
                    .name("stdin".into())
                    .spawn(move || input::read(std::io::stdin().lock(), tx, max_line))
                    .map_err(|err| {
                        Failure::new(ExitCode::Failure, format!("cannot start a thread: {err}"))
                    })?;
                processor.run(rx, &thread_flags)
            });
            let _ = done_tx.send((result, processor.stats.clone()));
        })
        .map_err(|err| Failure::new(ExitCode::Failure, format!("cannot start a thread: {err}")))?;

    let (result, stats) = done_rx
        .await
        .map_err(|_| Failure::new(ExitCode::Failure, "the line processor stopped unexpectedly"))?;
    ctx.tracker.close();
    ctx.tracker.wait().await;
    if let Some(failure) = ctx.take_failure() {
        ctx.abort_open_uploads().await;
        return Err(with_spool_note(failure, args.spool_dir.as_deref()));
    }
    if let Err(failure) = &result
        && failure.exit != ExitCode::Input
    {
        ctx.abort_open_uploads().await;
    }
    let summary = Event::new(TOOL, "summary")
        .with("bucket", args.bucket.clone())
        .with("lines", stats.lines)
        .with("bytes", stats.bytes)
        .with("objects", ctx.objects_stored.load(Ordering::SeqCst))
        .with("long_lines", stats.long_lines)
        .with("invalid_utf8", stats.invalid_utf8)
        .with("unparsed", stats.unparsed)
        .with("recovered", stats.recovered);
    if let Err(err) = ctx.events.emit(&summary) {
        tracing::warn!("cannot write the event: {err}");
    }
    if let Some(signal) = cancellation.signal() {
        tracing::info!("stopped by signal {signal}; every object is stored");
    }
    result.map_err(|failure| with_spool_note(failure, args.spool_dir.as_deref()))
}

fn with_spool_note(mut failure: Failure, spool: Option<&std::path::Path>) -> Failure {
    if let Some(dir) = spool {
        failure.message.push_str(&format!(
            "; the spool in {} keeps every line not yet stored for the next run",
            dir.display()
        ));
    }
    failure
}

/// Entry point of the binary.
pub fn main() -> ! {
    let args = Args::parse();
    let verbosity = args.log.clone();
    s3pipe::cli::run(TOOL, &verbosity, |cancellation| run(args, cancellation))
}
