//! One input line taken apart: plain text, RFC 3164 or RFC 5424 syslog, or a JSON object.
//!
//! Parsing never loses a line: whatever does not parse is kept whole as the MESSAGE and counted, so
//! a template such as `${MESSAGE}\n` still stores it, and the summary event says how many there were.
//! Fields borrow from the line where they can, because the plain fast path (about half a million
//! lines a second) must not allocate per line.

use std::borrow::Cow;

use chrono::{DateTime, Datelike, NaiveDate, NaiveDateTime, NaiveTime, TimeZone, Utc};
use clap::ValueEnum;
use serde_json::{Map, Value};

/// How input lines are read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum InputFormat {
    /// Each line is the MESSAGE; message time is the time it was read
    Plain,
    /// RFC 5424 when the line looks like it (`<PRI>1 `), otherwise RFC 3164 (BSD syslog, /var/log/syslog)
    Syslog,
    /// BSD syslog: `[<PRI>]Mmm dd hh:mm:ss HOST PROGRAM[PID]: MSG` (an RFC 3339 stamp is accepted too)
    Rfc3164,
    /// IETF syslog: `<PRI>1 TIMESTAMP HOST APP PROCID MSGID [SD] MSG`
    Rfc5424,
    /// One JSON object a line (journalctl -o json); fields usable as ${.name}
    Json,
}

/// A parsed line. Missing fields are empty.
#[derive(Debug, Default)]
pub struct Message<'a> {
    pub raw: &'a [u8],
    pub host: Cow<'a, [u8]>,
    pub program: Cow<'a, [u8]>,
    pub pid: Cow<'a, [u8]>,
    pub msgid: Cow<'a, [u8]>,
    pub message: Cow<'a, [u8]>,
    pub pri: Option<u16>,
    /// Message time in microseconds since the epoch, when the line carried one.
    pub time: Option<i64>,
    pub json: Option<Map<String, Value>>,
    /// The line did not parse in the chosen format and was kept whole as MESSAGE.
    pub unparsed: bool,
}

impl<'a> Message<'a> {
    pub fn plain(raw: &'a [u8]) -> Self {
        Message {
            raw,
            message: Cow::Borrowed(raw),
            ..Message::default()
        }
    }
}

/// Parses `raw` (without its newline). `now` (microseconds) supplies the year RFC 3164 leaves out.
pub fn parse(format: InputFormat, raw: &[u8], now: i64) -> Message<'_> {
    let parsed = match format {
        InputFormat::Plain => return Message::plain(raw),
        InputFormat::Syslog => {
            if looks_like_5424(raw) {
                parse_5424(raw)
            } else {
                parse_3164(raw, now)
            }
        }
        InputFormat::Rfc3164 => parse_3164(raw, now),
        InputFormat::Rfc5424 => parse_5424(raw),
        InputFormat::Json => parse_json(raw),
    };
    parsed.unwrap_or_else(|| Message {
        unparsed: true,
        ..Message::plain(raw)
    })
}

fn looks_like_5424(raw: &[u8]) -> bool {
    match split_pri(raw) {
        Some((_, rest)) => rest.starts_with(b"1 "),
        None => false,
    }
}

/// `<N>` at the start of a line: (N, the rest).
fn split_pri(raw: &[u8]) -> Option<(u16, &[u8])> {
    if raw.first() != Some(&b'<') {
        return None;
    }
    let close = raw.iter().take(5).position(|&b| b == b'>')?;
    let digits = &raw[1..close];
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let pri: u16 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    (pri <= 191).then_some((pri, &raw[close + 1..]))
}

/// The next space-separated token and what follows the space.
fn token(input: &[u8]) -> Option<(&[u8], &[u8])> {
    if input.is_empty() {
        return None;
    }
    match memchr::memchr(b' ', input) {
        Some(at) => Some((&input[..at], &input[at + 1..])),
        None => Some((input, &[])),
    }
}

fn nil(field: &[u8]) -> &[u8] {
    if field == b"-" { b"" } else { field }
}

fn micros(time: DateTime<Utc>) -> i64 {
    time.timestamp_micros()
}

fn parse_rfc3339(text: &[u8]) -> Option<i64> {
    let text = std::str::from_utf8(text).ok()?;
    DateTime::parse_from_rfc3339(text)
        .ok()
        .map(|t| micros(t.with_timezone(&Utc)))
}

