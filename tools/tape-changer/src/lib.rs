//! `tape-changer`: Amanda-compatible virtual tapes on S3, as a pipe tool.
//!
//! Amanda's S3 device keeps each "tape" under a key prefix (a slot); chg-multi rotates through
//! the slots. This tool writes and reads the very same objects (see [`tape`] for the key names,
//! [`header`] for the 32 KiB text headers), so a DailySet can move between Amanda and
//! tape-changer in either direction, and adds what Amanda's users miss: Content-MD5 on every PUT,
//! a Content-Type on every object, a manifest per file so that a lost or damaged block fails a
//! restore instead of silently shortening it, and parallel uploads that work with current
//! libcurl-free clients.
//!
//! The story of a run: the configuration ([`config`]) names the slots ([`slots`]); the state
//! file ([`state`]) caches what each holds and is locked for the whole run; `load next` asks the
//! tape cycle ([`cycle`]) which tape may be overwritten; `write` ([`writer`]) and `read`
//! ([`reader`]) move the bytes.

pub mod config;
pub mod cycle;
pub mod header;
pub mod reader;
pub mod slots;
pub mod state;
pub mod tape;
pub mod writer;

use std::path::PathBuf;

use clap::{CommandFactory, Parser, Subcommand};
use serde_json::{Value, json};

use s3pipe::event::{Event, EventSink};
use s3pipe::logging::Verbosity;
use s3pipe::man::ManExtras;
use s3pipe::s3::S3Options;
use s3pipe::signals::Cancellation;
use s3pipe::units::{format_size, parse_size};
use s3pipe::{ExitCode, Failure};

use config::{Config, Overrides};
use header::FileHeader;
use slots::Slot;
use state::{FileRecord, SlotState, State, StateLock};
use tape::{Layout, Tapes};

pub const TOOL: &str = "tape-changer";

#[derive(Debug, Parser)]
#[command(
    name = TOOL,
    version,
    about = "Amanda-compatible virtual tapes on S3: label, load, write, read, inventory",
    long_about = "Keeps Amanda-style virtual tapes on S3, in Amanda 3.5's own S3 device format, so that \
Amanda and tape-changer read what the other wrote. Slots are key prefixes written with chg-multi's syntax \
(s3:BUCKET/DailySet1/slot-{01..10}/); each holds a labelled tape of numbered dump files. `write` turns stdin \
into the next file of the loaded tape, `read` writes a file back to stdout, and `load next` picks the tape the \
tape cycle allows to be overwritten.\n\n\
Settings come from a TOML file (--config) with amanda.conf's names: slots, labelstr, tapecycle, autolabel, \
org, tape_length, state_file and a [device] table of Amanda S3 device properties (BLOCK_SIZE, NB_THREADS_BACKUP, \
NB_THREADS_RECOVERY, S3_STORAGE_CLASS, S3_SERVER_SIDE_ENCRYPTION, MAX_SEND_SPEED, MAX_RECV_SPEED, \
S3_BUCKET_LOCATION, CREATE_BUCKET). autolabel and labelstr take amanda.conf's values as they are, with \
Amanda 3.5's meaning: autolabel = '\"DailySet1-%%%\" empty volume-error' labels with the lowest unused number, \
labelstr may be MATCH-AUTOLABEL (its default when autolabel is set). Flags override the file. The state file (current slot, what each slot \
holds) is locked for the whole of every run and replaced atomically; `inventory --rescan` rebuilds it from S3."
)]
pub struct Args {
    /// Configuration file (TOML)
    #[arg(
        long,
        short = 'c',
        global = true,
        env = "TAPE_CHANGER_CONFIG",
        value_name = "FILE"
    )]
    pub config: Option<PathBuf>,

    /// Slots, in chg-multi syntax: s3:BUCKET/PREFIX/slot-{01..10}/ (repeatable; overrides `slots`)
    #[arg(long = "slots", global = true, value_name = "SPEC")]
    pub slots: Vec<String>,

    /// Regular expression every new label must match, or MATCH-AUTOLABEL (overrides `labelstr`)
    #[arg(long, global = true, value_name = "REGEX")]
    pub labelstr: Option<String>,

    /// Tapes written before one may be overwritten (overrides `tapecycle`; default: every slot)
    #[arg(long, global = true, value_name = "N")]
    pub tapecycle: Option<usize>,

    /// amanda.conf's autolabel: template and conditions, '"DailySet1-%%%" empty volume-error' (overrides `autolabel`)
    #[arg(long, global = true, value_name = "TEMPLATE")]
    pub autolabel: Option<String>,

    /// Tapetype length: `write` refuses a file that would take a tape past it
    #[arg(long, global = true, value_parser = parse_size, value_name = "SIZE")]
    pub tape_length: Option<u64>,

    /// State file [default: the config file's path with .state appended]
    #[arg(long, global = true, value_name = "FILE")]
    pub state_file: Option<PathBuf>,

    /// Amanda device property, as amanda.conf's device_property (repeatable): -o BLOCK_SIZE=32MiB
    #[arg(
        long = "property",
        short = 'o',
        global = true,
        value_name = "NAME=VALUE"
    )]
    pub properties: Vec<String>,

    /// Append the JSON events to FILE instead of stdout (stderr for `read`)
    #[arg(long, global = true, value_name = "FILE")]
    pub events: Option<PathBuf>,

    #[command(subcommand)]
    pub command: Command,

    #[command(flatten)]
    pub s3: S3Options,

    #[command(flatten)]
    pub log: Verbosity,
}

