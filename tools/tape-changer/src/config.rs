//! The changer's configuration: a TOML file, any of whose settings a flag may override.
//!
//! The names follow `amanda.conf` so that a DailySet moves over by copying values: `slots` takes
//! the `tpchanger "chg-multi:..."` string verbatim, `labelstr`, `tapecycle` and `autolabel` mean
//! what they mean to Amanda (autolabel and labelstr as Amanda 3.5's `make_new_tape_label` and
//! `match_labelstr` read them: see [`AutoLabel`] and [`LabelStr`]), and `[device]` takes Amanda's
//! S3 device properties under their own names (`BLOCK_SIZE`, `NB_THREADS_BACKUP`, ...).

use std::collections::BTreeMap;
use std::iter::Peekable;
use std::path::{Path, PathBuf};
use std::str::Chars;

use serde::Deserialize;

use s3pipe::Failure;
use s3pipe::units::parse_size;

use crate::slots::{self, Slot};

/// Amanda's default S3 block size (`BLOCK_SIZE`): one data object per 10 MiB.
pub const DEFAULT_BLOCK_SIZE: u64 = 10 << 20;

/// The configuration file as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    /// One string or a list; braces expanded as chg-multi does.
    pub slots: Option<SlotList>,
    /// A regular expression, or `MATCH-AUTOLABEL` (the default when `autolabel` is set).
    pub labelstr: Option<String>,
    pub tapecycle: Option<usize>,
    /// amanda.conf's autolabel directive: a template such as `DailySet1-%%%`, optionally quoted
    /// and followed by conditions (`'"DailySet1-%%%" empty volume-error'`).
    pub autolabel: Option<String>,
    /// amanda.conf's `org`, for `$o` [default: the config name].
    pub org: Option<String>,
    /// The tapetype `length`: a size such as `100GiB`.
    pub tape_length: Option<SizeValue>,
    pub state_file: Option<PathBuf>,
    #[serde(default)]
    pub device: BTreeMap<String, toml::Value>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum SlotList {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum SizeValue {
    Bytes(u64),
    Text(String),
}

impl SizeValue {
    fn bytes(&self, what: &str) -> Result<u64, Failure> {
        match self {
            SizeValue::Bytes(n) => Ok(*n),
            SizeValue::Text(text) => {
                parse_size(text).map_err(|err| Failure::usage(format!("{what}: {err}")))
            }
        }
    }
}

/// Amanda S3 device properties that tape-changer honours.
#[derive(Debug, Clone, PartialEq)]
pub struct Device {
    pub block_size: u64,
    pub storage_class: Option<String>,
    pub server_side_encryption: Option<String>,
    /// Bytes a second, per thread, as Amanda counts it.
    pub max_send_speed: Option<u64>,
    pub max_recv_speed: Option<u64>,
    pub threads_backup: usize,
    pub threads_recovery: usize,
    pub bucket_location: Option<String>,
    pub create_bucket: bool,
}

impl Default for Device {
    fn default() -> Self {
        Device {
            block_size: DEFAULT_BLOCK_SIZE,
            storage_class: None,
            server_side_encryption: None,
            max_send_speed: None,
            max_recv_speed: None,
            threads_backup: 4,
            threads_recovery: 4,
            bucket_location: None,
            create_bucket: true,
        }
    }
}

/// Properties Amanda has that make no sense here (tape-changer always signs with v4, always
/// sends Content-MD5, ...): accepted so that a property list can be pasted, and ignored.
const IGNORED_PROPERTIES: &[&str] = &[
    "S3_ACCESS_KEY",
    "S3_SECRET_KEY",
    "S3_SSL",
    "S3_HOST",
    "S3_SERVICE_PATH",
    "S3_SUBDOMAIN",
    "STORAGE_API",
    "S3_MULTI_DELETE",
    "S3_MULTI_PART_UPLOAD",
    "VERBOSE",
    "PROXY",
    "SSL_CA_INFO",
    "CHUNKED",
    "LEOM",
    "ENFORCE_MAX_VOLUME_USAGE",
];

fn property_text(name: &str, value: &toml::Value) -> Result<String, Failure> {
    match value {
        toml::Value::String(s) => Ok(s.clone()),
        toml::Value::Integer(i) => Ok(i.to_string()),
        toml::Value::Boolean(b) => Ok(if *b { "YES" } else { "NO" }.to_string()),
        other => Err(Failure::usage(format!(
            "device property {name}: '{other}' is not a string, number or boolean"
        ))),
    }
}

fn yes_no(name: &str, text: &str) -> Result<bool, Failure> {
    match text.to_ascii_lowercase().as_str() {
        "yes" | "y" | "true" | "on" | "1" => Ok(true),
        "no" | "n" | "false" | "off" | "0" => Ok(false),
        _ => Err(Failure::usage(format!(
            "device property {name}: '{text}' is not YES or NO"
        ))),
    }
}

/// Amanda writes sizes in KiB when no unit is given (`MAX_SEND_SPEED 1000` is 1000 KiB/s is
/// not right: Amanda's speeds are bytes per second); a unit is always welcome.
fn size_property(name: &str, text: &str) -> Result<u64, Failure> {
    parse_size(text).map_err(|err| Failure::usage(format!("device property {name}: {err}")))
}

impl Device {
    pub fn from_properties(properties: &BTreeMap<String, toml::Value>) -> Result<Self, Failure> {
        let mut device = Device::default();
        for (raw_name, value) in properties {
            let name = raw_name.to_ascii_uppercase().replace('-', "_");
            let text = property_text(&name, value)?;
            let count = |text: &str| -> Result<usize, Failure> {
                text.trim()
                    .parse::<usize>()
                    .ok()
                    .filter(|n| (1..=64).contains(n))
                    .ok_or_else(|| {
                        Failure::usage(format!(
                            "device property {name}: '{text}' is not a thread count from 1 to 64"
                        ))
                    })
            };
            match name.as_str() {
                "BLOCK_SIZE" => {
                    let size = size_property(&name, &text)?;
                    if !(1024..=3 << 30).contains(&size) {
                        return Err(Failure::usage(format!(
                            "device property BLOCK_SIZE: {text} is outside Amanda's 1 KiB to 3 GiB"
                        )));
                    }
                    device.block_size = size;
                }
                "S3_STORAGE_CLASS" => device.storage_class = Some(text),
                "S3_SERVER_SIDE_ENCRYPTION" => device.server_side_encryption = Some(text),
                "MAX_SEND_SPEED" => device.max_send_speed = Some(size_property(&name, &text)?),
                "MAX_RECV_SPEED" => device.max_recv_speed = Some(size_property(&name, &text)?),
                "NB_THREADS_BACKUP" => device.threads_backup = count(&text)?,
                "NB_THREADS_RECOVERY" => device.threads_recovery = count(&text)?,
                "S3_BUCKET_LOCATION" => device.bucket_location = Some(text),
                "CREATE_BUCKET" => device.create_bucket = yes_no(&name, &text)?,
                other if IGNORED_PROPERTIES.contains(&other) => {
                    tracing::debug!(property = other, "Amanda device property ignored");
                }
                other => {
                    return Err(Failure::usage(format!(
                        "unknown device property {other} (known: BLOCK_SIZE, S3_STORAGE_CLASS, S3_SERVER_SIDE_ENCRYPTION, MAX_SEND_SPEED, MAX_RECV_SPEED, NB_THREADS_BACKUP, NB_THREADS_RECOVERY, S3_BUCKET_LOCATION, CREATE_BUCKET)"
                    )));
                }
            }
        }
        Ok(device)
    }
}

/// What a slot holds, as autolabel's conditions name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Condition {
    /// A valid Amanda label that does not match our labelstr.
    OtherConfig,
    /// A tape-start object that is not an Amanda header.
    NonAmanda,
    /// The label could not be read.
    VolumeError,
    /// No tape-start object at all.
    Empty,
}

