//! The S3 side: one task per object, its parts uploaded in parallel, completed when the object is
//! finished, and a JSON event for each stored object.
//!
//! Memory is bounded by two semaphores: `--max-pending-uploads` permits, one held by every part
//! from the moment it is cut until S3 has stored it (the line processor blocks on it, which stops
//! reading stdin: backpressure, never loss), and `--upload-threads` permits, one per request in
//! flight.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_sdk_s3::Client;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{
    CompletedMultipartUpload, CompletedPart, ObjectCannedAcl, ServerSideEncryption, StorageClass,
};
use bytes::Bytes;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use s3pipe::event::{Event, EventSink};
use s3pipe::{ExitCode, Failure};

use crate::TOOL;

/// User metadata naming the spool entry an object came from, so that a restart can tell its own
/// finished object from one another writer stored under the same key.
pub const SPOOL_ID_METADATA: &str = "s3pipe-spool-id";

/// Rounds of our own around the SDK's retries (which already make `--max-attempts` attempts with
/// back-off): a long-running shipper should ride out a minutes-long outage, not exit.
const ROUNDS: u32 = 4;

/// How objects are created, from the command line.
#[derive(Debug, Clone)]
pub struct ObjectSettings {
    pub bucket: String,
    pub content_type: String,
    pub storage_class: Option<StorageClass>,
    pub acl: Option<ObjectCannedAcl>,
    pub sse: Option<ServerSideEncryption>,
    pub kms_key: Option<String>,
}

/// What the processor knows about a finished object, for its event.
#[derive(Debug, Clone)]
pub struct Summary {
    pub size: u64,
    pub compressed_size: u64,
    pub lines: u64,
    pub malformed: u64,
    pub first_time: Option<i64>,
    pub last_time: Option<i64>,
    pub sha256: String,
    pub reason: &'static str,
    pub compression: &'static str,
    /// Bytes of the object's spool file, released when it is removed.
    pub spool_bytes: u64,
}

/// Messages from the processor to an object's task.
#[derive(Debug)]
pub enum ObjectMessage {
    Part {
        number: i32,
        data: Bytes,
        permit: OwnedSemaphorePermit,
    },
    Finish {
        number: i32,
        data: Bytes,
        permit: OwnedSemaphorePermit,
        summary: Summary,
    },
}

/// Shared by every object task.
#[derive(Debug)]
pub struct Context {
    pub client: Client,
    pub settings: ObjectSettings,
    pub threads: Arc<Semaphore>,
    pub pending: Arc<Semaphore>,
    pub events: EventSink,
    pub tracker: TaskTracker,
    /// Cancelled on the first permanent failure.
    pub failed: CancellationToken,
    failure: Mutex<Option<Failure>>,
    /// Multipart uploads in progress (key -> upload id), aborted if the run fails.
    uploads: Mutex<HashMap<String, String>>,
    /// Bytes held in the spool, lowered as finished objects' files are removed.
    pub spool_bytes: Arc<AtomicU64>,
    pub objects_stored: AtomicU64,
}

impl Context {
    pub fn new(
        client: Client,
        settings: ObjectSettings,
        upload_threads: usize,
        max_pending: usize,
        events: EventSink,
    ) -> Self {
        Context {
            client,
            settings,
            threads: Arc::new(Semaphore::new(upload_threads)),
            pending: Arc::new(Semaphore::new(max_pending)),
            events,
            tracker: TaskTracker::new(),
            failed: CancellationToken::new(),
            failure: Mutex::new(None),
            uploads: Mutex::new(HashMap::new()),
            spool_bytes: Arc::new(AtomicU64::new(0)),
            objects_stored: AtomicU64::new(0),
        }
    }

    /// Records the first permanent failure and stops everything: the processor stops reading.
    pub fn fail(&self, failure: Failure) {
        let mut slot = self.failure.lock().unwrap_or_else(|p| p.into_inner());
        if slot.is_none() {
            tracing::error!("{failure}");
            *slot = Some(failure);
        }
        self.failed.cancel();
        self.pending.close();
    }

    pub fn take_failure(&self) -> Option<Failure> {
        self.failure
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
    }

    /// Aborts every multipart upload still open (after a failure), so no parts stay stored.
    pub async fn abort_open_uploads(&self) {
        let open: Vec<(String, String)> = self
            .uploads
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain()
            .collect();
        for (key, upload_id) in open {
            abort(&self.client, &self.settings.bucket, &key, &upload_id).await;
        }
    }

