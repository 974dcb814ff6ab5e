//! Amanda's S3 device format, and the S3 requests that read and write it.
//!
//! Object names (from `device-src/s3-device.c`), each simply appended to the slot's prefix:
//!
//! - `special-tapestart`: the tape label header;
//! - `f%08x-filestart`: the header of file N (hex, from 1); the end of the tape is the first
//!   missing one;
//! - `f%08x-b%016x.data`: data block B of file N (hex, from 0), `BLOCK_SIZE` bytes, the last one
//!   shorter; Amanda reads them until the first 404;
//! - `f%08x-mp.data`: the whole file as one object, when Amanda used multipart upload.
//!
//! We add `f%08x-manifest.json` (block count, size, SHA-256, each block's MD5). Amanda never
//! reads it: its readers look only for `-filestart`, `-mp.data` and `-bNNN.data`, and its file
//! listing parses the number before the `-`, which the manifest shares with its file, so Amanda
//! also deletes it with the file when it overwrites the tape.

use aws_sdk_s3::Client;
use aws_sdk_s3::error::SdkError;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{Delete, ObjectIdentifier, ServerSideEncryption, StorageClass};
use base64::Engine;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use s3pipe::{ExitCode, Failure};

use crate::config::Device;
use crate::header::{self, Header};
use crate::slots::Slot;
use crate::state::{FileRecord, SlotState};

pub fn key_tapestart(slot: &Slot) -> String {
    format!("{}special-tapestart", slot.prefix)
}

pub fn key_filestart(slot: &Slot, file: u32) -> String {
    format!("{}f{file:08x}-filestart", slot.prefix)
}

pub fn key_block(slot: &Slot, file: u32, block: u64) -> String {
    format!("{}f{file:08x}-b{block:016x}.data", slot.prefix)
}

pub fn key_multipart(slot: &Slot, file: u32) -> String {
    format!("{}f{file:08x}-mp.data", slot.prefix)
}

pub fn key_manifest(slot: &Slot, file: u32) -> String {
    format!("{}f{file:08x}-manifest.json", slot.prefix)
}

/// The prefix under which every object of every file lives.
pub fn files_prefix(slot: &Slot) -> String {
    format!("{}f", slot.prefix)
}

pub fn file_prefix(slot: &Slot, file: u32) -> String {
    format!("{}f{file:08x}-", slot.prefix)
}

/// What one object under `PREFIXf` is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Part {
    FileStart,
    Block(u64),
    Multipart,
    Manifest,
    Other,
}

/// Splits `f0000000a-b0000000000000003.data` (after the prefix) into file 10, block 3.
pub fn classify(name: &str) -> Option<(u32, Part)> {
    let rest = name.strip_prefix('f')?;
    let (number, kind) = rest.split_once('-')?;
    if number.len() != 8 {
        return None;
    }
    let file = u32::from_str_radix(number, 16).ok()?;
    let part = match kind {
        "filestart" => Part::FileStart,
        "mp.data" => Part::Multipart,
        "manifest.json" => Part::Manifest,
        _ => match kind
            .strip_prefix('b')
            .and_then(|b| b.strip_suffix(".data"))
            .filter(|b| b.len() == 16)
            .and_then(|b| u64::from_str_radix(b, 16).ok())
        {
            Some(block) => Part::Block(block),
            None => Part::Other,
        },
    };
    Some((file, part))
}

/// Our per-file manifest, stored beside the file for `read` to check against.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: String,
    pub file: u32,
    pub size: u64,
    pub block_size: u64,
    pub blocks: u64,
    pub sha256: String,
    /// Hex MD5 of each block, in order (the ETag a single PUT gets).
    pub block_md5: Vec<String>,
}

pub const MANIFEST_FORMAT: &str = "tape-changer-manifest/1";

/// One listed object.
#[derive(Debug, Clone)]
pub struct Listed {
    pub key: String,
    pub size: u64,
}

/// The S3 side of the changer.
#[derive(Debug, Clone)]
pub struct Tapes {
    pub client: Client,
    pub device: Device,
}

