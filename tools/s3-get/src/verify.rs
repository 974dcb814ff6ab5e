//! What s3-get checks the bytes against, chosen from what the object carries.
//!
//! Best is the SHA-256 that s3-put-multipart stores in the metadata. Objects written by other
//! tools often still have a checkable ETag: the MD5 of the content for a single PUT, or the MD5 of
//! the parts' MD5s followed by `-N` for a multipart upload (S3's documented behaviour, also that of
//! MinIO and Garage), which s3-get recomputes using the size of part 1. Encrypted objects (SSE-KMS,
//! SSE-C) have ETags that are not MD5s, so they are not checked by ETag.

use md5::{Digest as _, Md5};
use sha2::Sha256;

/// The check chosen for one download.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expected {
    /// The stored SHA-256, hex.
    Sha256(String),
    /// MD5 of the whole content, hex.
    Md5(String),
    /// MD5 of the part MD5s: hex digest, number of parts, size of every part but the last.
    MultipartMd5 {
        digest: String,
        parts: u64,
        part_size: u64,
    },
    /// Nothing to check against (a range, an encrypted object, or --no-verify).
    Nothing,
}

impl Expected {
    pub fn name(&self) -> &'static str {
        match self {
            Expected::Sha256(_) => "sha256",
            Expected::Md5(_) | Expected::MultipartMd5 { .. } => "etag",
            Expected::Nothing => "none",
        }
    }
}

/// Splits an ETag into its hex digest and, for a multipart ETag, the part count.
pub fn parse_etag(etag: &str) -> Option<(String, Option<u64>)> {
    let etag = etag.trim_matches('"');
    let (digest, parts) = match etag.split_once('-') {
        Some((digest, parts)) => (digest, Some(parts.parse().ok()?)),
        None => (etag, None),
    };
    (digest.len() == 32 && digest.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| (digest.to_ascii_lowercase(), parts))
}

/// Hashes the stream in order as it is written out.
#[derive(Debug)]
pub struct Hasher {
    sha256: Sha256,
    md5: Option<Md5>,
    part_md5: Option<(Md5, u64, u64, Vec<u8>)>,
}

impl Hasher {
    pub fn new(expected: &Expected) -> Self {
        Hasher {
            sha256: Sha256::new(),
            md5: matches!(expected, Expected::Md5(_)).then(Md5::new),
            part_md5: match expected {
                Expected::MultipartMd5 { part_size, .. } => {
                    Some((Md5::new(), 0, *part_size, Vec::new()))
                }
                _ => None,
            },
        }
    }

    pub fn update(&mut self, mut data: &[u8]) {
        self.sha256.update(data);
        if let Some(md5) = &mut self.md5 {
            md5.update(data);
        }
        if let Some((md5, filled, part_size, digests)) = &mut self.part_md5 {
            while !data.is_empty() {
                let take = ((*part_size - *filled) as usize).min(data.len());
                md5.update(&data[..take]);
                *filled += take as u64;
                data = &data[take..];
                if *filled == *part_size {
                    digests.extend_from_slice(&std::mem::take(md5).finalize());
                    *filled = 0;
                }
            }
        }
    }

    /// The SHA-256 of everything seen, and whether it matches `expected` (an error says how not).
    pub fn finish(self, expected: &Expected) -> (String, Result<(), String>) {
        let sha256 = hex::encode(self.sha256.finalize());
        let verdict = match expected {
            Expected::Nothing => Ok(()),
            Expected::Sha256(want) if *want == sha256 => Ok(()),
            Expected::Sha256(want) => Err(format!(
                "SHA-256 mismatch: stored {want}, received {sha256}"
            )),
            Expected::Md5(want) => {
                let got = hex::encode(self.md5.map(|m| m.finalize().to_vec()).unwrap_or_default());
                if *want == got {
                    Ok(())
                } else {
                    Err(format!(
                        "MD5 mismatch with the ETag: expected {want}, received {got}"
                    ))
                }
            }
            Expected::MultipartMd5 { digest, parts, .. } => {
                let (md5, filled, _, mut digests) =
                    self.part_md5.expect("set up for multipart ETags");
                if filled > 0 {
                    digests.extend_from_slice(&md5.finalize());
                }
                let count = digests.len() as u64 / 16;
                let got = hex::encode(Md5::digest(&digests));
                if count == *parts && *digest == got {
                    Ok(())
                } else {
                    Err(format!(
                        "multipart ETag mismatch: expected {digest}-{parts}, received {got}-{count}"
                    ))
                }
            }
        };
        (sha256, verdict)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn etags() {
        assert_eq!(
            parse_etag("\"764efa883dda1e11db47671c4a3bbd9e\""),
            Some(("764efa883dda1e11db47671c4a3bbd9e".into(), None))
        );
        assert_eq!(
            parse_etag("\"4d20a1546b8a057a3e4edbb0ce4ba273-10\""),
            Some(("4d20a1546b8a057a3e4edbb0ce4ba273".into(), Some(10)))
        );
        assert_eq!(parse_etag("\"not-an-md5\""), None);
    }

    #[test]
    fn multipart_etag_is_md5_of_part_md5s() {
        let data: Vec<u8> = (0..25u32).map(|i| i as u8).collect();
        let mut parts = Vec::new();
        for chunk in data.chunks(10) {
            parts.extend_from_slice(&Md5::digest(chunk));
        }
        let digest = hex::encode(Md5::digest(&parts));
        let expected = Expected::MultipartMd5 {
            digest,
            parts: 3,
            part_size: 10,
        };
        let mut hasher = Hasher::new(&expected);
        hasher.update(&data[..7]);
        hasher.update(&data[7..]);
        assert_eq!(hasher.finish(&expected).1, Ok(()));
        let mut hasher = Hasher::new(&expected);
        hasher.update(&data[..24]);
        assert!(hasher.finish(&expected).1.is_err());
    }

    #[test]
    fn sha256_mismatch_is_reported() {
        let expected = Expected::Sha256("00".repeat(32));
        let mut hasher = Hasher::new(&expected);
        hasher.update(b"data");
        assert!(
            hasher
                .finish(&expected)
                .1
                .unwrap_err()
                .contains("SHA-256 mismatch")
        );
    }
}
