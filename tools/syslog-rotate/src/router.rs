//! The line processor: parses each line, renders its object key and its text, appends it to the
//! right object's compression stream, and decides when an object is finished.
//!
//! It runs on a thread of its own and talks to S3 only through [`crate::upload`]: a part is cut
//! whenever an object's compressed stream reaches `--chunk-size`, and handing it over waits for a
//! `--max-pending-uploads` permit, which is what stops the reading of stdin when S3 falls behind.
//!
//! Rotation follows syslog-ng's s3() page: a new object when the stored (compressed) size reaches
//! `--max-object-size`, when the rendered `--object-key-timestamp` changes, after
//! `--flush-grace-period` without lines, and (our addition) after `--max-object-age`. Unlike
//! syslog-ng, "newer" and "older" compare message times, not the rendered text, so `Apr01` does
//! not count as older than `Mar31`. An older timestamp never reopens a finished object: it goes to
//! a "backfill" object of its own (at most one per object key), whose key gets the next index.

use std::collections::HashMap;
use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::ValueEnum;
use sha2::{Digest, Sha256};
use tokio::runtime::Handle;
use tokio::sync::mpsc::UnboundedSender;

use s3pipe::{ExitCode, Failure};

use crate::input::Input;
use crate::message::{InputFormat, Message, parse};
use crate::spool::{Meta, Spool, SpoolFile};
use crate::template::{Template, Times};
use crate::upload::{
    Context, KeyChooser, ObjectMessage, SpoolEntry, Summary, abort_uploads_on, start_object,
    stored_spool_id,
};

/// S3 allows 10,000 parts; an object is finished one part before, whatever its size.
const MAX_PARTS: i32 = 9_999;

/// Rendered bytes collected per object before they are compressed.
const BATCH: usize = 64 << 10;

/// How often idle objects, signals and spool syncs are looked at when no input arrives.
const TICK: Duration = Duration::from_millis(100);

/// Compression of each object: one stream per object, so each decodes on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Compression {
    /// Store the rendered lines as they are
    #[value(alias = "no")]
    None,
    /// One gzip stream per object (gunzip, zcat)
    Gzip,
    /// One zstd frame per object (zstd -d, zstdcat)
    Zstd,
}

impl Compression {
    pub fn name(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Gzip => "gzip",
            Compression::Zstd => "zstd",
        }
    }

    pub fn extension(self) -> &'static str {
        match self {
            Compression::None => "",
            Compression::Gzip => ".gz",
            Compression::Zstd => ".zst",
        }
    }

    pub fn default_level(self) -> i32 {
        match self {
            Compression::None => 0,
            Compression::Gzip => 6,
            Compression::Zstd => 3,
        }
    }

    fn from_name(name: &str) -> Option<Self> {
        Compression::from_str(name, true).ok()
    }
}

enum Encoder {
    None(Vec<u8>),
    Gzip(flate2::write::GzEncoder<Vec<u8>>),
    Zstd(zstd::stream::write::Encoder<'static, Vec<u8>>),
}

impl std::fmt::Debug for Encoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Encoder")
    }
}

impl Encoder {
    fn new(compression: Compression, level: i32) -> Result<Self, Failure> {
        Ok(match compression {
            Compression::None => Encoder::None(Vec::new()),
            Compression::Gzip => Encoder::Gzip(flate2::write::GzEncoder::new(
                Vec::new(),
                flate2::Compression::new(level.clamp(0, 9) as u32),
            )),
            Compression::Zstd => Encoder::Zstd(
                zstd::stream::write::Encoder::new(Vec::new(), level)
                    .map_err(|err| Failure::usage(format!("zstd level {level}: {err}")))?,
            ),
        })
    }

    fn write(&mut self, data: &[u8]) -> Result<(), Failure> {
        let result = match self {
            Encoder::None(out) => {
                out.extend_from_slice(data);
                Ok(())
            }
            Encoder::Gzip(encoder) => encoder.write_all(data),
            Encoder::Zstd(encoder) => encoder.write_all(data),
        };
        result.map_err(|err| Failure::new(ExitCode::Failure, format!("compression: {err}")))
    }

    fn output(&mut self) -> &mut Vec<u8> {
        match self {
            Encoder::None(out) => out,
            Encoder::Gzip(encoder) => encoder.get_mut(),
            Encoder::Zstd(encoder) => encoder.get_mut(),
        }
    }

