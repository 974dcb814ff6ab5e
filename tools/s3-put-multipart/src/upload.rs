//! The S3 side of an upload: one PutObject for a short stream, otherwise a multipart upload that
//! is completed only when the whole input has arrived intact, and aborted on anything else.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_s3::Client;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{
    ChecksumAlgorithm, ChecksumType, CompletedMultipartUpload, CompletedPart, MetadataDirective,
    ObjectCannedAcl, ServerSideEncryption, StorageClass, TaggingDirective,
};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use tokio::sync::Semaphore;

use s3pipe::{ExitCode, Failure, S3Url, SHA256_METADATA_KEY};

use crate::Checksum;
use crate::input::{Part, StreamEnd};

/// Rounds of our own around the SDK's retries for one part. The SDK already retries each request
/// `--max-attempts` times; this outer loop covers what it gives up on (an exhausted retry quota, a
/// connection reset mid-body), since the part's bytes are still in memory and cheap to resend.
const PART_ROUNDS: u32 = 3;

/// S3's limit for one PutObject or CopyObject.
const MAX_SINGLE_REQUEST: u64 = 5 << 30;

/// Everything the object is created with, from the command line.
#[derive(Debug, Clone)]
pub struct ObjectSettings {
    pub url: S3Url,
    pub content_type: String,
    pub storage_class: Option<StorageClass>,
    pub sse: Option<ServerSideEncryption>,
    pub sse_kms_key_id: Option<String>,
    pub metadata: HashMap<String, String>,
    /// URL-encoded `k=v&k2=v2`, as S3 wants tags on upload.
    pub tagging: Option<String>,
    pub acl: Option<ObjectCannedAcl>,
    pub if_none_match: bool,
    pub checksum: Option<Checksum>,
}

/// What S3 says about the stored object.
#[derive(Debug, Clone, Default)]
pub struct Stored {
    pub etag: String,
    pub version_id: Option<String>,
    /// Whether the SHA-256 made it into the object's metadata.
    pub sha256_in_metadata: bool,
}

fn crc_base64(crc: u32) -> String {
    BASE64.encode(crc.to_be_bytes())
}

/// The whole stream in one PutObject: used when it fits in one part, so that small objects cost
/// one request and carry their SHA-256 from the start.
pub async fn put_single(
    client: &Client,
    settings: &ObjectSettings,
    data: Bytes,
    end: &StreamEnd,
) -> Result<Stored, Failure> {
    let mut metadata = settings.metadata.clone();
    metadata.insert(SHA256_METADATA_KEY.to_string(), hex::encode(end.sha256));
    let length = data.len() as i64;
    let request = client
        .put_object()
        .bucket(&settings.url.bucket)
        .key(&settings.url.key)
        .body(ByteStream::from(data))
        .content_length(length)
        .content_type(&settings.content_type)
        .set_metadata(Some(metadata))
        .set_storage_class(settings.storage_class.clone())
        .set_server_side_encryption(settings.sse.clone())
        .set_ssekms_key_id(settings.sse_kms_key_id.clone())
        .set_tagging(settings.tagging.clone())
        .set_acl(settings.acl.clone())
        .set_if_none_match(settings.if_none_match.then(|| "*".to_string()));
    let request = match (settings.checksum, end.crc32c) {
        (Some(Checksum::Crc32c), Some(crc)) => request
            .checksum_algorithm(ChecksumAlgorithm::Crc32C)
            .checksum_crc32_c(crc_base64(crc)),
        (Some(Checksum::Sha256), _) => request
            .checksum_algorithm(ChecksumAlgorithm::Sha256)
            .checksum_sha256(BASE64.encode(end.sha256)),
        _ => request,
    };
    let output = request
        .customize()
        .disable_payload_signing()
        .send()
        .await
        .map_err(|err| upload_failure(&settings.url, "cannot store", &err))?;
    Ok(Stored {
        etag: output.e_tag.unwrap_or_default(),
        version_id: output.version_id,
        sha256_in_metadata: true,
    })
}

/// Words an S3 error for the user, naming `--if-none-match` when that is what refused.
fn upload_failure<E, R>(
    url: &S3Url,
    doing: &str,
    err: &aws_sdk_s3::error::SdkError<E, R>,
) -> Failure
where
    E: aws_sdk_s3::error::ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug + s3pipe::exit::HttpStatus + 'static,
{
    let failure = Failure::from_sdk(format!("{doing} {url}"), err);
    if failure.exit == ExitCode::Exists {
        return exists_failure(url);
    }
    failure
}

/// A multipart upload in progress.
#[derive(Debug)]
pub struct Multipart {
    client: Client,
    settings: Arc<ObjectSettings>,
    pub upload_id: String,
    /// Where finished parts' buffers go back to.
    pub pool: crate::input::BufferPool,
}

