//! `--spool-dir`: what makes a crash lose nothing and duplicate nothing.
//!
//! Every object being built has two files in the spool: `ID.meta` (JSON: its S3 key, written
//! atomically before any request for that key is made) and `ID.data` (the rendered lines, appended
//! before any part holding them is handed to S3, and before the object counts as finished). Once
//! the object is stored both files are removed.
//!
//! So after `kill -9` the spool holds exactly the objects that were not yet stored, each with every
//! line it had taken. A restart stores each of them again from its file, under the key it had
//! reserved: if an object is already at that key carrying this entry's id (the crash came between
//! completion and removal) the entry is just removed; any multipart upload left on the key is
//! aborted; otherwise the object is built again from the file and stored. Every line reaches S3
//! exactly once and no upload is left behind.
//!
//! Why rendered lines rather than a raw input journal: an object's content is fixed once its lines
//! are rendered, while re-rendering raw lines later would change every receive-time macro and could
//! route lines to other keys. The price is that a line read but not yet written to the spool
//! (at most one input buffer, 256 KiB) is lost on `kill -9`; it had already left the pipe.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

use s3pipe::{ExitCode, Failure};

/// What `ID.meta` holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Meta {
    pub id: String,
    pub key: String,
    /// Rendered object key and timestamp, and the suffix: to choose a new index if the reserved
    /// key was taken by another writer meanwhile.
    pub base: String,
    pub suffix: String,
    pub compression: String,
    pub level: i32,
}

/// The open spool directory (locked against a second instance).
#[derive(Debug)]
pub struct Spool {
    pub dir: PathBuf,
    _lock: File,
    counter: AtomicU64,
    pub max_bytes: u64,
}

/// The files of one object being built.
#[derive(Debug)]
pub struct SpoolFile {
    pub id: String,
    pub meta_path: PathBuf,
    pub data_path: PathBuf,
    data: File,
    pending: Vec<u8>,
    pub bytes: u64,
    dirty_since_sync: bool,
}

fn io_failure(what: String, err: std::io::Error) -> Failure {
    Failure::new(ExitCode::Failure, format!("{what}: {err}"))
}