    fn finish(self) -> Result<Vec<u8>, Failure> {
        let result = match self {
            Encoder::None(out) => Ok(out),
            Encoder::Gzip(encoder) => encoder.finish(),
            Encoder::Zstd(encoder) => encoder.finish(),
        };
        result.map_err(|err| Failure::new(ExitCode::Failure, format!("compression: {err}")))
    }
}

/// Everything the processor needs from the command line.
#[derive(Debug)]
pub struct Config {
    pub format: InputFormat,
    pub template: Template,
    pub object_key: Template,
    pub timestamp: Option<Template>,
    /// `--object-key-suffix` plus the compression's extension.
    pub suffix: String,
    pub compression: Compression,
    pub level: i32,
    pub chunk_size: u64,
    pub max_object_size: u64,
    pub grace: Duration,
    pub max_age: Option<Duration>,
    pub max_line: usize,
    /// Objects open at once; 0 for no limit.
    pub max_open: usize,
}

/// Counters for the summary event.
#[derive(Debug, Default, Clone)]
pub struct Stats {
    pub lines: u64,
    pub bytes: u64,
    pub long_lines: u64,
    pub invalid_utf8: u64,
    pub unparsed: u64,
    pub objects: u64,
    pub recovered: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slot {
    Current,
    Backfill,
}

#[derive(Debug)]
struct Object {
    key: String,
    object_key: String,
    timestamp: String,
    slot: Slot,
    compression: Compression,
    encoder: Encoder,
    /// Rendered lines not yet given to the encoder: compressing 64 KiB at a time instead of a
    /// line at a time is several times faster, with many objects open at once above all.
    batch: Vec<u8>,
    parts: i32,
    sent: u64,
    size: u64,
    lines: u64,
    malformed: u64,
    first_time: Option<i64>,
    last_time: Option<i64>,
    max_time: i64,
    sha256: Sha256,
    opened: Instant,
    last_write: Instant,
    tx: UnboundedSender<ObjectMessage>,
    spool: Option<SpoolFile>,
}

#[derive(Debug, Default)]
struct Slots {
    current: Option<u64>,
    backfill: Option<u64>,
}

/// Signals the processor watches.
#[derive(Debug, Default)]
pub struct Flags {
    pub stop: AtomicBool,
    pub hangup: AtomicBool,
}

#[derive(Debug, Default)]
struct KeyCache {
    seconds: Option<(i64, i64)>,
    buffer: Vec<u8>,
    object_key: String,
    timestamp: String,
}

/// The processor's state.
#[derive(Debug)]
pub struct Processor {
    cfg: Config,
    ctx: Arc<Context>,
    handle: Handle,
    objects: HashMap<u64, Object>,
    keys: HashMap<String, Slots>,
    next_id: u64,
    chooser: KeyChooser,
    spool: Option<Spool>,
    pub stats: Stats,
    scratch: Vec<u8>,
    cache: KeyCache,
    last_sync: Instant,
}

impl Processor {
    pub fn new(
        cfg: Config,
        ctx: Arc<Context>,
        handle: Handle,
        chooser: KeyChooser,
        spool: Option<Spool>,
    ) -> Self {
        Processor {
            cfg,
            ctx,
            handle,
            objects: HashMap::new(),
            keys: HashMap::new(),
            next_id: 0,
            chooser,
            spool,
            stats: Stats::default(),
            scratch: Vec::with_capacity(4096),
            cache: KeyCache::default(),
            last_sync: Instant::now(),
        }
    }