    fn register(&self, key: &str, upload_id: &str) {
        self.uploads
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key.to_string(), upload_id.to_string());
    }

    fn unregister(&self, key: &str) {
        self.uploads
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(key);
    }
}

/// Runs `attempt` until it succeeds, fails for good (anything but a network-class error), or has
/// had [`ROUNDS`] rounds of the SDK's own retries.
pub async fn retry<T, F, Fut>(what: &str, mut attempt: F) -> Result<T, Failure>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, Failure>>,
{
    let mut round = 0;
    loop {
        round += 1;
        match attempt().await {
            Ok(value) => return Ok(value),
            Err(failure) if failure.exit == ExitCode::Network && round < ROUNDS => {
                tracing::warn!("{what}: {failure}; retrying (round {round} of {ROUNDS})");
                tokio::time::sleep(Duration::from_secs(2u64.pow(round))).await;
            }
            Err(failure) => return Err(failure),
        }
    }
}

async fn abort(client: &Client, bucket: &str, key: &str, upload_id: &str) {
    let result = client
        .abort_multipart_upload()
        .bucket(bucket)
        .key(key)
        .upload_id(upload_id)
        .send()
        .await;
    match result {
        Ok(_) => tracing::info!(key, upload_id, "multipart upload aborted"),
        Err(err) => {
            let failure = Failure::from_sdk("cannot abort the upload", &err);
            if failure.exit != ExitCode::NotFound {
                eprintln!(
                    "{TOOL}: warning: {failure}; its parts stay stored until a lifecycle rule or `aws s3api abort-multipart-upload --bucket {bucket} --key {key} --upload-id {upload_id}` removes them"
                );
            }
        }
    }
}

/// Aborts every multipart upload in progress on exactly `key` (used on recovery: a key reserved
/// in the spool belongs to this spool, so any upload on it is a leftover of ours).
pub async fn abort_uploads_on(client: &Client, bucket: &str, key: &str) -> Result<(), Failure> {
    let listed = retry("list uploads", || async {
        client
            .list_multipart_uploads()
            .bucket(bucket)
            .prefix(key)
            .send()
            .await
            .map_err(|err| Failure::from_sdk(format!("cannot list uploads under {key}"), &err))
    })
    .await?;
    for upload in listed.uploads() {
        if upload.key() == Some(key)
            && let Some(id) = upload.upload_id()
        {
            abort(client, bucket, key, id).await;
        }
    }
    Ok(())
}

/// The spool id an existing object was stored from, `Some(None)` for an object without one, and
/// `None` when there is no object at `key`.
pub async fn stored_spool_id(
    client: &Client,
    bucket: &str,
    key: &str,
) -> Result<Option<Option<String>>, Failure> {
    let result = retry("look up an object", || async {
        match client.head_object().bucket(bucket).key(key).send().await {
            Ok(head) => Ok(Some(
                head.metadata()
                    .and_then(|m| m.get(SPOOL_ID_METADATA).cloned()),
            )),
            Err(err) => {
                let failure =
                    Failure::from_sdk(format!("cannot look up s3://{bucket}/{key}"), &err);
                if failure.exit == ExitCode::NotFound {
                    Ok(None)
                } else {
                    Err(failure)
                }
            }
        }
    })
    .await?;
    Ok(result)
}

/// Where an object's spool files are, to remove once it is stored.
#[derive(Debug, Clone)]
pub struct SpoolEntry {
    pub id: String,
    pub paths: Vec<std::path::PathBuf>,
}

/// Starts the task that stores one object; returns the sender the processor feeds it through.
pub fn start_object(
    ctx: &Arc<Context>,
    handle: &tokio::runtime::Handle,
    key: String,
    spool: Option<SpoolEntry>,
) -> mpsc::UnboundedSender<ObjectMessage> {
    let (tx, rx) = mpsc::unbounded_channel();
    let ctx2 = ctx.clone();
    let _guard = handle.enter();
    ctx.tracker.spawn(async move {
        if let Err(failure) = object_task(&ctx2, &key, spool, rx).await {
            ctx2.fail(failure);
        }
    });
    tx
}

