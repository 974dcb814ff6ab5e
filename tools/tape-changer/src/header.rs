//! Amanda's file headers: the text at the start of every tape and every dump file.
//!
//! The layout follows `common-src/fileheader.c` (Amanda 3.5): a first line `AMANDA: TYPE ...`,
//! optional `KEY=value` lines, the "To restore" hint with a `dd` line, and a line holding only a
//! form feed. The S3 device stores the text alone as the `special-tapestart` and `-filestart`
//! objects; on a real tape, and in `amrestore -r` output, it is padded with NULs to 32 KiB, which
//! is what `read --raw` writes too.

use std::time::SystemTime;

/// Size of a header block on tape, and of the header `read --raw` writes.
pub const HEADER_BLOCK: usize = 32 * 1024;

/// What Amanda writes at the end of every header.
const TERMINATOR: &str = "\n\x0c\n";

/// A dump file's header fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileHeader {
    /// `FILE`, `SPLIT_FILE` or `CONT_FILE`.
    pub kind: String,
    pub datestamp: String,
    pub host: String,
    pub disk: String,
    /// `part n/total` of a split dump (`-1` total: unknown).
    pub part: Option<(u32, i32)>,
    pub level: u32,
    /// `N` for uncompressed, else the compression suffix (`.gz`).
    pub comp: String,
    pub program: String,
}

/// A parsed header object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Header {
    TapeStart { datestamp: String, label: String },
    File(FileHeader),
    TapeEnd { datestamp: String },
}

/// The run datestamp Amanda uses, `YYYYMMDDhhmmss` (we use UTC, so that runs on machines in
/// different time zones still order correctly).
pub fn datestamp_now() -> String {
    datestamp_of(SystemTime::now())
}

pub fn datestamp_of(time: SystemTime) -> String {
    humantime::format_rfc3339_seconds(time)
        .to_string()
        .chars()
        .filter(char::is_ascii_digit)
        .collect()
}

/// `AMANDA: TAPESTART DATE <X|datestamp> TAPE <label>`, as `amlabel` writes it.
pub fn tapestart(datestamp: &str, label: &str) -> String {
    format!("AMANDA: TAPESTART DATE {datestamp} TAPE {label}{TERMINATOR}")
}

/// Amanda's `quote_string`: a disk name with blanks or quotes goes in double quotes.
fn quote(text: &str) -> String {
    if !text.is_empty()
        && !text
            .chars()
            .any(|c| c.is_whitespace() || c == '"' || c == '\\' || c == '\'' || c == ':')
    {
        return text.to_string();
    }
    let mut out = String::from("\"");
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn unquote(text: &str) -> String {
    let Some(inner) = text.strip_prefix('"').and_then(|t| t.strip_suffix('"')) else {
        return text.to_string();
    };
    let mut out = String::new();
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.next() {
                Some('n') => out.push('\n'),
                Some('t') => out.push('\t'),
                Some(other) => out.push(other),
                None => {}
            }
        } else {
            out.push(c);
        }
    }
    out
}

impl FileHeader {
    /// The header text, byte for byte as Amanda's `build_header` writes it for a 32 KiB block.
    pub fn render(&self) -> String {
        let mut out = format!(
            "AMANDA: {} {} {} {} ",
            self.kind,
            self.datestamp,
            self.host,
            quote(&self.disk)
        );
        if let Some((n, total)) = self.part {
            out.push_str(&format!(" part {n}/{total} "));
        }
        out.push_str(&format!(
            " lev {} comp {} program {}\n",
            self.level, self.comp, self.program
        ));
        out.push_str("To restore, position tape at start of file and run:\n");
        out.push_str("\tdd if=<tape> bs=32k skip=1 | \n\x0c\n");
        out
    }
}

/// Splits the first line into tokens the way Amanda's parser does: on blanks, a double-quoted
/// string (with backslash escapes) counting as one token.
fn tokens(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut chars = line.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| *c == ' ' || *c == '\t') {
            chars.next();
        }
        let Some(&first) = chars.peek() else { break };
        let mut token = String::new();
        if first == '"' {
            token.push(chars.next().unwrap_or('"'));
            while let Some(c) = chars.next() {
                token.push(c);
                if c == '\\' {
                    if let Some(escaped) = chars.next() {
                        token.push(escaped);
                    }
                } else if c == '"' {
                    break;
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c == ' ' || c == '\t' {
                    break;
                }
                token.push(c);
                chars.next();
            }
        }
        out.push(token);
    }
    out
}