/// Which tape a command works on.
#[derive(Debug, Clone, clap::Args)]
pub struct Which {
    /// Slot number [default: the loaded slot]
    #[arg(long, value_name = "N", conflicts_with = "label")]
    pub slot: Option<usize>,

    /// The tape with this label
    #[arg(long, value_name = "LABEL")]
    pub label: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Label the tape in a slot (erasing what it held), like amlabel
    Label {
        /// The new label; must match labelstr
        #[arg(value_name = "LABEL")]
        new_label: String,
        /// Slot to label [default: the loaded slot]
        #[arg(long, value_name = "N")]
        slot: Option<usize>,
        /// Relabel even a tape inside the tape cycle, or a slot holding something else
        #[arg(long)]
        force: bool,
    },
    /// Load a slot: a number, `next` (the tape the cycle says to write), `current`, or --label
    Load {
        /// SLOT number, next or current
        #[arg(value_name = "SLOT|next|current", required_unless_present = "label")]
        target: Option<String>,
        /// Load the slot holding this label
        #[arg(long, value_name = "LABEL", conflicts_with = "target")]
        label: Option<String>,
    },
    /// List the slots: label, date written, files, bytes
    Inventory {
        /// Rebuild the state from S3 first
        #[arg(long)]
        rescan: bool,
        /// One JSON event with every slot and file (sizes and SHA-256s) instead of a table
        #[arg(long)]
        json: bool,
    },
    /// Check a tape the way amdevcheck does: SUCCESS and its label, or VOLUME_UNLABELED / VOLUME_ERROR / DEVICE_ERROR
    Devcheck {
        #[command(flatten)]
        which: Which,
    },
    /// Write stdin as the next file of the loaded tape, with an Amanda file header
    Write {
        /// Host name for the file header
        #[arg(long, value_name = "HOST")]
        host: String,
        /// Disk (directory or device) for the file header
        #[arg(long, value_name = "DISK")]
        disk: String,
        /// Dump level for the file header
        #[arg(long, default_value_t = 0, value_name = "N")]
        level: u32,
        /// Backup program for the file header
        #[arg(long, default_value = "/bin/tar", value_name = "PATH")]
        program: String,
        /// Compression suffix for the file header (N: none)
        #[arg(long, default_value = "N", value_name = "SUFFIX")]
        comp: String,
        /// Run datestamp, YYYYMMDDhhmmss [default: now, UTC]
        #[arg(long, value_name = "STAMP")]
        datestamp: Option<String>,
    },
    /// Write one file of a tape to stdout, header stripped (or kept with --raw)
    Read {
        #[command(flatten)]
        which: Which,
        /// File number (1 is the first)
        #[arg(long, value_name = "N")]
        file: u32,
        /// Start with Amanda's header padded to 32 KiB, as amrestore -r does (dd bs=32k skip=1 strips it)
        #[arg(long)]
        raw: bool,
    },
    /// Delete a tape's label and files (never the bucket)
    Erase {
        #[command(flatten)]
        which: Which,
        /// Erase even a tape inside the tape cycle
        #[arg(long)]
        force: bool,
    },
    /// Go back to the first slot
    Reset,
    /// Unload the current slot
    Eject,
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
                "A configuration (DailySet1.toml), with amanda.conf's names:",
                "slots = \"s3:backups/DailySet1/slot-{01..10}/\"\nlabelstr = \"^DailySet1-[0-9][0-9]*$\"\ntapecycle = 4\nautolabel = \"DailySet1-%%\"\ntape_length = \"500GiB\"\n\n[device]\nBLOCK_SIZE = \"32MiB\"\nNB_THREADS_BACKUP = 8\nS3_STORAGE_CLASS = \"STANDARD_IA\"",
            ),
            (
                "Label a tape, load the one the cycle allows, write a dump to it:",
                "tape-changer -c DailySet1.toml label --slot 1 DailySet1-01\ntape-changer -c DailySet1.toml load next\nset -o pipefail\ntar -C /home -cf - . | tape-changer -c DailySet1.toml write --host web1 --disk /home --level 0",
            ),
            (
                "What is where, and a restore:",
                "tape-changer -c DailySet1.toml inventory\ntape-changer -c DailySet1.toml read --label DailySet1-03 --file 2 | tar -xf -",
            ),
            (
                "Ask what Amanda's amdevcheck would say, and rebuild the state from S3:",
                "tape-changer -c DailySet1.toml devcheck --slot 3\ntape-changer -c DailySet1.toml inventory --rescan",
            ),
        ],
        notes: vec![
            "Objects are Amanda's: PREFIXspecial-tapestart, PREFIXf%08x-filestart and PREFIXf%08x-b%016x.data, plus PREFIXf%08x-manifest.json, which Amanda ignores. A file becomes visible (its -filestart is written) only after all its blocks are stored; a failed or interrupted write deletes what it wrote.",
            "read checks every block against the manifest before writing it and the SHA-256 of the whole at the end; for files Amanda wrote (no manifest) it refuses a gap in the block numbers, where Amanda would silently stop.",
            "Events (one JSON object a line) go to stdout, or stderr for read, or --events FILE: labelled, loaded, file_written, file_read, inventory, erased, reset, ejected.",
        ],
        exit_notes: vec![
            "Particular to tape-changer: 2 for a bad configuration, slot string, label not matching labelstr, or no tape loaded; 3 for an unlabelled slot (VOLUME_UNLABELED), a missing file or label; 5 for a header that is not Amanda's (VOLUME_ERROR), a missing or damaged block; 6 for a tape that is full; 7 for a tape that the tape cycle protects (use --force).",
        ],
        environment: vec![(
            "TAPE_CHANGER_CONFIG",
            "configuration file when --config is not given.",
        )],
        uses_s3: true,
        see_also: vec!["amanda-devices(7)", "amanda-changers(7)", "s3-get(1)"],
    }
}