/// The conditions after autolabel's template: which volumes `load next` may label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Conditions {
    pub other_config: bool,
    pub non_amanda: bool,
    pub volume_error: bool,
    pub empty: bool,
}

impl Conditions {
    /// Amanda's default when none are given (`amadmin CONF config` shows `VOLUME-ERROR EMPTY`).
    pub const DEFAULT: Conditions = Conditions {
        other_config: false,
        non_amanda: false,
        volume_error: true,
        empty: true,
    };

    pub fn allows(&self, condition: Condition) -> bool {
        match condition {
            Condition::OtherConfig => self.other_config,
            Condition::NonAmanda => self.non_amanda,
            Condition::VolumeError => self.volume_error,
            Condition::Empty => self.empty,
        }
    }
}

/// One part of an autolabel template, after `$c`, `$o` and `$$` are substituted.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Text(String),
    /// `$s` (`None`) or `$Ns`: the slot number, zero-padded to N digits (at least 1).
    Slot(Option<usize>),
    /// A run of N `%`: the lowest unused number.
    Digits(usize),
    /// A run of N `!`: the lowest unused letters.
    Letters(usize),
}

/// A template variable after `$`.
enum Variable {
    Dollar,
    Config,
    Org,
    Slot(Option<usize>),
}

/// Reads the variable after a `$` (already consumed): `$$`, `$c`, `$o`, `$s`, `$Ns`. `$b`, `$m`
/// and `$r` (barcode, meta label, storage name) mean nothing for S3 slots and are refused;
/// anything else is not a variable (`None`: the `$` is itself), as Amanda leaves it.
fn variable(chars: &mut Peekable<Chars<'_>>, what: &str) -> Result<Option<Variable>, Failure> {
    let found = match chars.peek() {
        Some('$') => Variable::Dollar,
        Some('c') => Variable::Config,
        Some('o') => Variable::Org,
        Some(&c @ ('b' | 'm' | 'r')) => {
            let meaning = match c {
                'b' => "the barcode",
                'm' => "the meta label",
                _ => "the storage name",
            };
            return Err(Failure::usage(format!(
                "{what}: ${c} ({meaning}) has no meaning for S3 slots; use $c, $o, $s or $Ns, % or !"
            )));
        }
        Some(c) if c.is_ascii_digit() || *c == 's' => {
            let mut look = chars.clone();
            let mut digits = String::new();
            while let Some(d) = look.peek().filter(|d| d.is_ascii_digit()) {
                digits.push(*d);
                look.next();
            }
            if look.next() != Some('s') {
                return Ok(None);
            }
            *chars = look;
            let width = if digits.is_empty() {
                None
            } else {
                Some(digits.parse::<usize>().unwrap_or(usize::MAX).clamp(1, 64))
            };
            return Ok(Some(Variable::Slot(width)));
        }
        _ => return Ok(None),
    };
    chars.next();
    Ok(Some(found))
}

/// The names `$c` and `$o` stand for: the config file's stem, and `org` (default: the same).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Names {
    pub config: Option<String>,
    pub org: Option<String>,
}