/// Parses a header object (or a 32 KiB padded header block).
pub fn parse(bytes: &[u8]) -> Result<Header, String> {
    let text_end = bytes.iter().position(|b| *b == 0).unwrap_or(bytes.len());
    let text = std::str::from_utf8(&bytes[..text_end])
        .map_err(|_| "not an Amanda header: not text".to_string())?;
    let first = text.lines().next().unwrap_or("");
    let words = tokens(first);
    let bad = |why: &str| {
        let shown: String = first.chars().take(60).collect();
        format!("not an Amanda header ({why}): '{shown}'")
    };
    if words.first().map(String::as_str) != Some("AMANDA:") {
        return Err(bad("it does not start with 'AMANDA:'"));
    }
    let word = |i: usize| words.get(i).map(String::as_str);
    match word(1) {
        Some("TAPESTART") => {
            if word(2) != Some("DATE") || word(4) != Some("TAPE") {
                return Err(bad("expected 'TAPESTART DATE <date> TAPE <label>'"));
            }
            let (Some(datestamp), Some(label)) = (word(3), word(5)) else {
                return Err(bad("tape start without a date or label"));
            };
            Ok(Header::TapeStart {
                datestamp: datestamp.to_string(),
                label: label.to_string(),
            })
        }
        Some("TAPEEND") => Ok(Header::TapeEnd {
            datestamp: word(3).unwrap_or("").to_string(),
        }),
        Some(kind @ ("FILE" | "SPLIT_FILE" | "CONT_FILE")) => {
            let (Some(datestamp), Some(host), Some(disk)) = (word(2), word(3), word(4)) else {
                return Err(bad("file header without date, host and disk"));
            };
            let mut header = FileHeader {
                kind: kind.to_string(),
                datestamp: datestamp.to_string(),
                host: host.to_string(),
                disk: unquote(disk),
                part: None,
                level: 0,
                comp: "N".to_string(),
                program: String::new(),
            };
            let mut i = 5;
            while i < words.len() {
                let value = words.get(i + 1).map(String::as_str).unwrap_or("");
                match words[i].as_str() {
                    "part" => {
                        let (n, total) = value
                            .split_once('/')
                            .ok_or_else(|| bad("part is not n/total"))?;
                        header.part = Some((
                            n.parse().map_err(|_| bad("bad part number"))?,
                            total.parse().map_err(|_| bad("bad part total"))?,
                        ));
                    }
                    "lev" => header.level = value.parse().map_err(|_| bad("bad level"))?,
                    "comp" => header.comp = value.to_string(),
                    "program" => header.program = value.to_string(),
                    _ => {
                        i += 1;
                        continue;
                    }
                }
                i += 2;
            }
            Ok(Header::File(header))
        }
        _ => Err(bad("unknown header type")),
    }
}

/// The header padded with NULs to one 32 KiB tape block, as `amrestore -r` writes it.
pub fn padded(text: &[u8]) -> Vec<u8> {
    let mut out = text.to_vec();
    if out.len() < HEADER_BLOCK {
        out.resize(HEADER_BLOCK, 0);
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn sample() -> FileHeader {
        FileHeader {
            kind: "SPLIT_FILE".to_string(),
            datestamp: "20261123175000".to_string(),
            host: "web1".to_string(),
            disk: "/home".to_string(),
            part: Some((1, 1)),
            level: 0,
            comp: "N".to_string(),
            program: "/bin/tar".to_string(),
        }
    }

    #[test]
    fn tapestart_matches_amanda() {
        let text = tapestart("X", "DailySet1");
        assert_eq!(text, "AMANDA: TAPESTART DATE X TAPE DailySet1\n\x0c\n");
        // The reference measured 55 bytes for a 9-character label, written.
        assert_eq!(tapestart("20261123175000", "DailySet1").len(), 55);
    }

    #[test]
    fn split_file_header_matches_amanda_byte_for_byte() {
        // What Amanda 3.5's Amanda::Header->to_string writes for these fields.
        let expected = "AMANDA: SPLIT_FILE 20261123175000 web1 /home  part 1/1  lev 0 comp N program /bin/tar\n\
To restore, position tape at start of file and run:\n\tdd if=<tape> bs=32k skip=1 | \n\x0c\n";
        assert_eq!(sample().render(), expected);
    }

    #[test]
    fn headers_parse_back() {
        let header = sample();
        assert_eq!(
            parse(header.render().as_bytes()),
            Ok(Header::File(header.clone()))
        );
        assert_eq!(
            parse(&padded(header.render().as_bytes())),
            Ok(Header::File(header))
        );
        let spaced = FileHeader {
            disk: "C:/Program Files".to_string(),
            kind: "FILE".to_string(),
            part: None,
            ..sample()
        };
        assert!(spaced.render().contains("\"C:/Program Files\""));
        assert_eq!(parse(spaced.render().as_bytes()), Ok(Header::File(spaced)));
        assert_eq!(
            parse(tapestart("X", "L-01").as_bytes()),
            Ok(Header::TapeStart {
                datestamp: "X".to_string(),
                label: "L-01".to_string()
            })
        );
    }

    #[test]
    fn foreign_headers_are_refused() {
        assert!(
            parse(b"PK\x03\x04 zip")
                .unwrap_err()
                .contains("not an Amanda header")
        );
        assert!(
            parse(b"AMANDA: WHATEVER")
                .unwrap_err()
                .contains("unknown header type")
        );
        assert!(parse(b"AMANDA: TAPESTART X").is_err());
        assert!(parse(&[0xff, 0xfe]).is_err());
    }

    #[test]
    fn datestamps_are_fourteen_digits() {
        let stamp =
            datestamp_of(std::time::UNIX_EPOCH + std::time::Duration::from_secs(86_400 + 3_661));
        assert_eq!(stamp, "19700102010101");
    }
}