/// Entry point of the binary.
pub fn main() -> ! {
    let args = Args::parse();
    let verbosity = args.log.clone();
    s3pipe::cli::run(TOOL, &verbosity, |cancellation| run(args, cancellation))
}

/// One run's shared parts.
struct Ctx {
    config: Config,
    tapes: Tapes,
    events: EventSink,
}

impl Ctx {
    fn emit(&self, event: Event) -> Result<(), Failure> {
        self.events.emit(&event).map_err(|err| {
            Failure::new(ExitCode::Failure, format!("cannot write the event: {err}"))
        })
    }

    fn event(&self, name: &str, slot: &Slot) -> Event {
        Event::new(TOOL, name)
            .with("slot", slot.number)
            .with("device", slot.device())
    }

    /// Reads every slot from S3 (in parallel) into a fresh state, keeping the current slot.
    async fn rescan(&self, old: Option<&State>) -> Result<State, Failure> {
        let mut tasks = tokio::task::JoinSet::new();
        for slot in self.config.slots.clone() {
            let tapes = self.tapes.clone();
            tasks.spawn(async move {
                let scanned = tapes.scan(&slot).await;
                (slot.number, scanned)
            });
        }
        let mut state = State {
            version: 1,
            current: old.and_then(|s| s.current),
            ..State::default()
        };
        while let Some(done) = tasks.join_next().await {
            let (number, scanned) =
                done.map_err(|err| Failure::new(ExitCode::Failure, err.to_string()))?;
            let mut scanned = scanned?;
            if let Some(previous) = old.and_then(|s| s.slot(number))
                && previous.label == scanned.label
                && previous.datestamp == scanned.datestamp
            {
                scanned.reuse_pending = previous.reuse_pending;
            }
            *state.slot_mut(number) = scanned;
        }
        Ok(state)
    }

    /// The state, rebuilt from S3 when there is none (or it names other slots).
    async fn state(&self, lock: &StateLock) -> Result<State, Failure> {
        if let Some(state) = lock.load() {
            let matches = self.config.slots.iter().all(|slot| {
                state
                    .slot(slot.number)
                    .is_some_and(|s| s.device == slot.device())
            }) && state.slots.len() == self.config.slots.len();
            if matches {
                return Ok(state);
            }
            tracing::info!("the state file describes other slots; rebuilding it from S3");
            let state = self.rescan(Some(&state)).await?;
            lock.save(&state)?;
            return Ok(state);
        }
        tracing::info!("no state file yet; building it from S3");
        let state = self.rescan(None).await?;
        lock.save(&state)?;
        Ok(state)
    }