impl Names {
    fn get(&self, variable: &Variable, what: &str) -> Result<String, Failure> {
        let (value, name) = match variable {
            Variable::Config => (&self.config, "$c (the config name)"),
            _ => (&self.org, "$o (the org)"),
        };
        value.clone().ok_or_else(|| {
            Failure::usage(format!(
                "{what} uses {name}, but there is no config file to take it from (give --config, or set org)"
            ))
        })
    }
}

/// Why autolabel has no label for a slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NoLabel {
    /// A template without `%` or `!` gives this label, which a tape already has: this slot is
    /// passed over (Amanda: "Label '...' already exists").
    Exists(String),
    /// Every number or letter sequence is in use (Amanda: "All labels used"); fatal.
    Exhausted(String),
}

/// amanda.conf's `autolabel`: the template and its conditions, as Amanda 3.5's
/// `make_new_tape_label` reads them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AutoLabel {
    /// The template as written (without quotes or conditions).
    pub template: String,
    pieces: Vec<Piece>,
    pub conditions: Conditions,
}

impl AutoLabel {
    /// Parses the directive text: `DailySet1-%%%` or `"DailySet1-%%%" empty volume-error`.
    pub fn parse(text: &str, names: &Names) -> Result<AutoLabel, Failure> {
        let text = text.trim();
        let (template, rest) = match text.strip_prefix('"') {
            Some(quoted) => match quoted.find('"') {
                Some(end) => (&quoted[..end], &quoted[end + 1..]),
                None => {
                    return Err(Failure::usage(format!(
                        "autolabel '{text}': the template's quote is not closed"
                    )));
                }
            },
            None => text.split_once(char::is_whitespace).unwrap_or((text, "")),
        };
        let what = format!("autolabel '{template}'");
        if template.is_empty() {
            return Err(Failure::usage(
                "autolabel: the template is empty (as in autolabel = '\"DailySet1-%%%\" empty')",
            ));
        }
        if template
            .chars()
            .any(|c| c.is_whitespace() || c.is_control())
        {
            return Err(Failure::usage(format!(
                "{what} holds blanks; Amanda labels are one word"
            )));
        }
        let mut conditions = Conditions {
            other_config: false,
            non_amanda: false,
            volume_error: false,
            empty: false,
        };
        let mut any_given = false;
        for word in rest.split_whitespace() {
            any_given = true;
            match word.to_ascii_lowercase().replace('_', "-").as_str() {
                "any" => {
                    conditions = Conditions {
                        other_config: true,
                        non_amanda: true,
                        volume_error: true,
                        empty: true,
                    }
                }
                "other-config" => conditions.other_config = true,
                "non-amanda" => conditions.non_amanda = true,
                "volume-error" => conditions.volume_error = true,
                "empty" => conditions.empty = true,
                _ => {
                    return Err(Failure::usage(format!(
                        "{what}: unknown condition '{word}' (known: any, other-config, non-amanda, volume-error, empty)"
                    )));
                }
            }
        }
        if !any_given {
            conditions = Conditions::DEFAULT;
        }

        let mut pieces: Vec<Piece> = Vec::new();
        let text_piece = |pieces: &mut Vec<Piece>, add: &str| match pieces.last_mut() {
            Some(Piece::Text(t)) => t.push_str(add),
            _ => pieces.push(Piece::Text(add.to_string())),
        };
        let mut chars = template.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '%' | '!' => {
                    let mut n = 1;
                    while chars.peek() == Some(&c) {
                        chars.next();
                        n += 1;
                    }
                    pieces.push(if c == '%' {
                        Piece::Digits(n)
                    } else {
                        Piece::Letters(n)
                    });
                }
                '$' => match variable(&mut chars, &what)? {
                    Some(Variable::Dollar) => text_piece(&mut pieces, "$"),
                    Some(Variable::Slot(width)) => pieces.push(Piece::Slot(width)),
                    Some(v) => text_piece(&mut pieces, &names.get(&v, &what)?),
                    None => text_piece(&mut pieces, "$"),
                },
                other => text_piece(&mut pieces, other.encode_utf8(&mut [0; 4])),
            }
        }
        let digit_runs = pieces
            .iter()
            .filter(|p| matches!(p, Piece::Digits(_)))
            .count();
        let letter_runs = pieces
            .iter()
            .filter(|p| matches!(p, Piece::Letters(_)))
            .count();
        if digit_runs > 0 && letter_runs > 0 {
            return Err(Failure::usage(format!(
                "{what}: both '%' and '!' (Amanda: Can't generate label: '%' and '!' in autolabel)"
            )));
        }
        if digit_runs > 1 || letter_runs > 1 {
            return Err(Failure::usage(format!(
                "{what}: more than one run of '%' or '!'; Amanda generates one number or one letter sequence"
            )));
        }
        if digit_runs == 0
            && letter_runs == 0
            && !pieces.iter().any(|p| matches!(p, Piece::Slot(_)))
        {
            return Err(Failure::usage(format!(
                "{what} would give every tape the same label: it needs a run of '%' or '!' (or $s), as in 'DailySet1-%%%' (Amanda: autolabel require at least one '%' or '!')"
            )));
        }
        Ok(AutoLabel {
            template: template.to_string(),
            pieces,
            conditions,
        })
    }

    fn render(&self, slot: usize, counter: &str) -> String {
        let mut out = String::new();
        for piece in &self.pieces {
            match piece {
                Piece::Text(text) => out.push_str(text),
                Piece::Slot(width) => {
                    let width = width.unwrap_or(1);
                    out.push_str(&format!("{slot:0width$}"));
                }
                Piece::Digits(_) | Piece::Letters(_) => out.push_str(counter),
            }
        }
        out
    }

    /// The label for a new tape in `slot`, given which labels tapes already have: with a run of
    /// N `%`, the lowest number from 1 to 10^N - 1 (zero-padded to N) whose label is unused;
    /// with a run of N `!`, the lowest unused letters from A…A to Z…Z; with neither, the
    /// template itself, which must be unused.
    pub fn label(&self, slot: usize, used: &dyn Fn(&str) -> bool) -> Result<String, NoLabel> {
        let run = self.pieces.iter().find_map(|p| match p {
            Piece::Digits(n) => Some((true, *n)),
            Piece::Letters(n) => Some((false, *n)),
            _ => None,
        });
        let Some((digits, n)) = run else {
            let label = self.render(slot, "");
            return if used(&label) {
                Err(NoLabel::Exists(label))
            } else {
                Ok(label)
            };
        };
        let exponent = u32::try_from(n).unwrap_or(u32::MAX);
        let count = if digits { 10u128 } else { 26 }
            .checked_pow(exponent)
            .unwrap_or(u128::MAX);
        let counter = |i: u128| -> String {
            if digits {
                format!("{i:0n$}")
            } else {
                let mut letters = vec![b'A'; n];
                let mut rest = i;
                for letter in letters.iter_mut().rev() {
                    *letter = b'A' + (rest % 26) as u8;
                    rest /= 26;
                    if rest == 0 {
                        break;
                    }
                }
                String::from_utf8_lossy(&letters).into_owned()
            }
        };
        let first = if digits { 1 } else { 0 };
        // Distinct counters give distinct labels, so this ends after as many labels as are used.
        for i in first..count {
            let label = self.render(slot, &counter(i));
            if !used(&label) {
                return Ok(label);
            }
        }
        Err(NoLabel::Exhausted(format!(
            "autolabel '{}': every label from {} to {} is in use (Amanda: All labels used); add a '{}' to the template",
            self.template,
            self.render(slot, &counter(first)),
            self.render(slot, &counter(count - 1)),
            if digits { '%' } else { '!' }
        )))
    }

    /// MATCH-AUTOLABEL: the labels this template can make, as an anchored regular expression.
    fn pattern(&self) -> String {
        let mut out = String::from("^");
        for piece in &self.pieces {
            match piece {
                Piece::Text(text) => out.push_str(&regex_lite::escape(text)),
                Piece::Slot(None) => out.push_str("[0-9]*"),
                Piece::Slot(Some(n)) | Piece::Digits(n) => out.push_str(&format!("[0-9]{{{n}}}")),
                Piece::Letters(n) => out.push_str(&format!("[A-Z]{{{n}}}")),
            }
        }
        out.push('$');
        out
    }
}