/// The MD5 of `data`, in hex (as in ETags and our manifests) and in base64 (as in Content-MD5).
///
/// MD5 is most of the CPU a write spends (every block is hashed before its PUT can start), so it
/// comes from md5-many, whose single-stream compressor runs about 30% faster here than md-5's
/// assembly one (870 against 670 MB/s). An MD5 bug could not go unnoticed: the server recomputes
/// every Content-MD5 and refuses a mismatch, and `put` checks the ETag it answers with.
pub fn md5_base64(data: &[u8]) -> (String, String) {
    let digest = md5_many::md5(data);
    (
        hex::encode(digest),
        base64::engine::general_purpose::STANDARD.encode(digest),
    )
}

fn is_not_found<E, R>(err: &SdkError<E, R>) -> bool
where
    E: aws_sdk_s3::error::ProvideErrorMetadata,
    R: s3pipe::exit::HttpStatus,
{
    match err {
        SdkError::ServiceError(service) => {
            service.raw().http_status() == 404
                || matches!(service.err().code(), Some("NoSuchKey" | "NotFound"))
        }
        _ => false,
    }
}

impl Tapes {
    /// PUTs one object with Content-MD5 (Object Lock buckets require it) and a Content-Type
    /// (Amanda 3.5 crashes reading an object that comes back without one). Returns the hex MD5.
    pub async fn put(
        &self,
        bucket: &str,
        key: &str,
        data: Bytes,
        content_type: &str,
    ) -> Result<String, Failure> {
        // A data block's MD5 takes milliseconds: off the async workers, which meanwhile keep the
        // other uploads' connections moving.
        let (hex_md5, b64_md5) = if data.len() >= 1 << 20 {
            let block = data.clone();
            tokio::task::spawn_blocking(move || md5_base64(&block))
                .await
                .map_err(|err| Failure::new(ExitCode::Failure, format!("MD5 task: {err}")))?
        } else {
            md5_base64(&data)
        };
        let mut request = self
            .client
            .put_object()
            .bucket(bucket)
            .key(key)
            .content_md5(b64_md5)
            .content_type(content_type)
            .body(ByteStream::from(data));
        if let Some(class) = &self.device.storage_class {
            request = request.storage_class(StorageClass::from(class.as_str()));
        }
        if let Some(sse) = &self.device.server_side_encryption {
            request = request.server_side_encryption(ServerSideEncryption::from(sse.as_str()));
        }
        // Content-MD5 already makes the server check every byte; signing the payload as well
        // would hash each block twice more (here and on the server) for nothing.
        let output = request
            .customize()
            .disable_payload_signing()
            .send()
            .await
            .map_err(|err| Failure::from_sdk(format!("cannot write s3://{bucket}/{key}"), &err))?;
        if let Some(etag) = output.e_tag() {
            let etag = etag.trim_matches('"');
            if etag.len() == 32 && !etag.eq_ignore_ascii_case(&hex_md5) {
                return Err(Failure::verify(format!(
                    "s3://{bucket}/{key}: the server stored ETag {etag}, not the MD5 {hex_md5} of what was sent"
                )));
            }
        }
        Ok(hex_md5)
    }

    /// GETs a whole object; `None` when there is none.
    pub async fn get(&self, bucket: &str, key: &str) -> Result<Option<Bytes>, Failure> {
        let mut rounds = 0;
        loop {
            rounds += 1;
            let output = match self
                .client
                .get_object()
                .bucket(bucket)
                .key(key)
                .send()
                .await
            {
                Ok(output) => output,
                Err(err) if is_not_found(&err) => return Ok(None),
                Err(err) => {
                    return Err(Failure::from_sdk(
                        format!("cannot read s3://{bucket}/{key}"),
                        &err,
                    ));
                }
            };
            match output.body.collect().await {
                Ok(body) => return Ok(Some(body.into_bytes())),
                Err(err) if rounds < 4 => {
                    tracing::warn!(key, "body broke off ({err}); reading it again");
                }
                Err(err) => {
                    return Err(Failure::new(
                        ExitCode::Network,
                        format!("cannot read s3://{bucket}/{key}: {err}"),
                    ));
                }
            }
        }
    }