    /// The slot a command names: --slot, --label, or the loaded one.
    async fn which(&self, which: &Which, state: &mut State) -> Result<Slot, Failure> {
        if let Some(number) = which.slot {
            return self.config.slot(number).cloned();
        }
        if let Some(label) = &which.label {
            return self.find_label(label, state).await;
        }
        match state.current {
            Some(number) => self.config.slot(number).cloned(),
            None => Err(Failure::usage(
                "no tape loaded: run `tape-changer load next` (or load SLOT), or give --slot or --label",
            )),
        }
    }

    async fn find_label(&self, label: &str, state: &mut State) -> Result<Slot, Failure> {
        let find = |state: &State| {
            self.config
                .slots
                .iter()
                .find(|s| state.slot(s.number).and_then(|x| x.label.as_deref()) == Some(label))
                .cloned()
        };
        if let Some(slot) = find(state) {
            return Ok(slot);
        }
        *state = self.rescan(Some(state)).await?;
        find(state).ok_or_else(|| {
            Failure::new(
                ExitCode::NotFound,
                format!(
                    "no tape labelled {label} in the {} slots",
                    self.config.slots.len()
                ),
            )
        })
    }

    fn protected(&self, state: &State) -> Vec<usize> {
        let slots: Vec<(usize, &SlotState)> = self
            .config
            .slots
            .iter()
            .filter_map(|s| state.slot(s.number).map(|x| (s.number, x)))
            .collect();
        cycle::protected(&slots, self.config.tapecycle)
    }

    /// Deletes a tape's files (and with `label_too` its tape start); returns how many objects.
    async fn erase_objects(&self, slot: &Slot, label_too: bool) -> Result<usize, Failure> {
        let mut keys: Vec<String> = self
            .tapes
            .list(&slot.bucket, &tape::files_prefix(slot))
            .await?
            .into_iter()
            .filter(|l| {
                l.key
                    .strip_prefix(&slot.prefix)
                    .and_then(tape::classify)
                    .is_some()
            })
            .map(|l| l.key)
            .collect();
        let count = keys.len();
        self.tapes.delete(&slot.bucket, &keys).await?;
        if label_too {
            keys = vec![tape::key_tapestart(slot)];
            self.tapes.delete(&slot.bucket, &keys).await?;
        }
        Ok(count)
    }

    async fn write_label(&self, slot: &Slot, datestamp: &str, label: &str) -> Result<(), Failure> {
        self.tapes
            .put(
                &slot.bucket,
                &tape::key_tapestart(slot),
                bytes::Bytes::from(header::tapestart(datestamp, label).into_bytes()),
                "application/octet-stream",
            )
            .await
            .map(|_| ())
    }
}

fn overrides(args: &Args) -> Result<Overrides, Failure> {
    let mut properties = Vec::new();
    for text in &args.properties {
        let (name, value) = text
            .split_once('=')
            .ok_or_else(|| Failure::usage(format!("--property '{text}' is not NAME=VALUE")))?;
        properties.push((name.trim().to_string(), value.trim().to_string()));
    }
    Ok(Overrides {
        slots: args.slots.clone(),
        labelstr: args.labelstr.clone(),
        tapecycle: args.tapecycle,
        autolabel: args.autolabel.clone(),
        tape_length: args.tape_length,
        state_file: args.state_file.clone(),
        properties,
    })
}

/// The work of one run.
pub async fn run(args: Args, cancellation: Cancellation) -> Result<(), Failure> {
    let config = Config::load(args.config.as_deref(), &overrides(&args)?)?;
    let default_sink = match args.command {
        Command::Read { .. } => EventSink::stderr,
        _ => EventSink::stdout,
    };
    let events = EventSink::from_option(args.events.as_deref(), default_sink)
        .map_err(|err| Failure::usage(format!("cannot open the events file: {err}")))?;
    let client = args.s3.client().await?;
    let ctx = Ctx {
        tapes: Tapes {
            client,
            device: config.device.clone(),
        },
        config,
        events,
    };
    match args.command {
        Command::Read { which, file, raw } => {
            cmd_read(&ctx, &which, file, raw, &cancellation).await
        }
        Command::Devcheck { which } => cmd_devcheck(&ctx, &which).await,
        command => {
            let lock = StateLock::acquire(&ctx.config.state_file)?;
            match command {
                Command::Label {
                    new_label,
                    slot,
                    force,
                } => cmd_label(&ctx, &lock, &new_label, slot, force).await,
                Command::Load { target, label } => cmd_load(&ctx, &lock, target, label).await,
                Command::Inventory { rescan, json } => {
                    cmd_inventory(&ctx, &lock, rescan, json).await
                }
                Command::Write {
                    host,
                    disk,
                    level,
                    program,
                    comp,
                    datestamp,
                } => {
                    let header = FileHeader {
                        kind: "SPLIT_FILE".to_string(),
                        datestamp: datestamp.unwrap_or_else(header::datestamp_now),
                        host,
                        disk,
                        part: Some((1, 1)),
                        level,
                        comp,
                        program,
                    };
                    cmd_write(&ctx, &lock, header, &cancellation).await
                }
                Command::Erase { which, force } => cmd_erase(&ctx, &lock, &which, force).await,
                Command::Reset => {
                    let mut state = ctx.state(&lock).await?;
                    let first = ctx.config.slots[0].clone();
                    state.current = Some(first.number);
                    lock.save(&state)?;
                    ctx.emit(ctx.event("reset", &first))
                }
                Command::Eject => {
                    let mut state = ctx.state(&lock).await?;
                    let Some(current) = state.current.take() else {
                        return ctx.emit(Event::new(TOOL, "ejected").with("slot", Value::Null));
                    };
                    lock.save(&state)?;
                    let slot = ctx.config.slot(current)?.clone();
                    ctx.emit(ctx.event("ejected", &slot))
                }
                Command::Read { .. } | Command::Devcheck { .. } => unreachable!("handled above"),
            }
        }
    }
}