/// amanda.conf's `labelstr`: a regular expression (in which the autolabel variables `$c`, `$o`,
/// `$s`, `$Ns`, `%` and `!` may be used, as Amanda allows), or `MATCH-AUTOLABEL`.
#[derive(Debug, Clone)]
pub struct LabelStr {
    /// As written, or `MATCH-AUTOLABEL (autolabel TEMPLATE)`.
    pub text: String,
    pub regex: regex_lite::Regex,
}

impl LabelStr {
    pub fn is_match(&self, label: &str) -> bool {
        self.regex.is_match(label)
    }

    /// `labelstr` as written; `autolabel` for MATCH-AUTOLABEL.
    pub fn parse(
        text: &str,
        autolabel: Option<&AutoLabel>,
        names: &Names,
    ) -> Result<LabelStr, Failure> {
        let unquoted = text
            .trim()
            .strip_prefix('"')
            .and_then(|t| t.strip_suffix('"'))
            .unwrap_or(text.trim());
        if unquoted.eq_ignore_ascii_case("MATCH-AUTOLABEL")
            || unquoted.eq_ignore_ascii_case("MATCH_AUTOLABEL")
        {
            let Some(autolabel) = autolabel else {
                return Err(Failure::usage(
                    "labelstr MATCH-AUTOLABEL needs an autolabel template to match",
                ));
            };
            return Self::match_autolabel(autolabel);
        }
        let what = format!("labelstr '{unquoted}'");
        let mut pattern = String::new();
        let mut chars = unquoted.chars().peekable();
        let mut in_class = false;
        while let Some(c) = chars.next() {
            if c == '\\' {
                pattern.push(c);
                pattern.extend(chars.next());
                continue;
            }
            if in_class {
                pattern.push(c);
                in_class = c != ']';
                continue;
            }
            match c {
                '[' => {
                    in_class = true;
                    pattern.push(c);
                    // A `]` first in a class (after an optional `^`) is literal.
                    if chars.peek() == Some(&'^') {
                        pattern.extend(chars.next());
                    }
                    if chars.peek() == Some(&']') {
                        pattern.extend(chars.next());
                    }
                }
                '%' => pattern.push_str("[0-9]"),
                '!' => pattern.push_str("[A-Z]"),
                '$' => match variable(&mut chars, &what)? {
                    Some(Variable::Dollar) => pattern.push_str("\\$"),
                    Some(Variable::Slot(None)) => pattern.push_str("[0-9]*"),
                    Some(Variable::Slot(Some(n))) => pattern.push_str(&format!("[0-9]{{{n}}}")),
                    Some(v) => pattern.push_str(&regex_lite::escape(&names.get(&v, &what)?)),
                    None => pattern.push('$'),
                },
                other => pattern.push(other),
            }
        }
        let regex = regex_lite::Regex::new(&pattern)
            .map_err(|err| Failure::usage(format!("{what}: {err}")))?;
        Ok(LabelStr {
            text: unquoted.to_string(),
            regex,
        })
    }