const MONTHS: [&[u8; 3]; 12] = [
    b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun", b"Jul", b"Aug", b"Sep", b"Oct", b"Nov", b"Dec",
];

/// `Mmm dd hh:mm:ss` (day space-padded or not), in UTC, in the year that puts it nearest `now`.
fn parse_bsd_stamp(stamp: &[u8], now: i64) -> Option<i64> {
    if stamp.len() != 15 || stamp[3] != b' ' || stamp[6] != b' ' {
        return None;
    }
    let month = MONTHS.iter().position(|m| &stamp[..3] == *m)? as u32 + 1;
    let day_text = std::str::from_utf8(&stamp[4..6]).ok()?.trim_start();
    let day: u32 = day_text.parse().ok()?;
    let time =
        NaiveTime::parse_from_str(std::str::from_utf8(&stamp[7..]).ok()?, "%H:%M:%S").ok()?;
    let now_time = DateTime::<Utc>::from_timestamp_micros(now)?;
    // A December line read in January belongs to last year; allow a day of clock skew ahead.
    let mut best = None;
    for year in [now_time.year() - 1, now_time.year(), now_time.year() + 1] {
        let Some(date) = NaiveDate::from_ymd_opt(year, month, day) else {
            continue;
        };
        let at = micros(Utc.from_utc_datetime(&NaiveDateTime::new(date, time)));
        if at <= now + 86_400_000_000 && best.is_none_or(|b| at > b) {
            best = Some(at);
        }
    }
    best
}

fn parse_3164(raw: &[u8], now: i64) -> Option<Message<'_>> {
    let (pri, rest) = match split_pri(raw) {
        Some((pri, rest)) => (Some(pri), rest),
        None => (None, raw),
    };
    let (time, rest) = if rest.len() >= 16 && rest[15] == b' ' {
        match parse_bsd_stamp(&rest[..15], now) {
            Some(time) => (time, &rest[16..]),
            None => {
                let (stamp, after) = token(rest)?;
                (parse_rfc3339(stamp)?, after)
            }
        }
    } else {
        let (stamp, after) = token(rest)?;
        (parse_rfc3339(stamp)?, after)
    };
    // HOST is optional in practice: a first token that ends in ':' or holds '[' is the tag.
    let (first, after_first) = token(rest)?;
    let (host, rest) = if first.ends_with(b":") || first.contains(&b'[') {
        (&b""[..], rest)
    } else {
        (first, after_first)
    };
    let (program, pid, message) = split_tag(rest);
    Some(Message {
        raw,
        host: Cow::Borrowed(host),
        program: Cow::Borrowed(program),
        pid: Cow::Borrowed(pid),
        message: Cow::Borrowed(message),
        pri,
        time: Some(time),
        ..Message::default()
    })
}

/// `PROGRAM[PID]: MSG`, `PROGRAM: MSG`, or a message without a tag.
fn split_tag(rest: &[u8]) -> (&[u8], &[u8], &[u8]) {
    let end = rest
        .iter()
        .take(64)
        .position(|&b| b == b':' || b == b'[' || b == b' ');
    match end {
        Some(at) if rest[at] == b'[' => {
            let program = &rest[..at];
            let Some(close) = memchr::memchr(b']', &rest[at..]) else {
                return (b"", b"", rest);
            };
            let pid = &rest[at + 1..at + close];
            let after = &rest[at + close + 1..];
            let message = after
                .strip_prefix(b": ")
                .or_else(|| after.strip_prefix(b":"))
                .unwrap_or(after);
            (program, pid, message)
        }
        Some(at) if rest[at] == b':' && at > 0 => {
            let after = &rest[at + 1..];
            (&rest[..at], b"", after.strip_prefix(b" ").unwrap_or(after))
        }
        _ => (b"", b"", rest),
    }
}

fn parse_5424(raw: &[u8]) -> Option<Message<'_>> {
    let (pri, rest) = split_pri(raw)?;
    let rest = rest.strip_prefix(b"1 ")?;
    let (stamp, rest) = token(rest)?;
    let time = if stamp == b"-" {
        None
    } else {
        Some(parse_rfc3339(stamp)?)
    };
    let (host, rest) = token(rest)?;
    let (app, rest) = token(rest)?;
    let (procid, rest) = token(rest)?;
    let (msgid, rest) = token(rest)?;
    let rest = skip_structured_data(rest)?;
    let message = rest.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(rest);
    Some(Message {
        raw,
        host: Cow::Borrowed(nil(host)),
        program: Cow::Borrowed(nil(app)),
        pid: Cow::Borrowed(nil(procid)),
        msgid: Cow::Borrowed(nil(msgid)),
        message: Cow::Borrowed(message),
        pri: Some(pri),
        time,
        ..Message::default()
    })
}