fn check_word(what: &str, value: &str) -> Result<(), Failure> {
    if value.is_empty() || value.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(Failure::usage(format!(
            "--{what} '{value}' must be one word without blanks (Amanda's header would not parse)"
        )));
    }
    Ok(())
}

async fn cmd_label(
    ctx: &Ctx,
    lock: &StateLock,
    new_label: &str,
    slot: Option<usize>,
    force: bool,
) -> Result<(), Failure> {
    ctx.config.check_label(new_label)?;
    let mut state = ctx.state(lock).await?;
    let slot = match slot {
        Some(n) => ctx.config.slot(n)?.clone(),
        None => {
            ctx.which(
                &Which {
                    slot: None,
                    label: None,
                },
                &mut state,
            )
            .await?
        }
    };
    if let Some(other) = ctx.config.slots.iter().find(|s| {
        s.number != slot.number
            && state.slot(s.number).and_then(|x| x.label.as_deref()) == Some(new_label)
    }) && !force
    {
        return Err(Failure::new(
            ExitCode::Exists,
            format!(
                "label {new_label} is already on {other}; labels must be unique (use --force to label anyway)"
            ),
        ));
    }
    ctx.tapes.ensure_bucket(&slot.bucket).await?;
    match ctx.tapes.read_label(&slot).await {
        Ok(Some((datestamp, old))) => {
            let fresh = ctx.rescan(Some(&state)).await?;
            state = fresh;
            if datestamp != "X" && ctx.protected(&state).contains(&slot.number) && !force {
                return Err(Failure::new(
                    ExitCode::Exists,
                    format!(
                        "{slot} holds tape {old}, written {datestamp}, which is inside the tape cycle ({} tapes); use --force to relabel it",
                        ctx.config.tapecycle
                    ),
                ));
            }
        }
        Ok(None) => {}
        Err(failure) if failure.exit == ExitCode::Verify && !force => {
            return Err(Failure::verify(format!(
                "{}; not labelling over it without --force",
                failure.message
            )));
        }
        Err(failure) if failure.exit == ExitCode::Verify => {}
        Err(failure) => return Err(failure),
    }
    let erased = ctx.erase_objects(&slot, false).await?;
    ctx.write_label(&slot, "X", new_label).await?;
    *state.slot_mut(slot.number) = SlotState {
        device: slot.device(),
        label: Some(new_label.to_string()),
        datestamp: Some("X".to_string()),
        ..SlotState::default()
    };
    lock.save(&state)?;
    ctx.emit(
        ctx.event("labelled", &slot)
            .with("label", new_label)
            .with("erased_objects", erased),
    )
}

