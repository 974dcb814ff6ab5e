//! Amanda's slot syntax: `s3:BUCKET/PREFIX/slot-{01,02,03}` and `slot-{01..10}`, accepted verbatim.
//!
//! chg-multi expands the braces of its device list into one device per slot, numbered from 1 in
//! the order written. We do the same, so that a `tpchanger` line can be pasted from `amanda.conf`
//! and slot 3 here is slot 3 there. Where Amanda is silently wrong we refuse instead: two slots
//! whose prefixes overlap (`slot-1` and `slot-10`) would mix their tapes up in Amanda's prefix
//! listings, so that is an error here.

use std::fmt;

/// One virtual tape: the bucket and the key prefix its objects are written under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Slot {
    /// 1-based slot number, as chg-multi numbers them.
    pub number: usize,
    pub bucket: String,
    /// Concatenated with the object names as is; Amanda adds no separator.
    pub prefix: String,
}

impl Slot {
    /// The device name, as Amanda writes it: `s3:BUCKET/PREFIX`.
    pub fn device(&self) -> String {
        if self.prefix.is_empty() {
            format!("s3:{}", self.bucket)
        } else {
            format!("s3:{}/{}", self.bucket, self.prefix)
        }
    }
}

impl fmt::Display for Slot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "slot {} ({})", self.number, self.device())
    }
}

/// Expands Amanda's brace syntax: `{a,b}` alternates and `{01..10}` ranges (zero padding kept
/// when the first bound is written with it). Several braces multiply out left to right.
pub fn expand_braces(text: &str) -> Result<Vec<String>, String> {
    let Some(open) = text.find('{') else {
        if text.contains('}') {
            return Err(format!("'{text}': '}}' without a matching '{{'"));
        }
        return Ok(vec![text.to_string()]);
    };
    let close = text[open..]
        .find('}')
        .map(|i| i + open)
        .ok_or_else(|| format!("'{text}': '{{' without a matching '}}'"))?;
    let head = &text[..open];
    if head.contains('}') {
        return Err(format!("'{text}': '}}' without a matching '{{'"));
    }
    let inner = &text[open + 1..close];
    if inner.contains('{') {
        return Err(format!("'{text}': nested braces are not supported"));
    }
    let alternatives = brace_alternatives(inner).map_err(|e| format!("'{text}': {e}"))?;
    let tails = expand_braces(&text[close + 1..])?;
    let mut out = Vec::with_capacity(alternatives.len() * tails.len());
    for alternative in &alternatives {
        for tail in &tails {
            out.push(format!("{head}{alternative}{tail}"));
        }
    }
    Ok(out)
}

fn brace_alternatives(inner: &str) -> Result<Vec<String>, String> {
    if let Some((start, end)) = inner.split_once("..") {
        let (a, b) = (start.trim(), end.trim());
        let numeric = |s: &str| !s.is_empty() && s.bytes().all(|c| c.is_ascii_digit());
        if !numeric(a) || !numeric(b) {
            return Err(format!(
                "range '{{{inner}}}' must be two whole numbers, as in {{01..10}}"
            ));
        }
        let (from, to): (u64, u64) = (
            a.parse().map_err(|_| format!("'{a}' is too large"))?,
            b.parse().map_err(|_| format!("'{b}' is too large"))?,
        );
        if from > to {
            return Err(format!("range '{{{inner}}}' counts down"));
        }
        if to - from >= 100_000 {
            return Err(format!("range '{{{inner}}}' has too many slots"));
        }
        let width = if a.len() > 1 && a.starts_with('0') {
            a.len()
        } else {
            0
        };
        return Ok((from..=to).map(|n| format!("{n:0width$}")).collect());
    }
    let parts: Vec<String> = inner.split(',').map(str::to_string).collect();
    if parts.len() < 2 && inner.is_empty() {
        return Err("empty braces '{}'".to_string());
    }
    Ok(parts)
}

/// Parses one device name `s3:BUCKET[/PREFIX]`.
pub fn parse_device(number: usize, device: &str) -> Result<Slot, String> {
    let rest = device.strip_prefix("s3:").ok_or_else(|| {
        format!("slot {number}: '{device}' is not an S3 device (s3:BUCKET/PREFIX)")
    })?;
    let (bucket, prefix) = match rest.split_once('/') {
        Some((bucket, prefix)) => (bucket, prefix),
        None => (rest, ""),
    };
    let valid = bucket.len() >= 3
        && bucket.len() <= 63
        && bucket
            .bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-' || c == b'.')
        && !bucket.starts_with(['-', '.'])
        && !bucket.ends_with(['-', '.']);
    if !valid {
        return Err(format!(
            "slot {number}: '{bucket}' in '{device}' is not a valid bucket name (3-63 lower-case letters, digits, '-' or '.')"
        ));
    }
    Ok(Slot {
        number,
        bucket: bucket.to_string(),
        prefix: prefix.to_string(),
    })
}