    /// Every object under a prefix, in key order.
    pub async fn list(&self, bucket: &str, prefix: &str) -> Result<Vec<Listed>, Failure> {
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let page = self
                .client
                .list_objects_v2()
                .bucket(bucket)
                .prefix(prefix)
                .set_continuation_token(token.take())
                .send()
                .await
                .map_err(|err| {
                    Failure::from_sdk(format!("cannot list s3://{bucket}/{prefix}"), &err)
                })?;
            for object in page.contents() {
                if let Some(key) = object.key() {
                    out.push(Listed {
                        key: key.to_string(),
                        size: object.size().unwrap_or(0).max(0) as u64,
                    });
                }
            }
            match page.next_continuation_token() {
                Some(next) if page.is_truncated() == Some(true) => token = Some(next.to_string()),
                _ => break,
            }
        }
        Ok(out)
    }

    /// Deletes objects, a thousand at a time (one request each, as Amanda's S3_MULTI_DELETE),
    /// one by one if the server refuses the batch.
    pub async fn delete(&self, bucket: &str, keys: &[String]) -> Result<(), Failure> {
        for chunk in keys.chunks(1000) {
            let objects: Vec<ObjectIdentifier> = chunk
                .iter()
                .filter_map(|k| ObjectIdentifier::builder().key(k).build().ok())
                .collect();
            let delete = Delete::builder()
                .set_objects(Some(objects))
                .quiet(true)
                .build()
                .map_err(|err| Failure::new(ExitCode::Failure, err.to_string()))?;
            let batch = self
                .client
                .delete_objects()
                .bucket(bucket)
                .delete(delete)
                .send()
                .await;
            let failed_keys: Vec<String> = match batch {
                Ok(output) => output
                    .errors()
                    .iter()
                    .filter_map(|e| e.key().map(str::to_string))
                    .collect(),
                Err(err) => {
                    tracing::debug!("batch delete refused ({err}); deleting one by one");
                    chunk.to_vec()
                }
            };
            for key in failed_keys {
                match self
                    .client
                    .delete_object()
                    .bucket(bucket)
                    .key(&key)
                    .send()
                    .await
                {
                    Ok(_) => {}
                    Err(err) if is_not_found(&err) => {}
                    Err(err) => {
                        return Err(Failure::from_sdk(
                            format!("cannot delete s3://{bucket}/{key}"),
                            &err,
                        ));
                    }
                }
            }
        }
        Ok(())
    }

    /// Creates the bucket when `CREATE_BUCKET` allows and it does not exist. Never deletes one.
    pub async fn ensure_bucket(&self, bucket: &str) -> Result<(), Failure> {
        match self.client.head_bucket().bucket(bucket).send().await {
            Ok(_) => return Ok(()),
            Err(err) if is_not_found(&err) && self.device.create_bucket => {}
            Err(err) if is_not_found(&err) => {
                return Err(Failure::new(
                    ExitCode::NotFound,
                    format!("bucket {bucket} does not exist and CREATE_BUCKET is off"),
                ));
            }
            Err(err) => {
                return Err(Failure::from_sdk(
                    format!("cannot reach bucket {bucket}"),
                    &err,
                ));
            }
        }
        let mut request = self.client.create_bucket().bucket(bucket);
        if let Some(location) = self
            .device
            .bucket_location
            .as_deref()
            .filter(|l| !l.is_empty() && *l != "us-east-1")
        {
            request = request.create_bucket_configuration(
                aws_sdk_s3::types::CreateBucketConfiguration::builder()
                    .location_constraint(aws_sdk_s3::types::BucketLocationConstraint::from(
                        location,
                    ))
                    .build(),
            );
        }
        match request.send().await {
            Ok(_) => Ok(()),
            Err(err) if format!("{err:?}").contains("BucketAlreadyOwnedByYou") => Ok(()),
            Err(err) => Err(Failure::from_sdk(
                format!("cannot create bucket {bucket}"),
                &err,
            )),
        }
    }

    /// The tape's label: `Ok(None)` for an empty slot, an error for a header that is not
    /// Amanda's (a slot pointed at the wrong data is never treated as empty).
    pub async fn read_label(&self, slot: &Slot) -> Result<Option<(String, String)>, Failure> {
        let Some(bytes) = self.get(&slot.bucket, &key_tapestart(slot)).await? else {
            return Ok(None);
        };
        match header::parse(&bytes) {
            Ok(Header::TapeStart { datestamp, label }) => Ok(Some((datestamp, label))),
            Ok(_) => Err(Failure::verify(format!(
                "{slot}: the tape-start object holds a file header, not a label"
            ))),
            Err(err) => Err(Failure::verify(format!("{slot}: tape start is {err}"))),
        }
    }

    /// Reads one slot entirely from S3: label, then every file with its header and manifest.
    pub async fn scan(&self, slot: &Slot) -> Result<SlotState, Failure> {
        let mut state = SlotState {
            device: slot.device(),
            ..SlotState::default()
        };
        match self.read_label(slot).await {
            Ok(Some((datestamp, label))) => {
                state.label = Some(label);
                state.datestamp = Some(datestamp);
            }
            Ok(None) => return Ok(state),
            Err(failure) if failure.exit == ExitCode::Verify => {
                state.error = Some(failure.message);
                return Ok(state);
            }
            Err(failure) => return Err(failure),
        }
        let listing = self.list(&slot.bucket, &files_prefix(slot)).await?;
        let layout = Layout::of(slot, &listing);
        for file in layout.files() {
            let Some(bytes) = self.get(&slot.bucket, &key_filestart(slot, file)).await? else {
                break;
            };
            let Ok(Header::File(h)) = header::parse(&bytes) else {
                tracing::warn!(
                    "{slot}: file {file} has no Amanda file header; the tape ends before it"
                );
                break;
            };
            let manifest = self.manifest(slot, file).await?;
            let (size, blocks, sha256) = match &manifest {
                Some(m) => (m.size, m.blocks, Some(m.sha256.clone())),
                None => {
                    let (blocks, size) = layout.contiguous_blocks(file);
                    match layout.multipart_size(file) {
                        // Amanda's multipart layout: one object, which `read` fetches in
                        // BLOCK_SIZE ranges; counted the same way here.
                        Some(object) if blocks == 0 => {
                            (object, object.div_ceil(self.device.block_size.max(1)), None)
                        }
                        object => (size + object.unwrap_or(0), blocks, None),
                    }
                }
            };
            state.files.push(FileRecord {
                file,
                host: h.host,
                disk: h.disk,
                level: h.level,
                datestamp: h.datestamp,
                size,
                blocks,
                sha256,
            });
        }
        Ok(state)
    }

    pub async fn manifest(&self, slot: &Slot, file: u32) -> Result<Option<Manifest>, Failure> {
        let Some(bytes) = self.get(&slot.bucket, &key_manifest(slot, file)).await? else {
            return Ok(None);
        };
        serde_json::from_slice::<Manifest>(&bytes)
            .map(Some)
            .map_err(|err| {
                Failure::verify(format!(
                    "{slot}: the manifest of file {file} is damaged ({err})"
                ))
            })
    }
}