async fn cmd_load(
    ctx: &Ctx,
    lock: &StateLock,
    target: Option<String>,
    label: Option<String>,
) -> Result<(), Failure> {
    let mut state = ctx.state(lock).await?;
    let (slot, how) = match (target.as_deref(), label) {
        (_, Some(label)) => (ctx.find_label(&label, &mut state).await?, "label"),
        (Some("current"), _) => match state.current {
            Some(n) => (ctx.config.slot(n)?.clone(), "current"),
            None => return Err(Failure::usage("no slot is loaded")),
        },
        (Some("next"), _) => {
            state = ctx.rescan(Some(&state)).await?;
            let label_ok = |l: &str| ctx.config.check_label(l).is_ok();
            let slots: Vec<(usize, &SlotState)> = ctx
                .config
                .slots
                .iter()
                .filter_map(|s| state.slot(s.number).map(|x| (s.number, x)))
                .collect();
            let choice = cycle::Cycle {
                slots,
                current: state.current,
                tapecycle: ctx.config.tapecycle,
                label_ok: &label_ok,
                autolabel: ctx.config.autolabel.as_ref(),
            }
            .choose()
            .map_err(|message| Failure::new(ExitCode::Exists, message))?;
            let slot = ctx.config.slot(choice.slot())?.clone();
            match &choice {
                cycle::Choice::Fresh { .. } => (slot, "fresh"),
                cycle::Choice::AutoLabel { label, .. } => {
                    ctx.config.check_label(label)?;
                    ctx.tapes.ensure_bucket(&slot.bucket).await?;
                    ctx.erase_objects(&slot, false).await?;
                    ctx.write_label(&slot, "X", label).await?;
                    *state.slot_mut(slot.number) = SlotState {
                        device: slot.device(),
                        label: Some(label.clone()),
                        datestamp: Some("X".to_string()),
                        ..SlotState::default()
                    };
                    (slot, "autolabel")
                }
                cycle::Choice::Reuse { .. } => {
                    state.slot_mut(slot.number).reuse_pending = true;
                    (slot, "reuse")
                }
            }
        }
        (Some(number), _) => {
            let n: usize = number.parse().map_err(|_| {
                Failure::usage(format!(
                    "load '{number}': expected a slot number, next or current"
                ))
            })?;
            (ctx.config.slot(n)?.clone(), "slot")
        }
        (None, None) => {
            return Err(Failure::usage(
                "load what? a SLOT number, next, current or --label",
            ));
        }
    };
    state.current = Some(slot.number);
    lock.save(&state)?;
    let held = state.slot(slot.number).cloned().unwrap_or_default();
    ctx.emit(
        ctx.event("loaded", &slot)
            .with("how", how)
            .with("label", held.label.clone())
            .with("datestamp", held.datestamp.clone())
            .with("files", held.files.len())
            .with(
                "overwrite",
                held.reuse_pending || held.datestamp.as_deref() == Some("X"),
            ),
    )
}

fn slot_json(number: usize, slot: &SlotState) -> Value {
    json!({
        "slot": number,
        "device": slot.device,
        "label": slot.label,
        "datestamp": slot.datestamp,
        "files": slot.files.len(),
        "bytes": slot.bytes(),
        "error": slot.error,
        "contents": slot.files,
    })
}

async fn cmd_inventory(
    ctx: &Ctx,
    lock: &StateLock,
    rescan: bool,
    json: bool,
) -> Result<(), Failure> {
    let mut state = ctx.state(lock).await?;
    if rescan {
        state = ctx.rescan(Some(&state)).await?;
        lock.save(&state)?;
    }
    let protected = ctx.protected(&state);
    if json {
        let slots: Vec<Value> = ctx
            .config
            .slots
            .iter()
            .map(|s| {
                let held = state.slot(s.number).cloned().unwrap_or_default();
                let mut value = slot_json(s.number, &held);
                value["in_cycle"] = json!(protected.contains(&s.number));
                value
            })
            .collect();
        return ctx.emit(
            Event::new(TOOL, "inventory")
                .with("current", state.current)
                .with("slots", slots),
        );
    }
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let mut lines = vec![format!(
        "{:<4} {:<20} {:<16} {:>5} {:>10}  {}",
        "slot", "label", "written", "files", "bytes", "notes"
    )];
    for slot in &ctx.config.slots {
        let held = state.slot(slot.number).cloned().unwrap_or_default();
        let mut notes = Vec::new();
        if state.current == Some(slot.number) {
            notes.push("loaded".to_string());
        }
        if protected.contains(&slot.number) {
            notes.push("in cycle".to_string());
        }
        if held.reuse_pending {
            notes.push("to be overwritten".to_string());
        }
        if let Some(err) = &held.error {
            notes.push(format!("error: {err}"));
        }
        let written = match held.datestamp.as_deref() {
            Some("X") => "never".to_string(),
            Some(d) => d.to_string(),
            None => "-".to_string(),
        };
        lines.push(format!(
            "{:<4} {:<20} {:<16} {:>5} {:>10}  {}",
            slot.number,
            held.label.as_deref().unwrap_or("(empty)"),
            written,
            held.files.len(),
            format_size(held.bytes()),
            notes.join(", ")
        ));
    }
    for line in lines {
        if !s3pipe::output::write_stdout(&mut out, format!("{line}\n").as_bytes())
            .map_err(|err| Failure::new(ExitCode::Failure, err.to_string()))?
        {
            break;
        }
    }
    let _ = out.flush();
    Ok(())
}

