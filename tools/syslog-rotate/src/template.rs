//! syslog-ng templates: literal text with `${MACRO}`, `$MACRO` and `${.json.field}`.
//!
//! Templates are compiled once at start-up, so an unknown macro is a usage error on the command line
//! rather than an empty string in every object key. Date macros come in three flavours as in
//! syslog-ng: `${YEAR}` and `${S_YEAR}` use the message's own time (the time it was read when the
//! line carries none), `${R_YEAR}` the time it was read. Dates are rendered in UTC.

use std::io::Write;

use chrono::{DateTime, Datelike, Timelike, Utc};

use crate::message::{Message, json_path, json_text};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    Host,
    Program,
    Pid,
    Message,
    MsgHdr,
    MsgId,
    RawMsg,
    Facility,
    FacilityNum,
    Severity,
    SeverityNum,
    Pri,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DatePart {
    IsoDate,
    Stamp,
    Date,
    FullDate,
    UnixTime,
    Year,
    Month,
    MonthAbbrev,
    MonthName,
    Day,
    Hour,
    Min,
    Sec,
    Msec,
    Usec,
    WeekDayAbbrev,
    WeekDayName,
    WeekDay,
    Week,
    YearDay,
    TzOffset,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Clock {
    Message,
    Received,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Literal(Vec<u8>),
    Field(Field),
    Date(Clock, DatePart),
    Json(String),
}

/// A compiled template.
#[derive(Debug, Clone)]
pub struct Template {
    pieces: Vec<Piece>,
    /// The template text, for messages.
    pub text: String,
}

/// The times a line is rendered with, in microseconds since the epoch.
#[derive(Debug, Clone, Copy)]
pub struct Times {
    pub message: i64,
    pub received: i64,
}

impl Template {
    /// Compiles `text`; the error names the offending macro.
    pub fn parse(text: &str) -> Result<Self, String> {
        let bytes = text.as_bytes();
        let mut pieces = Vec::new();
        let mut literal = Vec::new();
        let mut at = 0;
        while at < bytes.len() {
            let b = bytes[at];
            if b == b'\\' && at + 1 < bytes.len() {
                // Escapes users type in shell-quoted templates: \n, \t, \\.
                match bytes[at + 1] {
                    b'n' => literal.push(b'\n'),
                    b't' => literal.push(b'\t'),
                    b'r' => literal.push(b'\r'),
                    b'\\' => literal.push(b'\\'),
                    other => {
                        literal.push(b'\\');
                        literal.push(other);
                    }
                }
                at += 2;
                continue;
            }
            if b != b'$' {
                literal.push(b);
                at += 1;
                continue;
            }
            let name;
            if bytes.get(at + 1) == Some(&b'$') {
                literal.push(b'$');
                at += 2;
                continue;
            } else if bytes.get(at + 1) == Some(&b'{') {
                let close = text[at..]
                    .find('}')
                    .ok_or_else(|| format!("template '{text}': '${{' without a closing '}}'"))?;
                name = &text[at + 2..at + close];
                at += close + 1;
            } else if bytes.get(at + 1) == Some(&b'(') {
                return Err(format!(
                    "template '{text}': template functions $(...) are not supported"
                ));
            } else {
                let len = text[at + 1..]
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .unwrap_or(text.len() - at - 1);
                if len == 0 {
                    literal.push(b'$');
                    at += 1;
                    continue;
                }
                name = &text[at + 1..at + 1 + len];
                at += 1 + len;
            }
            if !literal.is_empty() {
                pieces.push(Piece::Literal(std::mem::take(&mut literal)));
            }
            pieces.push(macro_piece(name).ok_or_else(|| {
                format!("template '{text}': unknown macro '{name}' (known: HOST, PROGRAM, PID, MESSAGE, MSGHDR, MSGID, RAWMSG, FACILITY, SEVERITY, PRI, ISODATE, YEAR, MONTH, DAY, HOUR, MIN, SEC, ... with S_ and R_ variants, and ${{.json.field}})")
            })?);
        }
        if !literal.is_empty() {
            pieces.push(Piece::Literal(literal));
        }
        Ok(Template {
            pieces,
            text: text.to_string(),
        })
    }

    /// Whether the template is `${MESSAGE}\n` or `${MSG}\n`: the fast path for plain lines.
    pub fn is_message_newline(&self) -> bool {
        matches!(self.pieces.as_slice(), [Piece::Field(Field::Message), Piece::Literal(l)] if l == b"\n")
    }

    /// Whether rendering needs the parsed message at all (as opposed to only the clock).
    pub fn uses_message(&self) -> bool {
        self.pieces
            .iter()
            .any(|p| matches!(p, Piece::Field(_) | Piece::Json(_)))
    }

    /// Whether it renders the same text for every line within one second (no fields, no sub-second
    /// parts): such keys are cached per second.
    pub fn per_second(&self) -> bool {
        !self.uses_message()
            && !self.pieces.iter().any(|p| {
                matches!(
                    p,
                    Piece::Date(_, DatePart::Msec | DatePart::Usec | DatePart::IsoDate)
                )
            })
    }

    pub fn is_empty(&self) -> bool {
        self.pieces.is_empty()
    }

    /// Appends the rendered template to `out`.
    pub fn render(&self, message: &Message<'_>, times: Times, out: &mut Vec<u8>) {
        for piece in &self.pieces {
            match piece {
                Piece::Literal(bytes) => out.extend_from_slice(bytes),
                Piece::Field(field) => render_field(*field, message, out),
                Piece::Date(clock, part) => {
                    let at = match clock {
                        Clock::Message => times.message,
                        Clock::Received => times.received,
                    };
                    render_date(*part, at, out);
                }
                Piece::Json(path) => {
                    if let Some(value) = message.json.as_ref().and_then(|m| json_path(m, path)) {
                        out.extend_from_slice(json_text(value).as_bytes());
                    }
                }
            }
        }
    }

    /// Renders to a string (for object keys), replacing invalid UTF-8.
    pub fn render_string(&self, message: &Message<'_>, times: Times) -> String {
        let mut out = Vec::new();
        self.render(message, times, &mut out);
        match String::from_utf8(out) {
            Ok(text) => text,
            Err(err) => String::from_utf8_lossy(err.as_bytes()).into_owned(),
        }
    }
}

fn macro_piece(name: &str) -> Option<Piece> {
    if let Some(path) = name.strip_prefix('.') {
        return (!path.is_empty()).then(|| Piece::Json(path.to_string()));
    }
    let field = match name {
        "HOST" | "HOSTNAME" | "FULLHOST" => Some(Field::Host),
        "PROGRAM" => Some(Field::Program),
        "PID" => Some(Field::Pid),
        "MESSAGE" | "MSG" => Some(Field::Message),
        "MSGHDR" => Some(Field::MsgHdr),
        "MSGID" => Some(Field::MsgId),
        "RAWMSG" => Some(Field::RawMsg),
        "FACILITY" => Some(Field::Facility),
        "FACILITY_NUM" => Some(Field::FacilityNum),
        "SEVERITY" | "LEVEL" | "PRIORITY" => Some(Field::Severity),
        "SEVERITY_NUM" | "LEVEL_NUM" => Some(Field::SeverityNum),
        "PRI" => Some(Field::Pri),
        _ => None,
    };
    if let Some(field) = field {
        return Some(Piece::Field(field));
    }
    let (clock, rest) = if let Some(rest) = name.strip_prefix("R_") {
        (Clock::Received, rest)
    } else if let Some(rest) = name.strip_prefix("S_") {
        (Clock::Message, rest)
    } else {
        (Clock::Message, name)
    };
    let part = match rest {
        "ISODATE" => DatePart::IsoDate,
        "STAMP" => DatePart::Stamp,
        "DATE" => DatePart::Date,
        "FULLDATE" => DatePart::FullDate,
        "UNIXTIME" => DatePart::UnixTime,
        "YEAR" => DatePart::Year,
        "MONTH" => DatePart::Month,
        "MONTH_ABBREV" => DatePart::MonthAbbrev,
        "MONTH_NAME" => DatePart::MonthName,
        "DAY" => DatePart::Day,
        "HOUR" => DatePart::Hour,
        "MIN" => DatePart::Min,
        "SEC" => DatePart::Sec,
        "MSEC" => DatePart::Msec,
        "USEC" => DatePart::Usec,
        "WEEKDAY" | "WEEK_DAY_ABBREV" => DatePart::WeekDayAbbrev,
        "WEEK_DAY_NAME" => DatePart::WeekDayName,
        "WEEK_DAY" => DatePart::WeekDay,
        "WEEK" => DatePart::Week,
        "YEAR_DAY" => DatePart::YearDay,
        "TZOFFSET" | "TZ" => DatePart::TzOffset,
        _ => return None,
    };
    Some(Piece::Date(clock, part))
}

const FACILITIES: [&str; 24] = [
    "kern",
    "user",
    "mail",
    "daemon",
    "auth",
    "syslog",
    "lpr",
    "news",
    "uucp",
    "cron",
    "authpriv",
    "ftp",
    "ntp",
    "security",
    "console",
    "solaris-cron",
    "local0",
    "local1",
    "local2",
    "local3",
    "local4",
    "local5",
    "local6",
    "local7",
];
const SEVERITIES: [&str; 8] = [
    "emerg", "alert", "crit", "err", "warning", "notice", "info", "debug",
];

fn render_field(field: Field, m: &Message<'_>, out: &mut Vec<u8>) {
    match field {
        Field::Host => out.extend_from_slice(&m.host),
        Field::Program => out.extend_from_slice(&m.program),
        Field::Pid => out.extend_from_slice(&m.pid),
        Field::Message => out.extend_from_slice(&m.message),
        Field::MsgId => out.extend_from_slice(&m.msgid),
        Field::RawMsg => out.extend_from_slice(m.raw),
        Field::MsgHdr => {
            if !m.program.is_empty() {
                out.extend_from_slice(&m.program);
                if !m.pid.is_empty() {
                    out.push(b'[');
                    out.extend_from_slice(&m.pid);
                    out.push(b']');
                }
                out.extend_from_slice(b": ");
            }
        }
        Field::Facility => {
            if let Some(pri) = m.pri {
                out.extend_from_slice(FACILITIES[(pri / 8) as usize % 24].as_bytes());
            }
        }
        Field::FacilityNum => {
            if let Some(pri) = m.pri {
                let _ = write!(out, "{}", pri / 8);
            }
        }
        Field::Severity => {
            if let Some(pri) = m.pri {
                out.extend_from_slice(SEVERITIES[(pri % 8) as usize].as_bytes());
            }
        }
        Field::SeverityNum => {
            if let Some(pri) = m.pri {
                let _ = write!(out, "{}", pri % 8);
            }
        }
        Field::Pri => {
            if let Some(pri) = m.pri {
                let _ = write!(out, "{pri}");
            }
        }
    }
}

fn render_date(part: DatePart, at: i64, out: &mut Vec<u8>) {
    let Some(t) = DateTime::<Utc>::from_timestamp_micros(at) else {
        return;
    };
    let _ = match part {
        DatePart::IsoDate => write!(
            out,
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}+00:00",
            t.year(),
            t.month(),
            t.day(),
            t.hour(),
            t.minute(),
            t.second()
        ),
        DatePart::Stamp | DatePart::Date => write!(out, "{}", t.format("%b %e %H:%M:%S")),
        DatePart::FullDate => write!(out, "{}", t.format("%Y %b %e %H:%M:%S")),
        DatePart::UnixTime => write!(out, "{}", t.timestamp()),
        DatePart::Year => write!(out, "{:04}", t.year()),
        DatePart::Month => write!(out, "{:02}", t.month()),
        DatePart::MonthAbbrev => write!(out, "{}", t.format("%b")),
        DatePart::MonthName => write!(out, "{}", t.format("%B")),
        DatePart::Day => write!(out, "{:02}", t.day()),
        DatePart::Hour => write!(out, "{:02}", t.hour()),
        DatePart::Min => write!(out, "{:02}", t.minute()),
        DatePart::Sec => write!(out, "{:02}", t.second()),
        DatePart::Msec => write!(out, "{:03}", t.timestamp_subsec_millis()),
        DatePart::Usec => write!(out, "{:06}", t.timestamp_subsec_micros()),
        DatePart::WeekDayAbbrev => write!(out, "{}", t.format("%a")),
        DatePart::WeekDayName => write!(out, "{}", t.format("%A")),
        DatePart::WeekDay => write!(out, "{}", t.weekday().number_from_sunday()),
        DatePart::Week => write!(out, "{}", t.format("%W")),
        DatePart::YearDay => write!(out, "{:03}", t.ordinal()),
        DatePart::TzOffset => write!(out, "+00:00"),
    };
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::message::{InputFormat, parse};

    fn times(message: i64, received: i64) -> Times {
        Times { message, received }
    }

    #[test]
    fn macros_render_fields_and_both_clocks() {
        let m = parse(
            InputFormat::Rfc3164,
            b"<38>Mar  1 10:02:03 web1 sshd[812]: Accepted",
            1_773_000_000_000_000,
        );
        let t = Template::parse("${HOST}/$PROGRAM/${YEAR}${MONTH}${DAY}-${R_YEAR} ${FACILITY}.${SEVERITY} $$ ${MSGHDR}${MSG}\\n")
            .unwrap();
        let received = 1_800_000_000_000_000; // 2027-01-15
        let text = t.render_string(&m, times(m.time.unwrap(), received));
        assert_eq!(
            text,
            "web1/sshd/20260301-2027 auth.info $ sshd[812]: Accepted\n"
        );
    }

    #[test]
    fn json_paths_and_unknown_macros() {
        let m = parse(
            InputFormat::Json,
            br#"{"SYSLOG_IDENTIFIER":"app","a":{"b":"deep"},"n":3}"#,
            0,
        );
        let t = Template::parse("${.SYSLOG_IDENTIFIER}/${.a.b}/${.n}/${.missing}").unwrap();
        assert_eq!(t.render_string(&m, times(0, 0)), "app/deep/3/");
        assert!(Template::parse("${NOPE}").unwrap_err().contains("NOPE"));
        assert!(Template::parse("${HOST").is_err());
    }

    #[test]
    fn fast_path_and_caching_flags() {
        assert!(
            Template::parse("${MESSAGE}\n")
                .unwrap()
                .is_message_newline()
        );
        assert!(!Template::parse("${HOST}\n").unwrap().is_message_newline());
        assert!(
            Template::parse("logs/${R_YEAR}${R_MONTH}")
                .unwrap()
                .per_second()
        );
        assert!(!Template::parse("logs/${HOST}").unwrap().per_second());
    }
}