impl Multipart {
    /// Starts the upload. The SHA-256 is not known yet; it is added once the stream has ended.
    pub async fn create(
        client: &Client,
        settings: Arc<ObjectSettings>,
        pool: crate::input::BufferPool,
    ) -> Result<Self, Failure> {
        let request = create_request(client, &settings, settings.metadata.clone());
        let output = request
            .send()
            .await
            .map_err(|err| upload_failure(&settings.url, "cannot start an upload to", &err))?;
        let upload_id = output.upload_id.ok_or_else(|| {
            Failure::new(
                ExitCode::Failure,
                "the server started an upload without an upload id",
            )
        })?;
        tracing::info!(upload_id, "multipart upload started");
        Ok(Multipart {
            client: client.clone(),
            settings,
            upload_id,
            pool,
        })
    }

    /// Uploads one part, at most `requests` at a time across all parts.
    pub async fn upload_part(
        &self,
        part: Part,
        requests: Arc<Semaphore>,
    ) -> Result<CompletedPart, Failure> {
        let _slot = requests
            .acquire_owned()
            .await
            .map_err(|_| Failure::input("upload stopped"))?;
        let number =
            i32::try_from(part.number).map_err(|_| Failure::input("part number out of range"))?;
        let mut round = 0;
        loop {
            round += 1;
            let request = self
                .client
                .upload_part()
                .bucket(&self.settings.url.bucket)
                .key(&self.settings.url.key)
                .upload_id(&self.upload_id)
                .part_number(number)
                .content_length(part.data.len() as i64)
                .body(ByteStream::from(part.data.clone()));
            let request = match (part.crc32c, part.sha256) {
                (Some(crc), _) => request
                    .checksum_algorithm(ChecksumAlgorithm::Crc32C)
                    .checksum_crc32_c(crc_base64(crc)),
                (_, Some(sha)) => request
                    .checksum_algorithm(ChecksumAlgorithm::Sha256)
                    .checksum_sha256(BASE64.encode(sha)),
                _ => request,
            };
            match request.customize().disable_payload_signing().send().await {
                Ok(output) => {
                    tracing::debug!(part = number, bytes = part.data.len(), "part stored");
                    let completed = CompletedPart::builder()
                        .part_number(number)
                        .set_e_tag(output.e_tag)
                        .set_checksum_crc32_c(
                            output.checksum_crc32_c.or(part.crc32c.map(crc_base64)),
                        )
                        .set_checksum_sha256(
                            output
                                .checksum_sha256
                                .or(part.sha256.map(|s| BASE64.encode(s))),
                        )
                        .build();
                    crate::input::recycle(part, &self.pool);
                    return Ok(completed);
                }
                Err(err) => {
                    let failure = Failure::from_sdk(
                        format!("cannot store part {number} of {}", self.settings.url),
                        &err,
                    );
                    if failure.exit != ExitCode::Network || round >= PART_ROUNDS {
                        return Err(failure);
                    }
                    tracing::warn!("{failure}; retrying the part (round {round} of {PART_ROUNDS})");
                    tokio::time::sleep(Duration::from_secs(2u64.pow(round))).await;
                }
            }
        }
    }

    /// Completes the upload: only now does the object become visible.
    pub async fn complete(
        &self,
        mut parts: Vec<CompletedPart>,
        end: &StreamEnd,
    ) -> Result<Stored, Failure> {
        parts.sort_by_key(|part| part.part_number);
        let request = self
            .client
            .complete_multipart_upload()
            .bucket(&self.settings.url.bucket)
            .key(&self.settings.url.key)
            .upload_id(&self.upload_id)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(parts))
                    .build(),
            )
            .set_if_none_match(self.settings.if_none_match.then(|| "*".to_string()));
        let request = match end.crc32c {
            Some(crc) => request
                .checksum_type(ChecksumType::FullObject)
                .checksum_crc32_c(crc_base64(crc)),
            None => request,
        };
        let output = request.send().await.map_err(|err| {
            upload_failure(&self.settings.url, "cannot complete the upload of", &err)
        })?;
        Ok(Stored {
            etag: output.e_tag.unwrap_or_default(),
            version_id: output.version_id,
            sha256_in_metadata: false,
        })
    }

    /// Aborts the upload so that no part stays stored. Failures are reported, not returned: the
    /// error that caused the abort is the one the user needs to see first.
    pub async fn abort(&self) {
        let result = self
            .client
            .abort_multipart_upload()
            .bucket(&self.settings.url.bucket)
            .key(&self.settings.url.key)
            .upload_id(&self.upload_id)
            .send()
            .await;
        match result {
            Ok(_) => tracing::info!(upload_id = self.upload_id, "multipart upload aborted"),
            Err(err) => {
                let failure = Failure::from_sdk("cannot abort the upload", &err);
                if failure.exit != ExitCode::NotFound {
                    eprintln!(
                        "s3-put-multipart: warning: {failure}; its parts stay stored until a lifecycle rule or `aws s3api abort-multipart-upload --bucket {} --key {} --upload-id {}` removes them",
                        self.settings.url.bucket, self.settings.url.key, self.upload_id
                    );
                }
            }
        }
    }
}