async fn cmd_devcheck(ctx: &Ctx, which: &Which) -> Result<(), Failure> {
    let slot = if which.slot.is_some() || which.label.is_some() {
        let mut state = State::default();
        if which.label.is_some() {
            state = ctx.rescan(None).await?;
        }
        ctx.which(which, &mut state).await?
    } else {
        let lock = StateLock::acquire(&ctx.config.state_file)?;
        let mut state = ctx.state(&lock).await?;
        drop(lock);
        ctx.which(which, &mut state).await?
    };
    let say = |lines: &[String]| {
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        for line in lines {
            let _ = writeln!(out, "{line}");
        }
        let _ = out.flush();
    };
    match ctx.tapes.read_label(&slot).await {
        Ok(Some((datestamp, label))) => {
            say(&[
                "SUCCESS".to_string(),
                format!("label {label} time {datestamp}"),
            ]);
            Ok(())
        }
        Ok(None) => {
            say(&[
                "MESSAGE Amanda header not found -- unlabeled volume?".to_string(),
                "VOLUME_UNLABELED".to_string(),
            ]);
            Err(Failure::new(
                ExitCode::NotFound,
                format!("{slot}: VOLUME_UNLABELED: Amanda header not found -- unlabeled volume?"),
            ))
        }
        Err(failure) if failure.exit == ExitCode::Verify => {
            say(&[
                format!("MESSAGE {}", failure.message),
                "VOLUME_ERROR".to_string(),
            ]);
            Err(Failure::verify(format!(
                "VOLUME_ERROR: {}",
                failure.message
            )))
        }
        Err(failure) => {
            say(&[
                format!("MESSAGE {}", failure.message),
                "DEVICE_ERROR".to_string(),
            ]);
            Err(Failure::new(
                failure.exit,
                format!("DEVICE_ERROR: {}", failure.message),
            ))
        }
    }
}

async fn cmd_write(
    ctx: &Ctx,
    lock: &StateLock,
    file_header: FileHeader,
    cancellation: &Cancellation,
) -> Result<(), Failure> {
    check_word("host", &file_header.host)?;
    check_word("program", &file_header.program)?;
    check_word("comp", &file_header.comp)?;
    if file_header.disk.is_empty() || file_header.disk.contains('\n') {
        return Err(Failure::usage("--disk must not be empty or hold a newline"));
    }
    if file_header.datestamp.len() != 14
        || !file_header.datestamp.bytes().all(|c| c.is_ascii_digit())
    {
        return Err(Failure::usage(format!(
            "--datestamp '{}' is not YYYYMMDDhhmmss",
            file_header.datestamp
        )));
    }
    let mut state = ctx.state(lock).await?;
    let slot = ctx
        .which(
            &Which {
                slot: None,
                label: None,
            },
            &mut state,
        )
        .await?;
    let (tape_date, label) = match ctx.tapes.read_label(&slot).await? {
        Some(found) => found,
        None => {
            return Err(Failure::new(
                ExitCode::NotFound,
                format!("{slot} is not labelled: label it (tape-changer label) or load another"),
            ));
        }
    };
    if let Some(known) = state.slot(slot.number).and_then(|s| s.label.clone())
        && known != label
    {
        return Err(Failure::usage(format!(
            "{slot} now holds tape {label}, not {known} as when it was loaded; load it again"
        )));
    }
    let reuse = state.slot(slot.number).is_some_and(|s| s.reuse_pending);
    let start_tape = tape_date == "X" || reuse;
    let layout = Layout::of(
        &slot,
        &ctx.tapes
            .list(&slot.bucket, &tape::files_prefix(&slot))
            .await?,
    );
    let (file, used) = if start_tape {
        (1, 0)
    } else {
        let files = layout.files();
        let used: u64 = layout
            .parts
            .iter()
            .filter(|(f, p, _)| {
                files.contains(f) && matches!(p, tape::Part::Block(_) | tape::Part::Multipart)
            })
            .map(|(_, _, s)| *s)
            .sum();
        (files.len() as u32 + 1, used)
    };
    if let Some(length) = ctx.config.tape_length
        && used >= length
    {
        return Err(Failure::input(format!(
            "tape {label} is full: {} used, the tapetype length is {}; load another tape",
            format_size(used),
            format_size(length)
        )));
    }
    let tape_datestamp = if start_tape {
        // Start the tape over as Amanda does: the old files go, the label gets the run date.
        ctx.erase_objects(&slot, false).await?;
        ctx.write_label(&slot, &file_header.datestamp, &label)
            .await?;
        let held = state.slot_mut(slot.number);
        held.files.clear();
        held.datestamp = Some(file_header.datestamp.clone());
        held.reuse_pending = false;
        held.label = Some(label.clone());
        held.device = slot.device();
        lock.save(&state)?;
        file_header.datestamp.clone()
    } else {
        // Leftovers of a file that never got its header would be read as part of this one.
        let leftovers: Vec<String> = layout
            .keys
            .iter()
            .filter(|k| k.starts_with(&tape::file_prefix(&slot, file)))
            .cloned()
            .collect();
        ctx.tapes.delete(&slot.bucket, &leftovers).await?;
        tape_date
    };
    let target = writer::Target {
        slot: &slot,
        label: &label,
        file,
        used,
        length: ctx.config.tape_length,
    };
    let written = writer::write_file(
        &ctx.tapes,
        &target,
        file_header.render(),
        Box::new(std::io::stdin()),
        cancellation,
    )
    .await?;
    let record = FileRecord {
        file,
        host: file_header.host.clone(),
        disk: file_header.disk.clone(),
        level: file_header.level,
        datestamp: file_header.datestamp.clone(),
        size: written.size,
        blocks: written.blocks,
        sha256: Some(written.sha256.clone()),
    };
    {
        let held = state.slot_mut(slot.number);
        held.files.retain(|f| f.file < file);
        held.files.push(record);
        held.datestamp = Some(tape_datestamp.clone());
        held.label = Some(label.clone());
    }
    lock.save(&state)?;
    let mib_per_s = if written.seconds > 0.0 {
        written.size as f64 / written.seconds / (1 << 20) as f64
    } else {
        0.0
    };
    ctx.emit(
        ctx.event("file_written", &slot)
            .with("label", label)
            .with("file", file)
            .with("host", file_header.host)
            .with("disk", file_header.disk)
            .with("level", file_header.level)
            .with("datestamp", file_header.datestamp)
            .with("tape_started", start_tape)
            .with("size", written.size)
            .with("blocks", written.blocks)
            .with("block_size", ctx.tapes.device.block_size)
            .with("sha256", written.sha256)
            .with("seconds", (written.seconds * 1000.0).round() / 1000.0)
            .with("mib_per_s", (mib_per_s * 10.0).round() / 10.0),
    )
}