    /// Amanda's default labelstr when autolabel is set: labels must be ones the template makes
    /// (`%` a digit, `!` a capital letter, `$Ns` N digits, `$s` digits, the rest as it is).
    pub fn match_autolabel(autolabel: &AutoLabel) -> Result<LabelStr, Failure> {
        let pattern = autolabel.pattern();
        let regex = regex_lite::Regex::new(&pattern).map_err(|err| {
            Failure::usage(format!(
                "labelstr MATCH-AUTOLABEL (autolabel '{}'): {err}",
                autolabel.template
            ))
        })?;
        Ok(LabelStr {
            text: format!("MATCH-AUTOLABEL (autolabel '{}')", autolabel.template),
            regex,
        })
    }
}

/// The settings in effect for one run.
#[derive(Debug, Clone)]
pub struct Config {
    pub slots: Vec<Slot>,
    /// `None`: any one-word label (neither labelstr nor autolabel set).
    pub labelstr: Option<LabelStr>,
    pub tapecycle: usize,
    pub autolabel: Option<AutoLabel>,
    /// What `$c` and `$o` stand for.
    pub names: Names,
    pub tape_length: Option<u64>,
    pub state_file: PathBuf,
    pub device: Device,
}

/// What the command line overrides.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub slots: Vec<String>,
    pub labelstr: Option<String>,
    pub tapecycle: Option<usize>,
    pub autolabel: Option<String>,
    pub tape_length: Option<u64>,
    pub state_file: Option<PathBuf>,
    pub properties: Vec<(String, String)>,
}

