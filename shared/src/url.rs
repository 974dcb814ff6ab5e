//! `s3://bucket/key` URLs.
//!
//! Parsed by hand rather than with the `url` crate: S3 keys are not URL paths (they may hold `%`,
//! `?`, `#`, spaces, runs of `/`), and a generic parser would decode or normalise them.

use std::fmt;
use std::str::FromStr;

/// A parsed `s3://bucket/key`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Url {
    pub bucket: String,
    pub key: String,
}

/// Why a string is not a usable `s3://bucket/key`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum S3UrlError {
    #[error("'{0}' is not an s3:// URL (expected s3://BUCKET/KEY)")]
    NotS3(String),
    #[error("'{0}' has no bucket name (expected s3://BUCKET/KEY)")]
    NoBucket(String),
    #[error("'{url}': bad bucket name '{bucket}': {why}")]
    BadBucket {
        url: String,
        bucket: String,
        why: &'static str,
    },
    #[error("'{0}' names a bucket but no object key (expected s3://BUCKET/KEY)")]
    NoKey(String),
    #[error("'{0}' ends with '/', which names a folder, not an object")]
    TrailingSlash(String),
    #[error("'{0}': the object key is longer than S3's 1024-byte limit")]
    KeyTooLong(String),
}

impl S3Url {
    /// Parses `s3://bucket/key`, requiring a key that names an object.
    pub fn parse_object(text: &str) -> Result<Self, S3UrlError> {
        let (bucket, key) = split(text)?;
        if key.is_empty() {
            return Err(S3UrlError::NoKey(text.to_string()));
        }
        if key.ends_with('/') {
            return Err(S3UrlError::TrailingSlash(text.to_string()));
        }
        if key.len() > 1024 {
            return Err(S3UrlError::KeyTooLong(text.to_string()));
        }
        Ok(S3Url { bucket, key })
    }

    /// Parses `s3://bucket` or `s3://bucket/prefix/` (a prefix may be empty or end with `/`).
    pub fn parse_prefix(text: &str) -> Result<Self, S3UrlError> {
        let (bucket, key) = split(text)?;
        Ok(S3Url { bucket, key })
    }
}

fn split(text: &str) -> Result<(String, String), S3UrlError> {
    let rest = text
        .strip_prefix("s3://")
        .ok_or_else(|| S3UrlError::NotS3(text.to_string()))?;
    let (bucket, key) = rest.split_once('/').unwrap_or((rest, ""));
    if bucket.is_empty() {
        return Err(S3UrlError::NoBucket(text.to_string()));
    }
    check_bucket(bucket).map_err(|why| S3UrlError::BadBucket {
        url: text.to_string(),
        bucket: bucket.to_string(),
        why,
    })?;
    Ok((bucket.to_string(), key.to_string()))
}

/// S3's bucket naming rules (general purpose buckets), checked before any request so that a typo
/// gets a clear message instead of a signature or DNS error.
fn check_bucket(bucket: &str) -> Result<(), &'static str> {
    if !(3..=63).contains(&bucket.len()) {
        return Err("must be 3 to 63 characters long");
    }
    if !bucket
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-')
    {
        return Err("may hold only lower-case letters, digits, '.' and '-'");
    }
    let first = bucket.as_bytes()[0];
    let last = bucket.as_bytes()[bucket.len() - 1];
    if !(first.is_ascii_alphanumeric() && last.is_ascii_alphanumeric()) {
        return Err("must begin and end with a letter or digit");
    }
    if bucket.contains("..") {
        return Err("must not contain '..'");
    }
    if bucket.parse::<std::net::Ipv4Addr>().is_ok() {
        return Err("must not look like an IP address");
    }
    Ok(())
}

impl FromStr for S3Url {
    type Err = S3UrlError;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        S3Url::parse_object(text)
    }
}

impl fmt::Display for S3Url {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "s3://{}/{}", self.bucket, self.key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_bucket_and_key() {
        let url = S3Url::parse_object("s3://my-bucket/a/b c%20.tar").expect("valid");
        assert_eq!(url.bucket, "my-bucket");
        assert_eq!(url.key, "a/b c%20.tar");
        assert_eq!(url.to_string(), "s3://my-bucket/a/b c%20.tar");
    }

    #[test]
    fn rejects_bad_urls_with_reasons() {
        assert!(matches!(
            S3Url::parse_object("http://b/k"),
            Err(S3UrlError::NotS3(_))
        ));
        assert!(matches!(
            S3Url::parse_object("s3:///k"),
            Err(S3UrlError::NoBucket(_))
        ));
        assert!(matches!(
            S3Url::parse_object("s3://bucket"),
            Err(S3UrlError::NoKey(_))
        ));
        assert!(matches!(
            S3Url::parse_object("s3://bucket/"),
            Err(S3UrlError::NoKey(_))
        ));
        assert!(matches!(
            S3Url::parse_object("s3://bucket/dir/"),
            Err(S3UrlError::TrailingSlash(_))
        ));
        assert!(matches!(
            S3Url::parse_object("s3://My_Bucket/k"),
            Err(S3UrlError::BadBucket { .. })
        ));
        assert!(matches!(
            S3Url::parse_object("s3://ab/k"),
            Err(S3UrlError::BadBucket { .. })
        ));
        assert!(matches!(
            S3Url::parse_object("s3://a..b/k"),
            Err(S3UrlError::BadBucket { .. })
        ));
        assert!(matches!(
            S3Url::parse_object("s3://-ab/k"),
            Err(S3UrlError::BadBucket { .. })
        ));
        assert!(matches!(
            S3Url::parse_object("s3://10.0.0.1/k"),
            Err(S3UrlError::BadBucket { .. })
        ));
        let long = format!("s3://bucket/{}", "k".repeat(1025));
        assert!(matches!(
            S3Url::parse_object(&long),
            Err(S3UrlError::KeyTooLong(_))
        ));
    }

    #[test]
    fn prefixes_may_be_empty() {
        let url = S3Url::parse_prefix("s3://bucket").expect("valid");
        assert_eq!(url.key, "");
        let url = S3Url::parse_prefix("s3://bucket/logs/").expect("valid");
        assert_eq!(url.key, "logs/");
    }
}