async fn cmd_read(
    ctx: &Ctx,
    which: &Which,
    file: u32,
    raw: bool,
    cancellation: &Cancellation,
) -> Result<(), Failure> {
    if file == 0 {
        return Err(Failure::usage("--file counts from 1"));
    }
    let mut state = match StateLock::acquire(&ctx.config.state_file) {
        Ok(lock) if which.slot.is_none() && which.label.is_none() => ctx.state(&lock).await?,
        _ => State::default(),
    };
    let slot = ctx.which(which, &mut state).await?;
    let label = match ctx.tapes.read_label(&slot).await? {
        Some((_, label)) => label,
        None => {
            return Err(Failure::new(
                ExitCode::NotFound,
                format!("{slot} is not labelled: there is nothing to read"),
            ));
        }
    };
    let result = reader::read_file(&ctx.tapes, &slot, &label, file, raw, cancellation).await?;
    ctx.emit(
        ctx.event("file_read", &slot)
            .with("label", label)
            .with("file", file)
            .with("host", result.header.host)
            .with("disk", result.header.disk)
            .with("level", result.header.level)
            .with("datestamp", result.header.datestamp)
            .with("size", result.size)
            .with("blocks", result.blocks)
            .with("sha256", result.sha256)
            .with("verified", result.verified)
            .with("seconds", (result.seconds * 1000.0).round() / 1000.0),
    )
}

async fn cmd_erase(ctx: &Ctx, lock: &StateLock, which: &Which, force: bool) -> Result<(), Failure> {
    let mut state = ctx.state(lock).await?;
    let slot = ctx.which(which, &mut state).await?;
    state = ctx.rescan(Some(&state)).await?;
    let held = state.slot(slot.number).cloned().unwrap_or_default();
    if held.written() && ctx.protected(&state).contains(&slot.number) && !force {
        return Err(Failure::new(
            ExitCode::Exists,
            format!(
                "{slot} holds tape {}, written {}, inside the tape cycle ({} tapes); use --force to erase it",
                held.label.as_deref().unwrap_or("?"),
                held.datestamp.as_deref().unwrap_or("?"),
                ctx.config.tapecycle
            ),
        ));
    }
    let deleted = ctx.erase_objects(&slot, true).await?;
    *state.slot_mut(slot.number) = SlotState {
        device: slot.device(),
        ..SlotState::default()
    };
    lock.save(&state)?;
    ctx.emit(
        ctx.event("erased", &slot)
            .with("label", held.label)
            .with("deleted_objects", deleted + 1),
    )
}