    /// Stores what an earlier run left in the spool, before reading anything new.
    pub fn recover(&mut self) -> Result<(), Failure> {
        let Some(spool) = &self.spool else {
            return Ok(());
        };
        let leftovers = spool.leftovers()?;
        for (meta, _, _) in &leftovers {
            self.chooser.reserve(&meta.key);
        }
        for (mut meta, meta_path, data_path) in leftovers {
            let client = self.ctx.client.clone();
            let bucket = self.ctx.settings.bucket.clone();
            let stored = self
                .handle
                .block_on(stored_spool_id(&client, &bucket, &meta.key))?;
            match stored {
                Some(Some(id)) if id == meta.id => {
                    tracing::info!(key = meta.key, "spooled object was already stored");
                    let _ = std::fs::remove_file(&data_path);
                    let _ = std::fs::remove_file(&meta_path);
                    continue;
                }
                Some(_) => {
                    // Someone else wrote the key we had reserved: take the next free index.
                    let key = self
                        .handle
                        .block_on(self.chooser.choose(&meta.base, &meta.suffix))?;
                    tracing::warn!(
                        old = meta.key,
                        new = key,
                        "reserved key was taken by another writer; storing under a new key"
                    );
                    meta.key = key;
                    let spool = self.spool.as_ref().expect("checked above");
                    // Rewrite the entry atomically under the new key.
                    let fresh = spool.create(&Meta {
                        id: meta.id.clone(),
                        ..meta.clone()
                    })?;
                    drop(fresh);
                }
                None => {
                    self.handle
                        .block_on(abort_uploads_on(&client, &bucket, &meta.key))?;
                }
            }
            let spool = self.spool.as_ref().expect("checked above");
            let file = spool.reopen(&meta, meta_path, data_path);
            let data = file.read_all()?;
            let compression =
                Compression::from_name(&meta.compression).unwrap_or(Compression::None);
            let id = self.start(
                meta.key.clone(),
                String::new(),
                String::new(),
                Slot::Backfill,
                compression,
                meta.level,
                Some(file),
                false,
            )?;
            for piece in data.chunks(1 << 20) {
                let lines = memchr::memchr_iter(b'\n', piece).count() as u64;
                self.write(id, piece, lines, false, None)?;
            }
            self.stats.recovered += 1;
            self.finish(id, "recovered")?;
        }
        Ok(())
    }

    /// Reads input until EOF, a signal or a failure, then finishes every object.
    pub fn run(&mut self, input: Receiver<Input>, flags: &Flags) -> Result<(), Failure> {
        loop {
            if self.ctx.failed.is_cancelled() {
                return Err(stopped());
            }
            match input.recv_timeout(TICK) {
                Ok(Input::Data {
                    data,
                    received,
                    continues_long_line,
                    ends_in_long_line,
                }) => {
                    self.chunk(&data, received, continues_long_line, ends_in_long_line)?;
                }
                Ok(Input::Eof) | Err(RecvTimeoutError::Disconnected) => {
                    return self.finish_all("eof");
                }
                Ok(Input::Error(err)) => {
                    self.finish_all("input-error")?;
                    return Err(Failure::input(format!("cannot read stdin: {err}")));
                }
                Err(RecvTimeoutError::Timeout) => {}
            }
            if flags.stop.load(Ordering::SeqCst) {
                return self.finish_all("signal");
            }
            if flags.hangup.swap(false, Ordering::SeqCst) {
                tracing::info!("SIGHUP: finishing every open object");
                self.finish_all("hup")?;
            }
            self.housekeeping()?;
        }
    }

