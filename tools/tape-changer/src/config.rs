//! The changer's configuration: a TOML file, any of whose settings a flag may override.
//!
//! The names follow `amanda.conf` so that a DailySet moves over by copying values: `slots` takes
//! the `tpchanger "chg-multi:..."` string verbatim, `labelstr`, `tapecycle` and `autolabel` mean
//! what they mean to Amanda, and `[device]` takes Amanda's S3 device properties under their own
//! names (`BLOCK_SIZE`, `NB_THREADS_BACKUP`, ...).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

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
    pub labelstr: Option<String>,
    pub tapecycle: Option<usize>,
    /// A label template such as `DailySet1-%%`: `%` runs become the zero-padded slot number.
    pub autolabel: Option<String>,
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

/// The settings in effect for one run.
#[derive(Debug, Clone)]
pub struct Config {
    pub slots: Vec<Slot>,
    pub labelstr: Option<regex_lite::Regex>,
    pub tapecycle: usize,
    pub autolabel: Option<String>,
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
        let labelstr_text = overrides.labelstr.clone().or(file.labelstr);
        let labelstr = labelstr_text
            .map(|text| {
                regex_lite::Regex::new(&text)
                    .map_err(|err| Failure::usage(format!("labelstr '{text}': {err}")))
            })
            .transpose()?;
        let tapecycle = overrides
            .tapecycle
            .or(file.tapecycle)
            .unwrap_or(slots.len());
        if tapecycle == 0 {
            return Err(Failure::usage("tapecycle must be at least 1"));
        }
        let autolabel = overrides.autolabel.clone().or(file.autolabel);
        if let Some(template) = &autolabel
            && !template.contains('%')
        {
            return Err(Failure::usage(format!(
                "autolabel '{template}' has no '%' for the slot number (as in 'DailySet1-%%')"
            )));
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
                "label '{label}' does not match labelstr '{}'",
                pattern.as_str()
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

    /// The label `autolabel` gives a slot: each run of `%` becomes the slot number, zero-padded
    /// to the run's length.
    pub fn autolabel_for(&self, slot: usize) -> Option<String> {
        let template = self.autolabel.as_ref()?;
        let mut out = String::new();
        let mut chars = template.chars().peekable();
        while let Some(c) = chars.next() {
            if c == '%' {
                let mut width = 1;
                while chars.peek() == Some(&'%') {
                    chars.next();
                    width += 1;
                }
                out.push_str(&format!("{slot:0width$}"));
            } else {
                out.push(c);
            }
        }
        Some(out)
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
        assert_eq!(c.autolabel_for(3).as_deref(), Some("DailySet1-03"));
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
        assert!(err("slots = \"s3:bkt/x\"\nautolabel = \"x\"").contains("no '%'"));
        assert!(err("slots = \"s3:bkt/x\"\ntapecycle = 0").contains("at least 1"));
        assert!(err("slot = \"s3:bkt/x\"").contains("unknown field"));
        assert!(err("").contains("no slots"));
    }
}