/// Expands the slot specifications (each may hold braces) into the numbered slots, refusing
/// duplicates and prefixes that overlap.
pub fn parse_slots(specs: &[String]) -> Result<Vec<Slot>, String> {
    let mut slots = Vec::new();
    for spec in specs {
        let spec = spec.trim();
        let spec = spec.strip_prefix("chg-multi:").unwrap_or(spec);
        for device in expand_braces(spec)? {
            let number = slots.len() + 1;
            slots.push(parse_device(number, &device)?);
        }
    }
    if slots.is_empty() {
        return Err(
            "no slots configured (slots = \"s3:BUCKET/PREFIX/slot-{01..10}/\")".to_string(),
        );
    }
    for a in &slots {
        for b in &slots {
            if a.number < b.number
                && a.bucket == b.bucket
                && (a.prefix.starts_with(&b.prefix) || b.prefix.starts_with(&a.prefix))
            {
                let what = if a.prefix == b.prefix {
                    "are the same tape"
                } else {
                    "overlap: every object of one is also under the other's prefix (zero-pad the numbers, or end the prefixes with '/')"
                };
                return Err(format!(
                    "slots {} ({}) and {} ({}) {what}",
                    a.number,
                    a.device(),
                    b.number,
                    b.device()
                ));
            }
        }
    }
    Ok(slots)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn devices(spec: &str) -> Vec<String> {
        parse_slots(&[spec.to_string()])
            .expect("parses")
            .iter()
            .map(Slot::device)
            .collect()
    }

    #[test]
    fn alternates_keep_their_order() {
        assert_eq!(
            devices("s3:backups/DailySet1/slot-{01,02,03}"),
            vec![
                "s3:backups/DailySet1/slot-01",
                "s3:backups/DailySet1/slot-02",
                "s3:backups/DailySet1/slot-03"
            ]
        );
    }

    #[test]
    fn ranges_keep_zero_padding() {
        let all = devices("s3:backups/DailySet1/slot-{01..10}/");
        assert_eq!(all.len(), 10);
        assert_eq!(all[0], "s3:backups/DailySet1/slot-01/");
        assert_eq!(all[9], "s3:backups/DailySet1/slot-10/");
        let wide = expand_braces("t{001..100}").expect("range");
        assert_eq!(wide[0], "t001");
        assert_eq!(wide[99], "t100");
        assert_eq!(
            expand_braces("t{8..10}").expect("range"),
            ["t8", "t9", "t10"]
        );
    }

    #[test]
    fn several_braces_multiply_out() {
        assert_eq!(
            expand_braces("s3:b/{a,b}-{1..2}").expect("expands"),
            ["s3:b/a-1", "s3:b/a-2", "s3:b/b-1", "s3:b/b-2"]
        );
    }

    #[test]
    fn slot_numbers_and_prefixes() {
        let slots = parse_slots(&[
            "chg-multi:s3:bkt/DailySet1/slot-{01,02}/".to_string(),
            "s3:other/x/".to_string(),
        ])
        .expect("parses");
        assert_eq!(slots[2].number, 3);
        assert_eq!(slots[2].bucket, "other");
        assert_eq!(slots[1].prefix, "DailySet1/slot-02/");
        assert_eq!(parse_device(1, "s3:bkt").expect("bare").prefix, "");
    }

    #[test]
    fn bad_slot_strings_are_explained() {
        let err = |s: &str| parse_slots(&[s.to_string()]).unwrap_err();
        assert!(
            err("s3:b/slot-{01,02").contains("without a matching"),
            "{}",
            err("s3:b/slot-{01,02")
        );
        assert!(err("s3:bkt/slot-01}").contains("without a matching"));
        assert!(err("s3:bkt/slot-{a..c}").contains("whole numbers"));
        assert!(err("s3:bkt/slot-{10..1}").contains("counts down"));
        assert!(err("file:/tmp/x").contains("not an S3 device"));
        assert!(err("s3:Bad_Bucket/x").contains("not a valid bucket"));
        assert!(err("s3:ab/x").contains("not a valid bucket"));
        assert!(err("s3:bkt/slot-{1..10}").contains("overlap"));
        assert!(err("s3:bkt/slot-{01,01}").contains("same tape"));
        assert!(err("s3:bkt/{}").contains("empty braces"));
    }
}