fn create_request(
    client: &Client,
    settings: &ObjectSettings,
    metadata: HashMap<String, String>,
) -> aws_sdk_s3::operation::create_multipart_upload::builders::CreateMultipartUploadFluentBuilder {
    let request = client
        .create_multipart_upload()
        .bucket(&settings.url.bucket)
        .key(&settings.url.key)
        .content_type(&settings.content_type)
        .set_metadata(Some(metadata))
        .set_storage_class(settings.storage_class.clone())
        .set_server_side_encryption(settings.sse.clone())
        .set_ssekms_key_id(settings.sse_kms_key_id.clone())
        .set_tagging(settings.tagging.clone())
        .set_acl(settings.acl.clone());
    match settings.checksum {
        Some(Checksum::Crc32c) => request
            .checksum_algorithm(ChecksumAlgorithm::Crc32C)
            .checksum_type(ChecksumType::FullObject),
        Some(Checksum::Sha256) => request
            .checksum_algorithm(ChecksumAlgorithm::Sha256)
            .checksum_type(ChecksumType::Composite),
        None => request,
    }
}

/// Adds the stream's SHA-256 to a completed multipart object's metadata.
///
/// S3 fixes metadata when an upload starts, before the stream's digest can be known, and offers no
/// way to change it except a copy. The copy is made server-side onto the same key, conditional on
/// the ETag we just completed (so a concurrent writer's object is never relabelled); on Garage and
/// MinIO it moves no data. Objects over 5 GiB are copied part by part (UploadPartCopy) with the
/// same part boundaries. If the copy fails the data is still stored whole, so this warns and
/// s3-get falls back to the ETag.
pub async fn add_sha256_metadata(
    client: &Client,
    settings: &ObjectSettings,
    stored: &Stored,
    end: &StreamEnd,
    part_size: u64,
    concurrency: usize,
) -> Stored {
    let mut metadata = settings.metadata.clone();
    metadata.insert(SHA256_METADATA_KEY.to_string(), hex::encode(end.sha256));
    // Some servers (Garage 2.5) hand out version ids without keeping versions; only a bucket that
    // says versioning is enabled has an old version worth naming or removing.
    let versioned = client
        .get_bucket_versioning()
        .bucket(&settings.url.bucket)
        .send()
        .await
        .ok()
        .and_then(|v| v.status)
        .is_some_and(|status| status == aws_sdk_s3::types::BucketVersioningStatus::Enabled);
    let stored = &Stored {
        version_id: stored.version_id.clone().filter(|_| versioned),
        ..stored.clone()
    };
    let mut source = format!(
        "{}/{}",
        settings.url.bucket,
        percent_encoding::utf8_percent_encode(&settings.url.key, KEY_ENCODE)
    );
    if let Some(version) = &stored.version_id {
        source.push_str("?versionId=");
        source.push_str(version);
    }
    let result = if end.bytes <= MAX_SINGLE_REQUEST {
        copy_in_one(client, settings, &source, stored, metadata).await
    } else {
        copy_in_parts(
            client,
            settings,
            &source,
            stored,
            metadata,
            end.bytes,
            part_size,
            concurrency,
        )
        .await
    };
    match result {
        Ok(copied) => {
            // In a versioned bucket the copy is a second version; the first, without the digest,
            // would only confuse whoever lists versions.
            if let (Some(old), Some(new)) = (&stored.version_id, &copied.version_id)
                && old != new
            {
                let deleted = client
                    .delete_object()
                    .bucket(&settings.url.bucket)
                    .key(&settings.url.key)
                    .version_id(old)
                    .send()
                    .await;
                if let Err(err) = deleted {
                    tracing::warn!(
                        "{}",
                        Failure::from_sdk("cannot remove the version without the SHA-256", &err)
                    );
                }
            }
            copied
        }
        Err(failure) => {
            eprintln!(
                "s3-put-multipart: warning: the object is stored whole, but its SHA-256 could not be added to its metadata ({failure}); s3-get will verify it by ETag"
            );
            stored.clone()
        }
    }
}

/// Characters of a key escaped in `x-amz-copy-source` (everything but unreserved and `/`).
const KEY_ENCODE: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'/')
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

