//! The JSON event format: one JSON object a line.
//!
//! Control tools pass these along a pipe (`snapshot-restore volume | ebs-attach | blockdump
//! --from-event`), and data tools write their final report as one. Every event has `event` (what
//! happened), `tool` (who says so) and `time` (RFC 3339, UTC); the other fields belong to the event
//! and are documented with it in the README. Readers ignore fields they do not know, so a tool can
//! add fields without breaking the next stage.

use std::fs::File;
use std::io::{self, BufRead, Write};
use std::path::Path;
use std::sync::Mutex;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// One event: the three common fields and the event's own.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub event: String,
    pub tool: String,
    pub time: String,
    #[serde(flatten)]
    pub fields: Map<String, Value>,
}

impl Event {
    /// A new event stamped with the current time.
    pub fn new(tool: &str, event: &str) -> Self {
        Event {
            event: event.to_string(),
            tool: tool.to_string(),
            time: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
            fields: Map::new(),
        }
    }

    /// Adds a field (builder style).
    pub fn with(mut self, name: &str, value: impl Into<Value>) -> Self {
        self.fields.insert(name.to_string(), value.into());
        self
    }

    /// A field by name, if present.
    pub fn get(&self, name: &str) -> Option<&Value> {
        self.fields.get(name)
    }

    /// A string field by name, if present and a string.
    pub fn get_str(&self, name: &str) -> Option<&str> {
        self.fields.get(name).and_then(Value::as_str)
    }

    /// The event as one line of JSON, without the newline.
    pub fn to_line(&self) -> String {
        serde_json::to_string(self).expect("an event of strings and JSON values always serialises")
    }
}

/// Where a tool's events go: stdout, stderr or a file (`--events FILE`).
///
/// Each event is written whole and flushed at once, so the next stage of a pipe sees it as soon as
/// it happens and two threads never interleave halves of lines.
pub struct EventSink {
    out: Mutex<Box<dyn Write + Send>>,
}

impl std::fmt::Debug for EventSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EventSink")
    }
}

impl EventSink {
    pub fn stdout() -> Self {
        EventSink {
            out: Mutex::new(Box::new(io::stdout())),
        }
    }

    pub fn stderr() -> Self {
        EventSink {
            out: Mutex::new(Box::new(io::stderr())),
        }
    }

    /// Appends to `path`, creating it if needed (so several runs can share one events file).
    pub fn file(path: &Path) -> io::Result<Self> {
        let file = File::options().create(true).append(true).open(path)?;
        Ok(EventSink {
            out: Mutex::new(Box::new(file)),
        })
    }

    /// `--events FILE` when given, otherwise the stream the tool names as its default.
    pub fn from_option(path: Option<&Path>, default: fn() -> EventSink) -> io::Result<Self> {
        match path {
            Some(path) if path == Path::new("-") => Ok(EventSink::stdout()),
            Some(path) => EventSink::file(path),
            None => Ok(default()),
        }
    }

    /// Writes one event as one line and flushes it.
    pub fn emit(&self, event: &Event) -> io::Result<()> {
        let mut line = event.to_line();
        line.push('\n');
        let mut out = self
            .out
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        out.write_all(line.as_bytes())?;
        out.flush()
    }
}

/// A line that is not an event, with its line number (counted from 1).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("event line {line}: {message}")]
pub struct EventParseError {
    pub line: usize,
    pub message: String,
}

/// Reads events one a line; blank lines are skipped, unknown fields kept in `fields`.
#[derive(Debug)]
pub struct EventReader<R> {
    input: R,
    line: usize,
}

impl<R: BufRead> EventReader<R> {
    pub fn new(input: R) -> Self {
        EventReader { input, line: 0 }
    }
}

impl<R: BufRead> Iterator for EventReader<R> {
    type Item = Result<Event, EventParseError>;

    fn next(&mut self) -> Option<Self::Item> {
        let mut text = String::new();
        loop {
            text.clear();
            self.line += 1;
            match self.input.read_line(&mut text) {
                Ok(0) => return None,
                Ok(_) if text.trim().is_empty() => continue,
                Ok(_) => return Some(parse_line(&text, self.line)),
                Err(err) => {
                    return Some(Err(EventParseError {
                        line: self.line,
                        message: err.to_string(),
                    }));
                }
            }
        }
    }
}

fn parse_line(text: &str, line: usize) -> Result<Event, EventParseError> {
    serde_json::from_str::<Event>(text.trim()).map_err(|err| EventParseError {
        line,
        message: format!("not a JSON event ({err}); expected one object a line with \"event\", \"tool\" and \"time\""),
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_keeps_fields() {
        let event = Event::new("s3-get", "download_complete")
            .with("size", 42)
            .with("key", "a/b");
        let line = event.to_line();
        assert!(
            line.starts_with("{\"event\":\"download_complete\",\"tool\":\"s3-get\",\"time\":\"")
        );
        let back: Vec<_> = EventReader::new(line.as_bytes()).collect();
        assert_eq!(back, vec![Ok(event)]);
    }

    #[test]
    fn unknown_fields_are_kept_and_blank_lines_skipped() {
        let input = "\n{\"event\":\"x\",\"tool\":\"t\",\"time\":\"2026-01-01T00:00:00Z\",\"new_field\":[1]}\n\n";
        let events: Vec<_> = EventReader::new(input.as_bytes())
            .collect::<Result<_, _>>()
            .expect("valid");
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].get("new_field"), Some(&serde_json::json!([1])));
    }

    #[test]
    fn malformed_lines_report_their_number() {
        let input = "{\"event\":\"x\",\"tool\":\"t\",\"time\":\"t\"}\nnot json\n{\"tool\":\"t\"}\n";
        let results: Vec<_> = EventReader::new(input.as_bytes()).collect();
        assert!(results[0].is_ok());
        assert_eq!(results[1].as_ref().unwrap_err().line, 2);
        let missing = results[2].as_ref().unwrap_err();
        assert_eq!(missing.line, 3);
        assert!(missing.message.contains("event"), "{missing}");
    }

    #[test]
    fn time_is_rfc3339_utc() {
        let event = Event::new("t", "e");
        assert!(event.time.ends_with('Z'), "{}", event.time);
        assert!(humantime::parse_rfc3339(&event.time).is_ok());
    }
}