/// Skips `-` or `[id k="v" ...][...]` (with `\"`, `\]` and `\\` escapes) and the space after it.
fn skip_structured_data(rest: &[u8]) -> Option<&[u8]> {
    if let Some(after) = rest.strip_prefix(b"-") {
        return Some(after.strip_prefix(b" ").unwrap_or(after));
    }
    let mut at = 0;
    while rest.get(at) == Some(&b'[') {
        let mut quoted = false;
        loop {
            at += 1;
            match *rest.get(at)? {
                b'\\' if quoted => at += 1,
                b'"' => quoted = !quoted,
                b']' if !quoted => break,
                _ => {}
            }
        }
        at += 1;
    }
    if at == 0 {
        return None;
    }
    let after = &rest[at..];
    Some(after.strip_prefix(b" ").unwrap_or(after))
}

/// The first of `names` present in `map`, as text (strings unquoted, other values as JSON).
fn json_field<'m>(map: &'m Map<String, Value>, names: &[&str]) -> Option<Cow<'m, str>> {
    names.iter().find_map(|name| map.get(*name)).map(json_text)
}

/// A JSON value as template text: strings without quotes, everything else as compact JSON.
pub fn json_text(value: &Value) -> Cow<'_, str> {
    match value {
        Value::String(text) => Cow::Borrowed(text),
        Value::Null => Cow::Borrowed(""),
        other => Cow::Owned(other.to_string()),
    }
}

/// Looks up `a.b.c` in nested objects (syslog-ng's `${.a.b.c}`); a literal key with dots wins.
pub fn json_path<'m>(map: &'m Map<String, Value>, path: &str) -> Option<&'m Value> {
    if let Some(value) = map.get(path) {
        return Some(value);
    }
    let mut parts = path.split('.');
    let mut value = map.get(parts.next()?)?;
    for part in parts {
        value = value.as_object()?.get(part)?;
    }
    Some(value)
}

fn parse_json(raw: &[u8]) -> Option<Message<'_>> {
    let map: Map<String, Value> = serde_json::from_slice(raw).ok()?;
    let text = |names: &[&str]| -> Cow<'static, [u8]> {
        json_field(&map, names)
            .map(|t| Cow::Owned(t.into_owned().into_bytes()))
            .unwrap_or(Cow::Borrowed(b""))
    };
    let message = json_field(&map, &["MESSAGE", "message", "msg", "log"])
        .map(|t| Cow::Owned(t.into_owned().into_bytes()))
        .unwrap_or(Cow::Borrowed(raw));
    let host = text(&["_HOSTNAME", "HOST", "host", "hostname"]);
    let program = text(&["SYSLOG_IDENTIFIER", "PROGRAM", "program", "ident", "app"]);
    let pid = text(&["_PID", "SYSLOG_PID", "PID", "pid"]);
    let pri = json_field(&map, &["PRIORITY", "priority"])
        .and_then(|p| p.parse::<u16>().ok())
        .filter(|p| *p <= 7)
        .map(|severity| {
            let facility = json_field(&map, &["SYSLOG_FACILITY"])
                .and_then(|f| f.parse::<u16>().ok())
                .unwrap_or(1);
            facility * 8 + severity
        });
    let time = json_time(&map);
    Some(Message {
        raw,
        host,
        program,
        pid,
        message,
        pri,
        time,
        json: Some(map),
        ..Message::default()
    })
}