async fn object_task(
    ctx: &Arc<Context>,
    key: &str,
    spool: Option<SpoolEntry>,
    mut rx: mpsc::UnboundedReceiver<ObjectMessage>,
) -> Result<(), Failure> {
    let bucket = ctx.settings.bucket.clone();
    let metadata: Option<HashMap<String, String>> = spool
        .as_ref()
        .map(|entry| HashMap::from([(SPOOL_ID_METADATA.to_string(), entry.id.clone())]));
    let mut upload_id: Option<String> = None;
    let mut parts: JoinSet<Result<CompletedPart, Failure>> = JoinSet::new();
    let mut done: Vec<CompletedPart> = Vec::new();
    loop {
        let message = tokio::select! {
            message = rx.recv() => message,
            _ = ctx.failed.cancelled() => None,
        };
        let Some(message) = message else {
            // The processor stopped without finishing this object: a failure elsewhere.
            parts.abort_all();
            if let Some(id) = upload_id {
                abort(&ctx.client, &bucket, key, &id).await;
                ctx.unregister(key);
            }
            return Ok(());
        };
        match message {
            ObjectMessage::Part {
                number,
                data,
                permit,
            } => {
                let id = match &upload_id {
                    Some(id) => id.clone(),
                    None => {
                        let id = create(ctx, key, metadata.clone()).await?;
                        ctx.register(key, &id);
                        upload_id = Some(id.clone());
                        id
                    }
                };
                let ctx = ctx.clone();
                let key = key.to_string();
                parts.spawn(async move {
                    let part = upload_part(&ctx, &key, &id, number, data).await;
                    drop(permit);
                    part
                });
                // Surface a failed part early rather than at the end of the object.
                while let Some(part) = parts.try_join_next() {
                    match joined(part) {
                        Ok(part) => done.push(part),
                        Err(failure) => {
                            parts.abort_all();
                            return Err(failure);
                        }
                    }
                }
            }
            ObjectMessage::Finish {
                number,
                data,
                permit,
                summary,
            } => {
                let stored_parts;
                let etag = match &upload_id {
                    None => {
                        stored_parts = 1;
                        put(ctx, key, data, metadata.clone()).await?
                    }
                    Some(id) => {
                        let expected = if data.is_empty() { number - 1 } else { number };
                        if !data.is_empty() {
                            let ctx2 = ctx.clone();
                            let (key2, id2) = (key.to_string(), id.clone());
                            parts.spawn(async move {
                                upload_part(&ctx2, &key2, &id2, number, data).await
                            });
                        }
                        while let Some(part) = parts.join_next().await {
                            match joined(part) {
                                Ok(part) => done.push(part),
                                Err(failure) => {
                                    parts.abort_all();
                                    return Err(failure);
                                }
                            }
                        }
                        let mut done = std::mem::take(&mut done);
                        done.sort_by_key(|p| p.part_number);
                        stored_parts = done.len();
                        if stored_parts != expected as usize {
                            return Err(Failure::new(
                                ExitCode::Failure,
                                format!(
                                    "internal error: {stored_parts} of {expected} parts of s3://{bucket}/{key} accounted for; not completing it"
                                ),
                            ));
                        }
                        let etag = complete(ctx, key, id, done).await?;
                        ctx.unregister(key);
                        etag
                    }
                };
                drop(permit);
                if let Some(entry) = &spool {
                    for path in &entry.paths {
                        let _ = std::fs::remove_file(path);
                    }
                    let _ =
                        ctx.spool_bytes
                            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |held| {
                                Some(held.saturating_sub(summary.spool_bytes))
                            });
                }
                ctx.objects_stored.fetch_add(1, Ordering::SeqCst);
                emit(ctx, key, &summary, &etag, stored_parts);
                return Ok(());
            }
        }
    }
}

fn joined(
    result: Result<Result<CompletedPart, Failure>, tokio::task::JoinError>,
) -> Result<CompletedPart, Failure> {
    result
        .map_err(|err| Failure::new(ExitCode::Failure, format!("part upload task: {err}")))
        .and_then(|r| r)
}

fn time_text(micros: Option<i64>) -> serde_json::Value {
    micros
        .and_then(chrono::DateTime::<chrono::Utc>::from_timestamp_micros)
        .map(|t| serde_json::Value::from(t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)))
        .unwrap_or(serde_json::Value::Null)
}

fn emit(ctx: &Context, key: &str, summary: &Summary, etag: &str, parts: usize) {
    let event = Event::new(TOOL, "object_stored")
        .with("url", format!("s3://{}/{key}", ctx.settings.bucket))
        .with("bucket", ctx.settings.bucket.clone())
        .with("key", key)
        .with("size", summary.size)
        .with("compressed_size", summary.compressed_size)
        .with("compression", summary.compression)
        .with("lines", summary.lines)
        .with("malformed_lines", summary.malformed)
        .with("first_message_time", time_text(summary.first_time))
        .with("last_message_time", time_text(summary.last_time))
        .with("sha256", summary.sha256.clone())
        .with("etag", etag.trim_matches('"'))
        .with("parts", parts)
        .with("reason", summary.reason);
    if let Err(err) = ctx.events.emit(&event) {
        tracing::warn!("cannot write the event: {err}");
    }
}