/// The objects of a tape's files, from one listing.
#[derive(Debug, Default)]
pub struct Layout {
    /// `(file, part, size)` for every object recognised.
    pub parts: Vec<(u32, Part, u64)>,
    pub keys: Vec<String>,
}

impl Layout {
    pub fn of(slot: &Slot, listing: &[Listed]) -> Layout {
        let mut layout = Layout::default();
        for object in listing {
            layout.keys.push(object.key.clone());
            if let Some(name) = object.key.strip_prefix(&slot.prefix)
                && let Some((file, part)) = classify(name)
            {
                layout.parts.push((file, part, object.size));
            }
        }
        layout
    }

    /// The files as Amanda sees them: 1, 2, ... up to the first missing file start.
    pub fn files(&self) -> Vec<u32> {
        let mut out = Vec::new();
        let mut next = 1;
        while self
            .parts
            .iter()
            .any(|(f, p, _)| *f == next && *p == Part::FileStart)
        {
            out.push(next);
            next += 1;
        }
        out
    }

    /// The highest file number with any object (where a new file must not go).
    pub fn highest(&self) -> u32 {
        self.parts.iter().map(|(f, _, _)| *f).max().unwrap_or(0)
    }

    /// Block numbers of a file, sorted.
    pub fn blocks(&self, file: u32) -> Vec<(u64, u64)> {
        let mut blocks: Vec<(u64, u64)> = self
            .parts
            .iter()
            .filter_map(|(f, p, size)| match p {
                Part::Block(b) if *f == file => Some((*b, *size)),
                _ => None,
            })
            .collect();
        blocks.sort_unstable();
        blocks
    }