/// journald's `__REALTIME_TIMESTAMP` (microseconds), or an RFC 3339 string or epoch seconds in
/// `@timestamp`, `timestamp`, `time` or `ts`.
fn json_time(map: &Map<String, Value>) -> Option<i64> {
    if let Some(us) = map.get("__REALTIME_TIMESTAMP") {
        let us = match us {
            Value::String(text) => text.parse::<i64>().ok(),
            other => other.as_i64(),
        };
        if us.is_some() {
            return us;
        }
    }
    for name in ["@timestamp", "timestamp", "time", "ts"] {
        match map.get(name) {
            Some(Value::String(text)) => {
                if let Some(at) = parse_rfc3339(text.as_bytes()) {
                    return Some(at);
                }
            }
            Some(Value::Number(number)) => {
                if let Some(seconds) = number.as_f64() {
                    return Some((seconds * 1e6) as i64);
                }
            }
            _ => {}
        }
    }
    None
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn now() -> i64 {
        micros(Utc.with_ymd_and_hms(2026, 3, 15, 12, 0, 0).unwrap())
    }

    fn text(field: &[u8]) -> String {
        String::from_utf8_lossy(field).into_owned()
    }

    #[test]
    fn rfc3164_with_and_without_pri() {
        let m = parse(
            InputFormat::Rfc3164,
            b"<34>Mar  1 10:02:03 web1 sshd[812]: Accepted key",
            now(),
        );
        assert!(!m.unparsed);
        assert_eq!(text(&m.host), "web1");
        assert_eq!(text(&m.program), "sshd");
        assert_eq!(text(&m.pid), "812");
        assert_eq!(text(&m.message), "Accepted key");
        assert_eq!(m.pri, Some(34));
        let expected = micros(Utc.with_ymd_and_hms(2026, 3, 1, 10, 2, 3).unwrap());
        assert_eq!(m.time, Some(expected));

        let m = parse(
            InputFormat::Rfc3164,
            b"Dec 31 23:59:59 db cron: job done",
            now(),
        );
        assert_eq!(text(&m.program), "cron");
        assert_eq!(text(&m.message), "job done");
        let last_year = micros(Utc.with_ymd_and_hms(2025, 12, 31, 23, 59, 59).unwrap());
        assert_eq!(m.time, Some(last_year));
    }

    #[test]
    fn rfc3164_with_iso_stamp() {
        let m = parse(
            InputFormat::Syslog,
            b"2026-03-01T10:02:03.5+01:00 web1 kernel: oops",
            now(),
        );
        assert!(!m.unparsed);
        assert_eq!(text(&m.host), "web1");
        assert_eq!(text(&m.program), "kernel");
        assert_eq!(
            m.time,
            Some(micros(Utc.with_ymd_and_hms(2026, 3, 1, 9, 2, 3).unwrap()) + 500_000)
        );
    }

    #[test]
    fn rfc5424_with_structured_data() {
        let line = b"<165>1 2026-03-01T10:02:03Z mymachine evntslog 99 ID47 [exampleSDID@32473 iut=\"3\" eventSource=\"Appl]ication\"] \xEF\xBB\xBFAn application event";
        let m = parse(InputFormat::Syslog, line, now());
        assert!(!m.unparsed);
        assert_eq!(text(&m.host), "mymachine");
        assert_eq!(text(&m.program), "evntslog");
        assert_eq!(text(&m.pid), "99");
        assert_eq!(text(&m.msgid), "ID47");
        assert_eq!(text(&m.message), "An application event");
        assert_eq!(m.pri, Some(165));
        let m = parse(InputFormat::Rfc5424, b"<13>1 - - - - - - hello", now());
        assert_eq!(text(&m.message), "hello");
        assert_eq!(m.time, None);
        assert!(!m.unparsed);
    }

    #[test]
    fn garbage_is_kept_and_flagged() {
        for format in [
            InputFormat::Syslog,
            InputFormat::Rfc3164,
            InputFormat::Rfc5424,
            InputFormat::Json,
        ] {
            let m = parse(format, b"not a syslog line at all", now());
            assert!(m.unparsed, "{format:?}");
            assert_eq!(text(&m.message), "not a syslog line at all");
        }
    }

    #[test]
    fn json_fields_and_time() {
        let m = parse(
            InputFormat::Json,
            br#"{"MESSAGE":"started","_HOSTNAME":"h1","SYSLOG_IDENTIFIER":"app","__REALTIME_TIMESTAMP":"1772359323000000","PRIORITY":"6","n":{"x":1}}"#,
            now(),
        );
        assert!(!m.unparsed);
        assert_eq!(text(&m.message), "started");
        assert_eq!(text(&m.host), "h1");
        assert_eq!(text(&m.program), "app");
        assert_eq!(m.time, Some(1_772_359_323_000_000));
        assert_eq!(m.pri, Some(14));
        let map = m.json.as_ref().unwrap();
        assert_eq!(json_path(map, "n.x"), Some(&Value::from(1)));
    }
}