impl Config {
    pub fn load(path: Option<&Path>, overrides: &Overrides) -> Result<Config, Failure> {
        let file: ConfigFile = match path {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|err| {
                    Failure::usage(format!("cannot read config {}: {err}", path.display()))
                })?;
                toml::from_str(&text).map_err(|err| {
                    let message = err.message().replace('\n', " ");
                    let line = err
                        .span()
                        .map(|span| text[..span.start].lines().count().max(1))
                        .map(|n| format!(" (line {n})"))
                        .unwrap_or_default();
                    Failure::usage(format!("config {}{line}: {message}", path.display()))
                })?
            }
            None => ConfigFile::default(),
        };
        Self::from_file(file, path, overrides)
    }

    pub fn from_file(
        file: ConfigFile,
        path: Option<&Path>,
        overrides: &Overrides,
    ) -> Result<Config, Failure> {
        let specs = if !overrides.slots.is_empty() {
            overrides.slots.clone()
        } else {
            match file.slots {
                Some(SlotList::One(one)) => vec![one],
                Some(SlotList::Many(many)) => many,
                None => Vec::new(),
            }
        };
        let slots = slots::parse_slots(&specs).map_err(Failure::usage)?;
        // `$c` is the config name: the config file's name without `.toml`, as Amanda's is the
        // directory name (DailySet1.toml -> DailySet1).
        let config_name = path
            .and_then(Path::file_stem)
            .map(|stem| stem.to_string_lossy().into_owned());
        let names = Names {
            org: file.org.clone().or_else(|| config_name.clone()),
            config: config_name,
        };
        let autolabel = overrides
            .autolabel
            .clone()
            .or(file.autolabel)
            .map(|text| AutoLabel::parse(&text, &names))
            .transpose()?;
        let labelstr = match (overrides.labelstr.clone().or(file.labelstr), &autolabel) {
            (Some(text), _) => Some(LabelStr::parse(&text, autolabel.as_ref(), &names)?),
            // Amanda's default labelstr is MATCH-AUTOLABEL.
            (None, Some(autolabel)) => Some(LabelStr::match_autolabel(autolabel)?),
            (None, None) => None,
        };
        let tapecycle = overrides
            .tapecycle
            .or(file.tapecycle)
            .unwrap_or(slots.len());
        if tapecycle == 0 {
            return Err(Failure::usage("tapecycle must be at least 1"));
        }
        let tape_length = match overrides.tape_length {
            Some(length) => Some(length),
            None => file
                .tape_length
                .as_ref()
                .map(|v| v.bytes("tape_length"))
                .transpose()?,
        };
        let mut properties = file.device;
        for (name, value) in &overrides.properties {
            properties.insert(name.clone(), toml::Value::String(value.clone()));
        }
        let device = Device::from_properties(&properties)?;
        let state_file = match overrides.state_file.clone().or(file.state_file) {
            Some(state) => state,
            None => match path {
                Some(path) => {
                    let mut name = path.as_os_str().to_owned();
                    name.push(".state");
                    PathBuf::from(name)
                }
                None => {
                    return Err(Failure::usage(
                        "no state file: give --config FILE (the state goes beside it) or --state-file",
                    ));
                }
            },
        };
        Ok(Config {
            slots,
            labelstr,
            tapecycle,
            autolabel,
            names,
            tape_length,
            state_file,
            device,
        })
    }

    /// Refuses a label that `labelstr` does not allow, or that Amanda could not read back.
    pub fn check_label(&self, label: &str) -> Result<(), Failure> {
        if label.is_empty() || label.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(Failure::usage(format!(
                "label '{label}' is empty or holds blanks; Amanda labels are one word"
            )));
        }
        if let Some(pattern) = &self.labelstr
            && !pattern.is_match(label)
        {
            return Err(Failure::usage(format!(
                "label '{label}' does not match labelstr {}",
                if pattern.text.starts_with("MATCH-AUTOLABEL") {
                    pattern.text.clone()
                } else {
                    format!("'{}'", pattern.text)
                }
            )));
        }
        Ok(())
    }

    pub fn slot(&self, number: usize) -> Result<&Slot, Failure> {
        self.slots
            .iter()
            .find(|s| s.number == number)
            .ok_or_else(|| {
                Failure::usage(format!(
                    "no slot {number}: the changer has slots 1 to {}",
                    self.slots.len()
                ))
            })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn config(text: &str) -> Result<Config, Failure> {
        let file: ConfigFile = toml::from_str(text).map_err(|e| Failure::usage(e.to_string()))?;
        Config::from_file(
            file,
            Some(Path::new("/etc/tc/DailySet1.toml")),
            &Overrides::default(),
        )
    }

    #[test]
    fn a_full_config() {
        let c = config(
            r#"
slots = "chg-multi:s3:backups/DailySet1/slot-{01..10}/"
labelstr = "^DailySet1-[0-9][0-9]*$"
tapecycle = 4
autolabel = "DailySet1-%%"
tape_length = "100GiB"

[device]
BLOCK_SIZE = "8MiB"
NB_THREADS_BACKUP = 8
S3_STORAGE_CLASS = "STANDARD_IA"
CREATE_BUCKET = "NO"
S3_SSL = "YES"
"#,
        )
        .expect("valid");
        assert_eq!(c.slots.len(), 10);
        assert_eq!(c.tapecycle, 4);
        assert_eq!(c.tape_length, Some(100 << 30));
        assert_eq!(c.device.block_size, 8 << 20);
        assert_eq!(c.device.threads_backup, 8);
        assert!(!c.device.create_bucket);
        assert_eq!(c.device.storage_class.as_deref(), Some("STANDARD_IA"));
        assert_eq!(c.state_file, PathBuf::from("/etc/tc/DailySet1.toml.state"));
        let autolabel = c.autolabel.as_ref().unwrap();
        assert_eq!(
            autolabel.label(3, &|_| false).as_deref(),
            Ok("DailySet1-01")
        );
        assert_eq!(autolabel.conditions, Conditions::DEFAULT);
        assert!(c.check_label("DailySet1-07").is_ok());
        let err = c.check_label("Weekly-07").unwrap_err();
        assert!(err.message.contains("does not match labelstr"), "{err}");
    }

    #[test]
    fn defaults_follow_amanda() {
        let c = config("slots = [\"s3:bkt/a/\", \"s3:bkt/b/\"]").expect("valid");
        assert_eq!(c.device.block_size, DEFAULT_BLOCK_SIZE);
        assert_eq!(c.tapecycle, 2);
        assert!(c.device.create_bucket);
        assert!(c.labelstr.is_none());
    }

    #[test]
    fn bad_settings_are_explained() {
        let err = |t: &str| config(t).unwrap_err().message;
        assert!(err("slots = \"s3:bkt/x-{1,2\"").contains("without a matching"));
        assert!(err("slots = \"s3:bkt/x\"\nlabelstr = \"(\"").contains("labelstr"));
        assert!(err("slots = \"s3:bkt/x\"\n[device]\nBLOCK_SIZE = \"12\"").contains("BLOCK_SIZE"));
        assert!(
            err("slots = \"s3:bkt/x\"\n[device]\nCOLOUR = \"red\"")
                .contains("unknown device property")
        );
        assert!(
            err("slots = \"s3:bkt/x\"\nautolabel = \"x\"").contains("needs a run of '%' or '!'")
        );
        assert!(err("slots = \"s3:bkt/x\"\ntapecycle = 0").contains("at least 1"));
        assert!(err("slot = \"s3:bkt/x\"").contains("unknown field"));
        assert!(err("").contains("no slots"));
    }

    fn autolabel(text: &str) -> AutoLabel {
        AutoLabel::parse(
            text,
            &Names {
                config: Some("DailySet1".to_string()),
                org: Some("Acme".to_string()),
            },
        )
        .unwrap()
    }

    fn label_with(template: &str, slot: usize, used: &[&str]) -> Result<String, NoLabel> {
        autolabel(template).label(slot, &|l| used.contains(&l))
    }

    #[test]
    fn percent_runs_take_the_lowest_unused_number_not_the_slot() {
        assert_eq!(
            label_with("DailySet1-%%%", 7, &[]).unwrap(),
            "DailySet1-001"
        );
        assert_eq!(
            label_with(
                "DailySet1-%%%",
                7,
                &[
                    "DailySet1-001",
                    "DailySet1-002",
                    "DailySet1-004",
                    "Other-003"
                ]
            )
            .unwrap(),
            "DailySet1-003"
        );
        // One % is one digit: 1 to 9.
        assert_eq!(label_with("T%", 1, &["T1", "T2"]).unwrap(), "T3");
    }

    #[test]
    fn used_up_numbers_are_an_error() {
        let used: Vec<String> = (1..=9).map(|n| format!("T-{n}")).collect();
        let used: Vec<&str> = used.iter().map(String::as_str).collect();
        match label_with("T-%", 1, &used) {
            Err(NoLabel::Exhausted(message)) => {
                assert!(message.contains("T-1 to T-9"), "{message}");
                assert!(message.contains("All labels used"), "{message}");
            }
            other => panic!("expected exhausted, got {other:?}"),
        }
        // 0 is never used: T-0 does not count.
        let mut with_zero = used.clone();
        with_zero.push("T-0");
        assert!(matches!(
            label_with("T-%", 1, &with_zero),
            Err(NoLabel::Exhausted(_))
        ));
    }

    #[test]
    fn exclamation_runs_take_the_lowest_unused_letters() {
        assert_eq!(label_with("Vault-!!!", 1, &[]).unwrap(), "Vault-AAA");
        assert_eq!(
            label_with("Vault-!!", 1, &["Vault-AA", "Vault-AB"]).unwrap(),
            "Vault-AC"
        );
        let az: Vec<String> = ('A'..='Z').map(|c| format!("Vault-A{c}")).collect();
        let az: Vec<&str> = az.iter().map(String::as_str).collect();
        assert_eq!(label_with("Vault-!!", 1, &az).unwrap(), "Vault-BA");
        let single: Vec<String> = ('A'..='Z').map(|c| format!("V{c}")).collect();
        let single: Vec<&str> = single.iter().map(String::as_str).collect();
        match label_with("V!", 1, &single) {
            Err(NoLabel::Exhausted(message)) => assert!(message.contains("VA to VZ"), "{message}"),
            other => panic!("expected exhausted, got {other:?}"),
        }
    }

    #[test]
    fn template_variables() {
        // $c is the config name (the config file's stem), $o the org, $$ a dollar sign.
        assert_eq!(label_with("$c-$o-%%", 1, &[]).unwrap(), "DailySet1-Acme-01");
        assert_eq!(label_with("$$c-%", 1, &[]).unwrap(), "$c-1");
        // $Ns: the slot number padded to N digits; $s: not padded.
        assert_eq!(label_with("$c-$3s", 7, &[]).unwrap(), "DailySet1-007");
        assert_eq!(label_with("S$s-%", 12, &[]).unwrap(), "S12-1");
        assert_eq!(
            label_with("S$2s-%", 3, &["S03-1", "S04-2"]).unwrap(),
            "S03-2"
        );
        // Without a run, the label must not exist yet.
        assert_eq!(
            label_with("$c-$3s", 7, &["DailySet1-007"]),
            Err(NoLabel::Exists("DailySet1-007".to_string()))
        );
        // A '$' that starts no variable is itself.
        assert_eq!(label_with("a$x-%", 1, &[]).unwrap(), "a$x-1");
    }

    #[test]
    fn templates_amanda_cannot_use_are_refused() {
        let names = Names {
            config: Some("DailySet1".to_string()),
            org: None,
        };
        let err = |t: &str| AutoLabel::parse(t, &names).unwrap_err().message;
        let barcode = err("$b-%%");
        assert!(
            barcode.contains("$b (the barcode) has no meaning for S3 slots"),
            "{barcode}"
        );
        assert!(err("$m-%%").contains("$m (the meta label)"));
        assert!(err("$r-%%").contains("$r (the storage name)"));
        let both = err("T-%%-!!");
        assert!(both.contains("both '%' and '!'"), "{both}");
        assert!(err("T-%%-x-%").contains("more than one run"));
        assert!(err("T-!-x-!").contains("more than one run"));
        assert!(err("Tape").contains("needs a run of '%' or '!'"));
        assert!(err("$c").contains("needs a run of '%' or '!'"));
        assert!(err("\"T-%% empty").contains("quote is not closed"));
        assert!(err("\"T %%\" empty").contains("blanks"));
        assert!(err("T-%% sometimes").contains("unknown condition 'sometimes'"));
        assert!(err("$o-%%").contains("$o (the org)"));
        assert!(err("\"\" empty").contains("template is empty"));
        // Through a config: one line, exit 2.
        let failure = config("slots = \"s3:bkt/x\"\nautolabel = \"$b\"").unwrap_err();
        assert_eq!(failure.exit, s3pipe::ExitCode::Usage);
        assert!(!failure.message.contains('\n'));
    }

    #[test]
    fn conditions_follow_amanda() {
        let c = |t: &str| autolabel(t).conditions;
        // None given: Amanda's default, VOLUME-ERROR EMPTY.
        assert_eq!(c("T-%%"), Conditions::DEFAULT);
        assert_eq!(c("\"T-%%\""), Conditions::DEFAULT);
        assert!(Conditions::DEFAULT.allows(Condition::Empty));
        assert!(Conditions::DEFAULT.allows(Condition::VolumeError));
        assert!(!Conditions::DEFAULT.allows(Condition::NonAmanda));
        assert!(!Conditions::DEFAULT.allows(Condition::OtherConfig));
        let all = Conditions {
            other_config: true,
            non_amanda: true,
            volume_error: true,
            empty: true,
        };
        assert_eq!(c("\"T-%%\" any"), all);
        assert_eq!(
            c("\"T-%%\" other-config non-amanda volume-error empty"),
            all
        );
        assert_eq!(c("T-%% ANY"), all);
        assert_eq!(
            c("\"T-%%\" empty"),
            Conditions {
                other_config: false,
                non_amanda: false,
                volume_error: false,
                empty: true,
            }
        );
        assert_eq!(
            c("\"T-%%\" non_amanda EMPTY"),
            Conditions {
                other_config: false,
                non_amanda: true,
                volume_error: false,
                empty: true,
            }
        );
        assert_eq!(
            autolabel("\"DailySet1-%%%\" empty").template,
            "DailySet1-%%%"
        );
    }

    #[test]
    fn autolabel_from_toml_as_amanda_writes_it() {
        let c = config(
            "slots = \"s3:bkt/s-{1..3}/\"\norg = \"Acme\"\nautolabel = '\"$o-%%\" empty volume-error'",
        )
        .unwrap();
        let autolabel = c.autolabel.as_ref().unwrap();
        assert_eq!(autolabel.template, "$o-%%");
        assert_eq!(autolabel.conditions, Conditions::DEFAULT);
        assert_eq!(autolabel.label(1, &|_| false).unwrap(), "Acme-01");
        // org defaults to the config name.
        let c = config("slots = \"s3:bkt/s-{1..3}/\"\nautolabel = \"$o-%%\"").unwrap();
        assert_eq!(
            c.autolabel.as_ref().unwrap().label(1, &|_| false).unwrap(),
            "DailySet1-01"
        );
        // $c without a config file has nothing to stand for.
        let err = Config::from_file(
            toml::from_str("slots = \"s3:bkt/x\"\nautolabel = \"$c-%%\"\nstate_file = \"/tmp/s\"")
                .unwrap(),
            None,
            &Overrides::default(),
        )
        .unwrap_err();
        assert!(err.message.contains("$c (the config name)"), "{err}");
        // The --autolabel flag takes the same text.
        let c = Config::from_file(
            toml::from_str("slots = \"s3:bkt/x\"").unwrap(),
            Some(Path::new("/etc/tc/Weekly.toml")),
            &Overrides {
                autolabel: Some("\"$c-!!\" any".to_string()),
                ..Overrides::default()
            },
        )
        .unwrap();
        let autolabel = c.autolabel.as_ref().unwrap();
        assert_eq!(autolabel.label(1, &|_| false).unwrap(), "Weekly-AA");
        assert!(autolabel.conditions.allows(Condition::OtherConfig));
    }

    #[test]
    fn match_autolabel_is_the_default_labelstr_with_autolabel() {
        let c = config("slots = \"s3:bkt/x\"\nautolabel = \"$c-%%%\"").unwrap();
        assert!(c.check_label("DailySet1-042").is_ok());
        for bad in [
            "DailySet1-42",
            "DailySet1-0420",
            "xDailySet1-042",
            "DailySet1-04a",
            "Weekly-042",
        ] {
            let err = c.check_label(bad).unwrap_err();
            assert!(
                err.message
                    .contains("does not match labelstr MATCH-AUTOLABEL (autolabel '$c-%%%')"),
                "{bad}: {err}"
            );
        }
        // Written out, in any case; '!' is one capital letter; literal text is literal.
        let c =
            config("slots = \"s3:bkt/x\"\nlabelstr = \"match-autolabel\"\nautolabel = \"V.!!\"")
                .unwrap();
        assert!(c.check_label("V.QZ").is_ok());
        assert!(c.check_label("V.qz").is_err());
        assert!(c.check_label("VxQZ").is_err());
        assert!(c.check_label("V.Q").is_err());
        // $Ns: exactly N digits, as Amanda matches it; $s: any digits.
        let c = config("slots = \"s3:bkt/x\"\nautolabel = \"S$3s-%\"").unwrap();
        assert!(c.check_label("S007-1").is_ok());
        assert!(c.check_label("S07-1").is_err());
        assert!(c.check_label("S0007-1").is_err());
        let c = config("slots = \"s3:bkt/x\"\nautolabel = \"S$s-%\"").unwrap();
        assert!(c.check_label("S12345-1").is_ok());
        assert!(c.check_label("Sx-1").is_err());
        // MATCH-AUTOLABEL needs a template.
        let err = config("slots = \"s3:bkt/x\"\nlabelstr = \"MATCH-AUTOLABEL\"").unwrap_err();
        assert!(err.message.contains("needs an autolabel"), "{err}");
    }

    #[test]
    fn labelstr_regexes_take_autolabel_variables_too() {
        // A regular expression stays one, unanchored as Amanda's; $c, % and ! are Amanda's too.
        let c = config("slots = \"s3:bkt/x\"\nlabelstr = '\"^$c-%%$\"'").unwrap();
        assert!(c.check_label("DailySet1-07").is_ok());
        assert!(c.check_label("DailySet1-7").is_err());
        let err = c.check_label("Weekly-07").unwrap_err();
        assert!(
            err.message.contains("does not match labelstr '^$c-%%$'"),
            "{err}"
        );
        let c = config("slots = \"s3:bkt/x\"\nlabelstr = \"Daily[^!]\"\nautolabel = \"Daily-%%\"")
            .unwrap();
        assert!(c.check_label("Daily-01").is_ok());
        assert!(c.check_label("Daily!").is_err());
        // A regex labelstr is kept when autolabel is set: no MATCH-AUTOLABEL then.
        assert!(c.check_label("Daily-001").is_ok());
        // Neither set: any one-word label.
        let c = config("slots = \"s3:bkt/x\"").unwrap();
        assert!(c.check_label("anything-at-all").is_ok());
        assert!(c.check_label("two words").is_err());
        assert!(
            config("slots = \"s3:bkt/x\"\nlabelstr = \"$b\"")
                .unwrap_err()
                .message
                .contains("$b")
        );
    }
}