    /// Blocks 0, 1, 2, ... up to the first gap, and their total size: what Amanda would read.
    pub fn contiguous_blocks(&self, file: u32) -> (u64, u64) {
        let mut count = 0;
        let mut size = 0;
        for (block, bytes) in self.blocks(file) {
            if block != count {
                break;
            }
            count += 1;
            size += bytes;
        }
        (count, size)
    }

    pub fn multipart_size(&self, file: u32) -> Option<u64> {
        self.parts
            .iter()
            .find(|(f, p, _)| *f == file && *p == Part::Multipart)
            .map(|(_, _, s)| *s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slot() -> Slot {
        Slot {
            number: 1,
            bucket: "bkt".to_string(),
            prefix: "DailySet1/slot-01/".to_string(),
        }
    }

    /// md5-many against RustCrypto's md-5, on lengths around its 64-byte blocks and padding.
    #[test]
    fn md5_matches_md5_crate() {
        use md5::Digest;
        let data: Vec<u8> = (0..200_000u32).map(|i| (i * 31 % 253) as u8).collect();
        for len in [
            0, 1, 55, 56, 63, 64, 65, 119, 120, 128, 4095, 65_537, 200_000,
        ] {
            let (hex_md5, b64_md5) = md5_base64(&data[..len]);
            let expected = md5::Md5::digest(&data[..len]);
            assert_eq!(hex_md5, hex::encode(expected), "length {len}");
            assert_eq!(
                b64_md5,
                base64::engine::general_purpose::STANDARD.encode(expected)
            );
        }
        assert_eq!(md5_base64(b"").0, "d41d8cd98f00b204e9800998ecf8427e");
    }

    #[test]
    fn key_names_match_amanda() {
        let s = slot();
        assert_eq!(key_tapestart(&s), "DailySet1/slot-01/special-tapestart");
        assert_eq!(
            key_filestart(&s, 10),
            "DailySet1/slot-01/f0000000a-filestart"
        );
        assert_eq!(
            key_block(&s, 1, 0x1f),
            "DailySet1/slot-01/f00000001-b000000000000001f.data"
        );
        assert_eq!(key_multipart(&s, 2), "DailySet1/slot-01/f00000002-mp.data");
    }

    #[test]
    fn keys_classify_back() {
        assert_eq!(classify("f0000000a-filestart"), Some((10, Part::FileStart)));
        assert_eq!(
            classify("f00000001-b0000000000000003.data"),
            Some((1, Part::Block(3)))
        );
        assert_eq!(
            classify("f00000001-manifest.json"),
            Some((1, Part::Manifest))
        );
        assert_eq!(classify("f00000001-mp.data"), Some((1, Part::Multipart)));
        assert_eq!(classify("special-tapestart"), None);
        assert_eq!(classify("f1-filestart"), None);
    }

    #[test]
    fn the_tape_ends_at_the_first_missing_file_start_and_blocks_at_the_first_gap() {
        let s = slot();
        let listed = |name: &str, size| Listed {
            key: format!("{}{name}", s.prefix),
            size,
        };
        let listing = vec![
            listed("f00000001-filestart", 100),
            listed("f00000001-b0000000000000000.data", 10),
            listed("f00000001-b0000000000000001.data", 10),
            listed("f00000001-b0000000000000003.data", 4),
            listed("f00000002-filestart", 100),
            listed("f00000004-filestart", 100),
        ];
        let layout = Layout::of(&s, &listing);
        assert_eq!(layout.files(), vec![1, 2]);
        assert_eq!(layout.highest(), 4);
        assert_eq!(layout.contiguous_blocks(1), (2, 20));
        assert_eq!(layout.blocks(1).len(), 3);
    }
}