async fn create(
    ctx: &Context,
    key: &str,
    metadata: Option<HashMap<String, String>>,
) -> Result<String, Failure> {
    let s = &ctx.settings;
    retry("start an upload", || async {
        let _slot = ctx.threads.acquire().await;
        let output = ctx
            .client
            .create_multipart_upload()
            .bucket(&s.bucket)
            .key(key)
            .content_type(&s.content_type)
            .set_metadata(metadata.clone())
            .set_storage_class(s.storage_class.clone())
            .set_acl(s.acl.clone())
            .set_server_side_encryption(s.sse.clone())
            .set_ssekms_key_id(s.kms_key.clone())
            .send()
            .await
            .map_err(|err| {
                Failure::from_sdk(
                    format!("cannot start an upload to s3://{}/{key}", s.bucket),
                    &err,
                )
            })?;
        output.upload_id.ok_or_else(|| {
            Failure::new(
                ExitCode::Failure,
                "the server started an upload without an upload id",
            )
        })
    })
    .await
}

async fn upload_part(
    ctx: &Context,
    key: &str,
    upload_id: &str,
    number: i32,
    data: Bytes,
) -> Result<CompletedPart, Failure> {
    let s = &ctx.settings;
    retry("store a part", || async {
        let _slot = ctx.threads.acquire().await;
        let output = ctx
            .client
            .upload_part()
            .bucket(&s.bucket)
            .key(key)
            .upload_id(upload_id)
            .part_number(number)
            .content_length(data.len() as i64)
            .body(ByteStream::from(data.clone()))
            .customize()
            .disable_payload_signing()
            .send()
            .await
            .map_err(|err| {
                Failure::from_sdk(
                    format!("cannot store part {number} of s3://{}/{key}", s.bucket),
                    &err,
                )
            })?;
        tracing::debug!(key, part = number, bytes = data.len(), "part stored");
        Ok(CompletedPart::builder()
            .part_number(number)
            .set_e_tag(output.e_tag)
            .build())
    })
    .await
}

async fn complete(
    ctx: &Context,
    key: &str,
    upload_id: &str,
    parts: Vec<CompletedPart>,
) -> Result<String, Failure> {
    let s = &ctx.settings;
    retry("complete an upload", || {
        let parts = parts.clone();
        async move {
            let _slot = ctx.threads.acquire().await;
            let result = ctx
                .client
                .complete_multipart_upload()
                .bucket(&s.bucket)
                .key(key)
                .upload_id(upload_id)
                .multipart_upload(
                    CompletedMultipartUpload::builder()
                        .set_parts(Some(parts))
                        .build(),
                )
                .send()
                .await;
            match result {
                Ok(output) => Ok(output.e_tag.unwrap_or_default()),
                Err(err) => {
                    let failure = Failure::from_sdk(
                        format!("cannot complete the upload of s3://{}/{key}", s.bucket),
                        &err,
                    );
                    // A completion whose answer was lost, retried (by us or by the SDK): the
                    // upload is gone because it became the object. The key is reserved for
                    // this object, so an object there is this one.
                    if failure.exit == ExitCode::NotFound
                        && let Ok(head) = ctx
                            .client
                            .head_object()
                            .bucket(&s.bucket)
                            .key(key)
                            .send()
                            .await
                    {
                        return Ok(head.e_tag.unwrap_or_default());
                    }
                    Err(failure)
                }
            }
        }
    })
    .await
}

async fn put(
    ctx: &Context,
    key: &str,
    data: Bytes,
    metadata: Option<HashMap<String, String>>,
) -> Result<String, Failure> {
    let s = &ctx.settings;
    retry("store an object", || async {
        let _slot = ctx.threads.acquire().await;
        let output = ctx
            .client
            .put_object()
            .bucket(&s.bucket)
            .key(key)
            .content_length(data.len() as i64)
            .body(ByteStream::from(data.clone()))
            .content_type(&s.content_type)
            .set_metadata(metadata.clone())
            .set_storage_class(s.storage_class.clone())
            .set_acl(s.acl.clone())
            .set_server_side_encryption(s.sse.clone())
            .set_ssekms_key_id(s.kms_key.clone())
            .customize()
            .disable_payload_signing()
            .send()
            .await
            .map_err(|err| {
                Failure::from_sdk(format!("cannot store s3://{}/{key}", s.bucket), &err)
            })?;
        Ok(output.e_tag.unwrap_or_default())
    })
    .await
}