    /// Idle and age limits, spool syncs, and the spool size limit.
    fn housekeeping(&mut self) -> Result<(), Failure> {
        let now = Instant::now();
        let expired: Vec<(u64, &'static str)> = self
            .objects
            .iter()
            .filter_map(|(id, object)| {
                if now.duration_since(object.last_write) >= self.cfg.grace {
                    Some((*id, "grace"))
                } else if self
                    .cfg
                    .max_age
                    .is_some_and(|age| now.duration_since(object.opened) >= age)
                {
                    Some((*id, "age"))
                } else {
                    None
                }
            })
            .collect();
        for (id, reason) in expired {
            self.finish(id, reason)?;
        }
        if self.spool.is_some() {
            if now.duration_since(self.last_sync) >= Duration::from_secs(1) {
                self.last_sync = now;
                for object in self.objects.values_mut() {
                    if let Some(file) = &mut object.spool {
                        let written = file.sync()?;
                        self.ctx.spool_bytes.fetch_add(written, Ordering::SeqCst);
                    }
                }
            }
            self.limit_spool()?;
        }
        Ok(())
    }

    /// A full spool finishes the object holding the most of it, then waits for uploads to free
    /// space: reading stops meanwhile (backpressure), nothing is dropped.
    fn limit_spool(&mut self) -> Result<(), Failure> {
        let Some(max) = self.spool.as_ref().map(|s| s.max_bytes) else {
            return Ok(());
        };
        while self.ctx.spool_bytes.load(Ordering::SeqCst) > max {
            let largest = self
                .objects
                .iter()
                .filter_map(|(id, o)| o.spool.as_ref().map(|f| (*id, f.bytes)))
                .max_by_key(|(_, bytes)| *bytes);
            if let Some((id, _)) = largest {
                tracing::info!("spool full: finishing the object that holds most of it");
                self.finish(id, "spool-full")?;
                continue;
            }
            if self.ctx.tracker.is_empty() {
                break;
            }
            if self.ctx.failed.is_cancelled() {
                return Err(stopped());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    fn chunk(
        &mut self,
        data: &[u8],
        received: i64,
        continues_long_line: bool,
        ends_in_long_line: bool,
    ) -> Result<(), Failure> {
        let mut start = 0;
        let mut first = true;
        for end in memchr::memchr_iter(b'\n', data) {
            let mut line = &data[start..end];
            if line.last() == Some(&b'\r') {
                line = &line[..line.len() - 1];
            }
            let continuation = first && continues_long_line;
            self.pieces(line, received, false, continuation)?;
            first = false;
            start = end + 1;
        }
        if start < data.len() {
            // A final line without a newline (at EOF), or the start of an over-long line.
            let continuation = first && continues_long_line;
            self.pieces(
                &data[start..],
                received,
                ends_in_long_line && !continuation,
                continuation,
            )?;
        }
        if self.spool.is_some() {
            for object in self.objects.values_mut() {
                if let Some(file) = &mut object.spool {
                    let written = file.flush()?;
                    self.ctx.spool_bytes.fetch_add(written, Ordering::SeqCst);
                }
            }
            self.limit_spool()?;
        }
        Ok(())
    }

    /// A line, cut into `--max-line-length` pieces when it is longer: kept whole, and counted
    /// once as a long line (`starts_long`: the start of a line the reader had to cut;
    /// `continuation`: the rest of such a line, already counted).
    fn pieces(
        &mut self,
        line: &[u8],
        received: i64,
        starts_long: bool,
        continuation: bool,
    ) -> Result<(), Failure> {
        let too_long = line.len() > self.cfg.max_line;
        if starts_long || (too_long && !continuation) {
            self.stats.long_lines += 1;
        }
        let malformed = starts_long || continuation || too_long;
        if !too_long {
            return self.line(line, received, malformed);
        }
        for piece in line.chunks(self.cfg.max_line) {
            self.line(piece, received, true)?;
        }
        Ok(())
    }

    fn line(&mut self, raw: &[u8], received: i64, long: bool) -> Result<(), Failure> {
        self.stats.lines += 1;
        let mut malformed = long;
        if std::str::from_utf8(raw).is_err() {
            self.stats.invalid_utf8 += 1;
            malformed = true;
        }
        let message = parse(self.cfg.format, raw, received);
        if message.unparsed {
            self.stats.unparsed += 1;
            malformed = true;
        }
        let time = message.time.unwrap_or(received);
        let times = Times {
            message: time,
            received,
        };
        self.keys_for(&message, times);
        let id = self.route(time)?;
        self.scratch.clear();
        if self.cfg.template.is_message_newline() {
            self.scratch.extend_from_slice(&message.message);
            self.scratch.push(b'\n');
        } else {
            self.cfg.template.render(&message, times, &mut self.scratch);
        }
        let rendered = std::mem::take(&mut self.scratch);
        let result = self.write(id, &rendered, 1, malformed, Some(time));
        self.scratch = rendered;
        result
    }

    /// Renders the object key and timestamp of `message` into the cache.
    fn keys_for(&mut self, message: &Message<'_>, times: Times) {
        let per_second = self.cfg.object_key.per_second()
            && self.cfg.timestamp.as_ref().is_none_or(Template::per_second);
        let seconds = (
            times.message.div_euclid(1_000_000),
            times.received.div_euclid(1_000_000),
        );
        if per_second && self.cache.seconds == Some(seconds) {
            return;
        }
        // Rendered into a reused buffer, and a new String made only when the text changed.
        let buffer = &mut self.cache.buffer;
        buffer.clear();
        self.cfg.object_key.render(message, times, buffer);
        if buffer.as_slice() != self.cache.object_key.as_bytes() {
            self.cache.object_key = String::from_utf8_lossy(buffer).into_owned();
        }
        if let Some(timestamp) = &self.cfg.timestamp {
            buffer.clear();
            timestamp.render(message, times, buffer);
            if buffer.as_slice() != self.cache.timestamp.as_bytes() {
                self.cache.timestamp = String::from_utf8_lossy(buffer).into_owned();
            }
        }
        self.cache.seconds = per_second.then_some(seconds);
    }

    /// The object the current line goes to, opening (and finishing) objects as rotation says.
    fn route(&mut self, time: i64) -> Result<u64, Failure> {
        let (current, backfill) = match self.keys.get(&self.cache.object_key) {
            Some(slots) => (slots.current, slots.backfill),
            None => (None, None),
        };
        let timestamp = &self.cache.timestamp;
        if let Some(id) = current
            && self.objects[&id].timestamp == *timestamp
        {
            return Ok(id);
        }
        if let Some(id) = backfill
            && self.objects[&id].timestamp == *timestamp
        {
            return Ok(id);
        }
        match current {
            None => self.open(Slot::Current),
            Some(id) if time > self.objects[&id].max_time => {
                self.finish(id, "timestamp")?;
                self.open(Slot::Current)
            }
            Some(_) => {
                if let Some(id) = backfill {
                    self.finish(id, "timestamp")?;
                }
                self.open(Slot::Backfill)
            }
        }
    }

    fn open(&mut self, slot: Slot) -> Result<u64, Failure> {
        if self.cfg.max_open > 0 && self.objects.len() >= self.cfg.max_open {
            // Each open object holds up to a part in memory: make room by finishing the one
            // that has waited longest for a line.
            let idle = self
                .objects
                .iter()
                .min_by_key(|(_, o)| o.last_write)
                .map(|(id, _)| *id);
            if let Some(id) = idle {
                self.finish(id, "open-limit")?;
            }
        }
        let object_key = self.cache.object_key.clone();
        let timestamp = self.cache.timestamp.clone();
        let base = format!("{object_key}{timestamp}");
        let key = self
            .handle
            .block_on(self.chooser.choose(&base, &self.cfg.suffix))?;
        let file = match &self.spool {
            Some(spool) => Some(spool.create(&Meta {
                id: spool.new_id(),
                key: key.clone(),
                base,
                suffix: self.cfg.suffix.clone(),
                compression: self.cfg.compression.name().to_string(),
                level: self.cfg.level,
            })?),
            None => None,
        };
        tracing::info!(key, "new object");
        self.start(
            key,
            object_key,
            timestamp,
            slot,
            self.cfg.compression,
            self.cfg.level,
            file,
            true,
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn start(
        &mut self,
        key: String,
        object_key: String,
        timestamp: String,
        slot: Slot,
        compression: Compression,
        level: i32,
        file: Option<SpoolFile>,
        track: bool,
    ) -> Result<u64, Failure> {
        let entry = file.as_ref().map(|f| SpoolEntry {
            id: f.id.clone(),
            paths: f.paths(),
        });
        let tx = start_object(&self.ctx, &self.handle, key.clone(), entry);
        let id = self.next_id;
        self.next_id += 1;
        let now = Instant::now();
        if track {
            let slots = self.keys.entry(object_key.clone()).or_default();
            match slot {
                Slot::Current => slots.current = Some(id),
                Slot::Backfill => slots.backfill = Some(id),
            }
        }
        self.objects.insert(
            id,
            Object {
                key,
                object_key,
                timestamp,
                slot,
                compression,
                encoder: Encoder::new(compression, level)?,
                batch: Vec::new(),
                parts: 0,
                sent: 0,
                size: 0,
                lines: 0,
                malformed: 0,
                first_time: None,
                last_time: None,
                max_time: i64::MIN,
                sha256: Sha256::new(),
                opened: now,
                last_write: now,
                tx,
                spool: file,
            },
        );
        Ok(id)
    }

    /// Appends rendered bytes to an object (and its spool file), cutting parts and finishing it
    /// at `--max-object-size`.
    fn write(
        &mut self,
        id: u64,
        bytes: &[u8],
        lines: u64,
        malformed: bool,
        time: Option<i64>,
    ) -> Result<(), Failure> {
        self.stats.bytes += bytes.len() as u64;
        let chunk_size = self.cfg.chunk_size as usize;
        let object = self.objects.get_mut(&id).expect("routed objects are open");
        if let (Some(file), Some(_)) = (&mut object.spool, time) {
            file.push(bytes);
        }
        object.batch.extend_from_slice(bytes);
        if object.batch.len() >= BATCH {
            object.encoder.write(&object.batch)?;
            object.batch.clear();
        }
        object.size += bytes.len() as u64;
        object.lines += lines;
        object.malformed += u64::from(malformed);
        object.last_write = Instant::now();
        if let Some(time) = time {
            object.first_time = Some(object.first_time.map_or(time, |t| t.min(time)));
            object.last_time = Some(time);
            object.max_time = object.max_time.max(time);
        }
        if object.encoder.output().len() >= chunk_size {
            self.cut_part(id)?;
        }
        let object = &mut self.objects.get_mut(&id).expect("still open");
        let mut stored = object.sent + object.encoder.output().len() as u64;
        if object.compression == Compression::None {
            stored += object.batch.len() as u64;
        }
        if stored >= self.cfg.max_object_size {
            self.finish(id, "size")?;
        } else if object.parts >= MAX_PARTS {
            self.finish(id, "parts")?;
        }
        Ok(())
    }

    /// Hands the compressed bytes so far to the object's task as the next part.
    fn cut_part(&mut self, id: u64) -> Result<(), Failure> {
        let object = self.objects.get_mut(&id).expect("open");
        if let Some(file) = &mut object.spool {
            // The lines must be in the spool before S3 holds any of them.
            let written = file.flush()?;
            self.ctx.spool_bytes.fetch_add(written, Ordering::SeqCst);
        }
        if !object.batch.is_empty() {
            object.encoder.write(&object.batch)?;
            object.batch.clear();
        }
        let data = std::mem::take(object.encoder.output());
        object.sha256.update(&data);
        object.sent += data.len() as u64;
        object.parts += 1;
        let number = object.parts;
        let permit = self
            .handle
            .block_on(self.ctx.pending.clone().acquire_owned())
            .map_err(|_| stopped())?;
        object
            .tx
            .send(ObjectMessage::Part {
                number,
                data: Bytes::from(data),
                permit,
            })
            .map_err(|_| stopped())
    }

    /// Finishes an object: the rest of its stream goes up and the upload is completed.
    fn finish(&mut self, id: u64, reason: &'static str) -> Result<(), Failure> {
        let Some(mut object) = self.objects.remove(&id) else {
            return Ok(());
        };
        if let Some(slots) = self.keys.get_mut(&object.object_key) {
            match object.slot {
                Slot::Current if slots.current == Some(id) => slots.current = None,
                Slot::Backfill if slots.backfill == Some(id) => slots.backfill = None,
                _ => {}
            }
            if slots.current.is_none() && slots.backfill.is_none() {
                self.keys.remove(&object.object_key);
            }
        }
        let mut spool_bytes = 0;
        if let Some(file) = &mut object.spool {
            let written = file.sync()?;
            self.ctx.spool_bytes.fetch_add(written, Ordering::SeqCst);
            spool_bytes = file.bytes;
        }
        object.encoder.write(&object.batch)?;
        object.batch = Vec::new();
        let data = object.encoder.finish()?;
        object.sha256.update(&data);
        let summary = Summary {
            size: object.size,
            compressed_size: object.sent + data.len() as u64,
            lines: object.lines,
            malformed: object.malformed,
            first_time: object.first_time,
            last_time: object.last_time,
            sha256: hex::encode(object.sha256.finalize()),
            reason,
            compression: object.compression.name(),
            spool_bytes,
        };
        tracing::info!(key = object.key, reason, "object finished");
        let permit = self
            .handle
            .block_on(self.ctx.pending.clone().acquire_owned())
            .map_err(|_| stopped())?;
        self.stats.objects += 1;
        object
            .tx
            .send(ObjectMessage::Finish {
                number: object.parts + 1,
                data: Bytes::from(data),
                permit,
                summary,
            })
            .map_err(|_| stopped())
    }

    pub fn finish_all(&mut self, reason: &'static str) -> Result<(), Failure> {
        let mut ids: Vec<u64> = self.objects.keys().copied().collect();
        ids.sort_unstable();
        for id in ids {
            self.finish(id, reason)?;
        }
        Ok(())
    }
}

/// The failure seen when the upload side has already failed; its own failure is what gets reported.
fn stopped() -> Failure {
    Failure::new(ExitCode::Failure, "stopped after an upload failure")
}