async fn copy_in_one(
    client: &Client,
    settings: &ObjectSettings,
    source: &str,
    stored: &Stored,
    metadata: HashMap<String, String>,
) -> Result<Stored, Failure> {
    let output = client
        .copy_object()
        .bucket(&settings.url.bucket)
        .key(&settings.url.key)
        .copy_source(source)
        .copy_source_if_match(&stored.etag)
        .metadata_directive(MetadataDirective::Replace)
        .tagging_directive(TaggingDirective::Copy)
        .set_metadata(Some(metadata))
        .content_type(&settings.content_type)
        .set_storage_class(settings.storage_class.clone())
        .set_server_side_encryption(settings.sse.clone())
        .set_ssekms_key_id(settings.sse_kms_key_id.clone())
        .set_acl(settings.acl.clone())
        .send()
        .await
        .map_err(|err| Failure::from_sdk("copy", &err))?;
    Ok(Stored {
        etag: output
            .copy_object_result
            .and_then(|r| r.e_tag)
            .unwrap_or_else(|| stored.etag.clone()),
        version_id: output.version_id,
        sha256_in_metadata: true,
    })
}

#[allow(clippy::too_many_arguments)]
async fn copy_in_parts(
    client: &Client,
    settings: &ObjectSettings,
    source: &str,
    stored: &Stored,
    metadata: HashMap<String, String>,
    size: u64,
    part_size: u64,
    concurrency: usize,
) -> Result<Stored, Failure> {
    let mut plain = settings.clone();
    plain.checksum = None;
    let created = create_request(client, &plain, metadata)
        .send()
        .await
        .map_err(|err| Failure::from_sdk("copy", &err))?;
    let upload_id = created.upload_id.unwrap_or_default();
    let copy = Multipart {
        client: client.clone(),
        settings: Arc::new(plain),
        upload_id,
        pool: Default::default(),
    };
    let slots = Arc::new(Semaphore::new(concurrency));
    let mut tasks = tokio::task::JoinSet::new();
    for (index, start) in (0..size).step_by(part_size as usize).enumerate() {
        let end = (start + part_size).min(size) - 1;
        let request = client
            .upload_part_copy()
            .bucket(&settings.url.bucket)
            .key(&settings.url.key)
            .upload_id(&copy.upload_id)
            .part_number(index as i32 + 1)
            .copy_source(source)
            .copy_source_if_match(&stored.etag)
            .copy_source_range(format!("bytes={start}-{end}"));
        let slots = slots.clone();
        tasks.spawn(async move {
            let _slot = slots.acquire_owned().await;
            let output = request
                .send()
                .await
                .map_err(|err| Failure::from_sdk("copy part", &err))?;
            Ok::<_, Failure>(
                CompletedPart::builder()
                    .part_number(index as i32 + 1)
                    .set_e_tag(output.copy_part_result.and_then(|r| r.e_tag))
                    .build(),
            )
        });
    }
    let mut parts = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        match joined
            .map_err(|err| Failure::new(ExitCode::Failure, err.to_string()))
            .and_then(|r| r)
        {
            Ok(part) => parts.push(part),
            Err(failure) => {
                tasks.abort_all();
                copy.abort().await;
                return Err(failure);
            }
        }
    }
    let no_checksum = StreamEnd {
        bytes: size,
        parts: parts.len() as u64,
        sha256: [0; 32],
        crc32c: None,
    };
    match copy.complete(parts, &no_checksum).await {
        Ok(mut done) => {
            done.sha256_in_metadata = true;
            Ok(done)
        }
        Err(failure) => {
            copy.abort().await;
            Err(failure)
        }
    }
}

/// The refusal `--if-none-match` ends with, whichever check found the object.
fn exists_failure(url: &S3Url) -> Failure {
    Failure::new(
        ExitCode::Exists,
        format!(
            "{url} already exists and --if-none-match forbids overwriting it; nothing was changed"
        ),
    )
}

/// For `--if-none-match`: whether the key already holds an object.
///
/// The conditional header is what makes the refusal atomic on AWS and MinIO; some servers
/// (Garage 2.5) accept the header and ignore it, so the tool also looks before it starts and
/// again before it completes. On such servers a writer racing between that look and the
/// completion can still be overwritten; on AWS and MinIO it cannot.
pub async fn refuse_if_exists(client: &Client, url: &S3Url) -> Result<(), Failure> {
    match client
        .head_object()
        .bucket(&url.bucket)
        .key(&url.key)
        .send()
        .await
    {
        Ok(_) => Err(exists_failure(url)),
        Err(err) => {
            let failure = Failure::from_sdk(format!("cannot check whether {url} exists"), &err);
            match failure.exit {
                ExitCode::NotFound => Ok(()),
                _ => Err(failure),
            }
        }
    }
}