impl Spool {
    pub fn open(dir: &Path, max_bytes: u64) -> Result<Self, Failure> {
        std::fs::create_dir_all(dir).map_err(|err| {
            io_failure(
                format!("cannot create spool directory {}", dir.display()),
                err,
            )
        })?;
        let lock_path = dir.join("lock");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|err| io_failure(format!("cannot open {}", lock_path.display()), err))?;
        lock.try_lock().map_err(|_| {
            Failure::usage(format!(
                "spool directory {} is in use by another syslog-rotate",
                dir.display()
            ))
        })?;
        Ok(Spool {
            dir: dir.to_path_buf(),
            _lock: lock,
            counter: AtomicU64::new(0),
            max_bytes,
        })
    }

    /// Entries left by an earlier run, oldest first.
    pub fn leftovers(&self) -> Result<Vec<(Meta, PathBuf, PathBuf)>, Failure> {
        let mut found = Vec::new();
        let entries = std::fs::read_dir(&self.dir)
            .map_err(|err| io_failure(format!("cannot read {}", self.dir.display()), err))?;
        for entry in entries.flatten() {
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.ends_with(".meta.tmp") {
                // Written before any upload, never renamed: nothing was sent for it.
                let _ = std::fs::remove_file(&path);
                continue;
            }
            let Some(id) = name.strip_suffix(".meta") else {
                continue;
            };
            let text = std::fs::read(&path)
                .map_err(|err| io_failure(format!("cannot read {}", path.display()), err))?;
            let meta: Meta = serde_json::from_slice(&text).map_err(|err| {
                Failure::new(
                    ExitCode::Failure,
                    format!("spool entry {} is damaged: {err}", path.display()),
                )
            })?;
            let data_path = self.dir.join(format!("{id}.data"));
            found.push((meta, path, data_path));
        }
        found.sort_by(|a, b| a.0.id.cmp(&b.0.id));
        Ok(found)
    }

    /// A new, unique entry id: sortable by creation.
    pub fn new_id(&self) -> String {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_micros())
            .unwrap_or(0);
        format!(
            "{now:020}-{}-{}",
            std::process::id(),
            self.counter.fetch_add(1, Ordering::SeqCst)
        )
    }

    /// Creates the entry for a new object, its key written down before any request is made.
    pub fn create(&self, meta: &Meta) -> Result<SpoolFile, Failure> {
        let meta_path = self.dir.join(format!("{}.meta", meta.id));
        let tmp = self.dir.join(format!("{}.meta.tmp", meta.id));
        let data_path = self.dir.join(format!("{}.data", meta.id));
        let write = || -> std::io::Result<File> {
            let mut file = File::create(&tmp)?;
            file.write_all(&serde_json::to_vec(meta).map_err(std::io::Error::other)?)?;
            file.sync_all()?;
            let data = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&data_path)?;
            std::fs::rename(&tmp, &meta_path)?;
            File::open(&self.dir)?.sync_all()?;
            Ok(data)
        };
        let data = write().map_err(|err| {
            io_failure(
                format!("cannot write spool entry {}", meta_path.display()),
                err,
            )
        })?;
        Ok(SpoolFile {
            id: meta.id.clone(),
            meta_path,
            data_path,
            data,
            pending: Vec::new(),
            bytes: 0,
            dirty_since_sync: false,
        })
    }

    /// Reopens a leftover entry (its data is already complete on disk).
    pub fn reopen(&self, meta: &Meta, meta_path: PathBuf, data_path: PathBuf) -> SpoolFile {
        let bytes = std::fs::metadata(&data_path).map(|m| m.len()).unwrap_or(0);
        let data = File::open(&data_path).unwrap_or_else(|_| {
            File::open("/dev/null").expect("/dev/null exists on every Unix system")
        });
        SpoolFile {
            id: meta.id.clone(),
            meta_path,
            data_path,
            data,
            pending: Vec::new(),
            bytes,
            dirty_since_sync: false,
        }
    }
}

impl SpoolFile {
    /// Queues rendered bytes; they reach the file at the next [`SpoolFile::flush`].
    pub fn push(&mut self, bytes: &[u8]) {
        self.pending.extend_from_slice(bytes);
    }

    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Writes what is queued (whole lines, in one write). Returns the bytes written.
    pub fn flush(&mut self) -> Result<u64, Failure> {
        if self.pending.is_empty() {
            return Ok(0);
        }
        self.data
            .write_all(&self.pending)
            .map_err(|err| io_failure(format!("cannot write {}", self.data_path.display()), err))?;
        let written = self.pending.len() as u64;
        self.bytes += written;
        self.pending.clear();
        self.dirty_since_sync = true;
        Ok(written)
    }

    /// Flushes and makes it durable (fdatasync), for power loss as well as crashes.
    pub fn sync(&mut self) -> Result<u64, Failure> {
        let written = self.flush()?;
        if self.dirty_since_sync {
            self.data.sync_data().map_err(|err| {
                io_failure(format!("cannot sync {}", self.data_path.display()), err)
            })?;
            self.dirty_since_sync = false;
        }
        Ok(written)
    }

    /// The whole data file (for recovery).
    pub fn read_all(&self) -> Result<Vec<u8>, Failure> {
        let mut data = Vec::new();
        File::open(&self.data_path)
            .and_then(|mut f| f.read_to_end(&mut data))
            .map_err(|err| io_failure(format!("cannot read {}", self.data_path.display()), err))?;
        Ok(data)
    }

    pub fn paths(&self) -> Vec<PathBuf> {
        vec![self.data_path.clone(), self.meta_path.clone()]
    }
}
