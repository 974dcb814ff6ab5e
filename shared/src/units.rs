//! Human sizes and durations on the command line.
//!
//! Sizes follow the convention of coreutils (`dd`, `split`, `sort -S`) that operators already type:
//! a bare suffix or one with `i` is binary (`512k` = `512KiB` = 524,288), one with `B` is decimal
//! (`1GB` = 10^9). No crate parses exactly this (bytesize reads `1GB` as binary or decimal depending
//! on version, and rejects `1.5G`), and a few lines here make the rule explicit and tested.
//! Durations use `humantime`, which reads `90s`, `5m`, `1h 30m`.

use std::time::Duration;

/// Parses a size such as `8MiB`, `1.5G`, `512k`, `4096` or `10MB` into bytes.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let trimmed = text.trim();
    let split = trimmed
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(trimmed.len());
    let (number, suffix) = trimmed.split_at(split);
    if number.is_empty() {
        return Err(format!(
            "'{text}' is not a size (examples: 4096, 512k, 8MiB, 1.5G, 10MB)"
        ));
    }
    let value: f64 = number
        .parse()
        .map_err(|_| format!("'{text}' is not a size (examples: 4096, 512k, 8MiB, 1.5G, 10MB)"))?;
    let multiplier: u64 = match suffix.trim() {
        "" | "B" | "b" => 1,
        "k" | "K" | "KiB" | "kiB" => 1 << 10,
        "M" | "m" | "MiB" => 1 << 20,
        "G" | "g" | "GiB" => 1 << 30,
        "T" | "t" | "TiB" => 1 << 40,
        "P" | "p" | "PiB" => 1 << 50,
        "kB" | "KB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        "TB" => 1_000_000_000_000,
        "PB" => 1_000_000_000_000_000,
        other => {
            return Err(format!(
                "'{text}': unknown size unit '{other}' (use k/M/G/T or KiB/MiB/GiB/TiB for powers of 1024, kB/MB/GB/TB for powers of 1000)"
            ));
        }
    };
    let bytes = value * multiplier as f64;
    if !bytes.is_finite() || bytes > u64::MAX as f64 {
        return Err(format!("'{text}' is too large"));
    }
    if bytes.fract() != 0.0 {
        return Err(format!("'{text}' is not a whole number of bytes"));
    }
    Ok(bytes as u64)
}

/// Formats bytes in the largest binary unit: exactly when it divides (`16MiB`, which `parse_size`
/// reads back), otherwise to one decimal place for display (`1.5GiB`).
pub fn format_size(bytes: u64) -> String {
    const UNITS: [(&str, u64); 5] = [
        ("PiB", 1 << 50),
        ("TiB", 1 << 40),
        ("GiB", 1 << 30),
        ("MiB", 1 << 20),
        ("KiB", 1 << 10),
    ];
    for (unit, size) in UNITS {
        if bytes >= size {
            if bytes.is_multiple_of(size) {
                return format!("{}{unit}", bytes / size);
            }
            return format!("{:.1}{unit}", bytes as f64 / size as f64);
        }
    }
    format!("{bytes}B")
}

/// Parses a duration such as `90s`, `5m`, `1h 30m` or `250ms`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text.trim()).map_err(|err| {
        format!("'{text}' is not a duration ({err}; examples: 90s, 5m, 1h 30m, 250ms)")
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn binary_and_decimal_suffixes() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("512k"), Ok(512 * 1024));
        assert_eq!(parse_size("8MiB"), Ok(8 << 20));
        assert_eq!(parse_size("8M"), Ok(8 << 20));
        assert_eq!(parse_size("1.5G"), Ok(3 << 29));
        assert_eq!(parse_size("10MB"), Ok(10_000_000));
        assert_eq!(parse_size("1TiB"), Ok(1 << 40));
        assert_eq!(parse_size(" 2 GiB "), Ok(2 << 30));
    }

    #[test]
    fn bad_sizes_are_explained() {
        assert!(parse_size("").is_err());
        assert!(parse_size("MiB").is_err());
        assert!(
            parse_size("12 parsecs")
                .unwrap_err()
                .contains("unknown size unit")
        );
        assert!(parse_size("1.5").unwrap_err().contains("whole number"));
        assert!(
            parse_size("99999999999P")
                .unwrap_err()
                .contains("too large")
        );
    }

    #[test]
    fn sizes_format_back() {
        assert_eq!(format_size(16 << 20), "16MiB");
        assert_eq!(format_size(3 << 29), "1.5GiB");
        assert_eq!(format_size(100), "100B");
        assert_eq!(parse_size(&format_size(5 << 20)), Ok(5 << 20));
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert!(parse_duration("soon").is_err());
    }
}