/// Chooses the index suffix for a new object: one past the highest index found among the objects
/// that exist, the multipart uploads in progress and the keys this process (and its spool) has
/// reserved, so that no key is ever written twice.
#[derive(Debug)]
pub struct KeyChooser {
    client: Client,
    bucket: String,
    reserved: std::collections::HashSet<String>,
}

impl KeyChooser {
    pub fn new(client: Client, bucket: String) -> Self {
        KeyChooser {
            client,
            bucket,
            reserved: Default::default(),
        }
    }

    pub fn reserve(&mut self, key: &str) {
        self.reserved.insert(key.to_string());
    }

    /// `base` + (nothing | `-N`) + `suffix`, never one in use.
    pub async fn choose(&mut self, base: &str, suffix: &str) -> Result<String, Failure> {
        let mut highest: Option<u64> = None;
        let mut note = |key: &str| {
            if let Some(index) = index_of(key, base, suffix) {
                highest = Some(highest.map_or(index, |h| h.max(index)));
            }
        };
        for key in &self.reserved {
            note(key);
        }
        let client = &self.client;
        let bucket = &self.bucket;
        let mut token: Option<String> = None;
        loop {
            let page = retry("list objects", || async {
                client
                    .list_objects_v2()
                    .bucket(bucket)
                    .prefix(base)
                    .set_continuation_token(token.clone())
                    .send()
                    .await
                    .map_err(|err| {
                        Failure::from_sdk(format!("cannot list s3://{bucket}/{base}*"), &err)
                    })
            })
            .await?;
            for object in page.contents() {
                if let Some(key) = object.key() {
                    note(key);
                }
            }
            match page.next_continuation_token() {
                Some(next) if page.is_truncated() == Some(true) => token = Some(next.to_string()),
                _ => break,
            }
        }
        let (mut key_marker, mut id_marker): (Option<String>, Option<String>) = (None, None);
        loop {
            let page = retry("list uploads", || async {
                client
                    .list_multipart_uploads()
                    .bucket(bucket)
                    .prefix(base)
                    .set_key_marker(key_marker.clone())
                    .set_upload_id_marker(id_marker.clone())
                    .send()
                    .await
                    .map_err(|err| {
                        Failure::from_sdk(
                            format!("cannot list uploads under s3://{bucket}/{base}"),
                            &err,
                        )
                    })
            })
            .await?;
            for upload in page.uploads() {
                if let Some(key) = upload.key() {
                    note(key);
                }
            }
            if page.is_truncated() == Some(true) && page.next_key_marker().is_some() {
                key_marker = page.next_key_marker().map(str::to_string);
                id_marker = page.next_upload_id_marker().map(str::to_string);
            } else {
                break;
            }
        }
        let key = match highest {
            None => format!("{base}{suffix}"),
            Some(index) => format!("{base}-{}{suffix}", index + 1),
        };
        self.reserved.insert(key.clone());
        Ok(key)
    }
}

/// The index of `key` as an object of `base`: 0 for `base+suffix`, N for `base-N+suffix`.
pub fn index_of(key: &str, base: &str, suffix: &str) -> Option<u64> {
    let rest = key.strip_prefix(base)?.strip_suffix(suffix)?;
    if rest.is_empty() {
        return Some(0);
    }
    let digits = rest.strip_prefix('-')?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) || digits.starts_with('0') {
        return None;
    }
    digits.parse().ok()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::index_of;

    #[test]
    fn indexes_are_recognised_exactly() {
        assert_eq!(index_of("a/b.log.gz", "a/b", ".log.gz"), Some(0));
        assert_eq!(index_of("a/b-7.log.gz", "a/b", ".log.gz"), Some(7));
        assert_eq!(index_of("a/b-x.log.gz", "a/b", ".log.gz"), None);
        assert_eq!(index_of("a/b-07.log.gz", "a/b", ".log.gz"), None);
        assert_eq!(index_of("a/bc.log.gz", "a/b", ".log.gz"), None);
        assert_eq!(index_of("a/b-2.log", "a/b", ".log.gz"), None);
    }
}
