//! The changer's state file, like chg-multi's: the current slot and what each slot holds.
//!
//! It is a cache, never the truth: S3 is. Every command that changes something holds an
//! exclusive `flock` on `STATE.lock` from start to end, so two runs (two `write`s in one night,
//! a `label` during a `load`) take turns instead of both appending file 3. The file itself is
//! replaced atomically (temporary file, fsync, rename), so a crash leaves the old state or the
//! new one, never half of each. A missing or unreadable state is rebuilt from S3.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

use s3pipe::{ExitCode, Failure};

/// One dump file on a tape.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileRecord {
    pub file: u32,
    pub host: String,
    pub disk: String,
    pub level: u32,
    pub datestamp: String,
    pub size: u64,
    pub blocks: u64,
    /// SHA-256 of the dump bytes, from our manifest; `None` for a file Amanda wrote.
    pub sha256: Option<String>,
}

/// What is known of one slot.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotState {
    pub device: String,
    pub label: Option<String>,
    /// The tape-start datestamp: `X` while labelled but never written.
    pub datestamp: Option<String>,
    pub files: Vec<FileRecord>,
    /// The next write starts the tape over (set when `load next` chose it for reuse).
    #[serde(default)]
    pub reuse_pending: bool,
    /// Why the slot could not be read, when it could not.
    #[serde(default)]
    pub error: Option<String>,
}

impl SlotState {
    pub fn bytes(&self) -> u64 {
        self.files.iter().map(|f| f.size).sum()
    }

    /// Written at least once (a real datestamp, not `X`).
    pub fn written(&self) -> bool {
        self.label.is_some() && self.datestamp.as_deref().is_some_and(|d| d != "X")
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    pub version: u32,
    /// The loaded slot, if any.
    pub current: Option<usize>,
    /// Slot number (as text, for JSON) to what it holds.
    pub slots: BTreeMap<String, SlotState>,
}

impl State {
    pub fn slot(&self, number: usize) -> Option<&SlotState> {
        self.slots.get(&number.to_string())
    }

    pub fn slot_mut(&mut self, number: usize) -> &mut SlotState {
        self.slots.entry(number.to_string()).or_default()
    }
}

/// The exclusive lock on a state file, held until dropped.
#[derive(Debug)]
pub struct StateLock {
    _lock: Flock<File>,
    path: PathBuf,
}

fn lock_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".lock");
    PathBuf::from(name)
}

impl StateLock {
    /// Waits for the lock; says so at `-v` if another run holds it.
    pub fn acquire(path: &Path) -> Result<Self, Failure> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|err| {
                Failure::new(
                    ExitCode::Failure,
                    format!("cannot create {}: {err}", dir.display()),
                )
            })?;
        }
        let lock_file = lock_path(path);
        let open = || {
            File::options()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&lock_file)
                .map_err(|err| {
                    Failure::new(
                        ExitCode::Failure,
                        format!("cannot open lock file {}: {err}", lock_file.display()),
                    )
                })
        };
        let lock = match Flock::lock(open()?, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => lock,
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => {
                tracing::info!(lock = %lock_file.display(), "another tape-changer run holds the state; waiting");
                Flock::lock(open()?, FlockArg::LockExclusive).map_err(|(_, err)| {
                    Failure::new(
                        ExitCode::Failure,
                        format!("cannot lock {}: {err}", lock_file.display()),
                    )
                })?
            }
            Err((_, err)) => {
                return Err(Failure::new(
                    ExitCode::Failure,
                    format!("cannot lock {}: {err}", lock_file.display()),
                ));
            }
        };
        Ok(StateLock {
            _lock: lock,
            path: path.to_path_buf(),
        })
    }

    /// The saved state; `None` when there is none yet or it cannot be read (rebuild it).
    pub fn load(&self) -> Option<State> {
        let text = std::fs::read_to_string(&self.path).ok()?;
        match serde_json::from_str(&text) {
            Ok(state) => Some(state),
            Err(err) => {
                tracing::warn!(path = %self.path.display(), "state file unreadable ({err}); rebuilding it from S3");
                None
            }
        }
    }

    /// Replaces the state file atomically.
    pub fn save(&self, state: &State) -> Result<(), Failure> {
        let fail = |what: &str, err: std::io::Error| {
            Failure::new(
                ExitCode::Failure,
                format!("cannot {what} state file {}: {err}", self.path.display()),
            )
        };
        let mut temp = self.path.as_os_str().to_owned();
        temp.push(format!(".tmp.{}", std::process::id()));
        let temp = PathBuf::from(temp);
        let mut text = serde_json::to_string_pretty(state)
            .map_err(|err| fail("encode", std::io::Error::other(err)))?;
        text.push('\n');
        let mut file = File::create(&temp).map_err(|e| fail("write", e))?;
        file.write_all(text.as_bytes())
            .and_then(|()| file.sync_all())
            .map_err(|e| fail("write", e))?;
        std::fs::rename(&temp, &self.path).map_err(|e| {
            let _ = std::fs::remove_file(&temp);
            fail("replace", e)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_round_trips_atomically() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("sub/set.state");
        let lock = StateLock::acquire(&path).expect("lock");
        assert_eq!(lock.load(), None);
        let mut state = State {
            version: 1,
            current: Some(2),
            ..State::default()
        };
        state.slot_mut(2).label = Some("L-02".to_string());
        lock.save(&state).expect("save");
        assert_eq!(lock.load(), Some(state));
        let leftovers: Vec<_> = std::fs::read_dir(dir.path().join("sub"))
            .expect("dir")
            .filter_map(Result::ok)
            .filter(|e| e.file_name().to_string_lossy().contains(".tmp."))
            .collect();
        assert!(leftovers.is_empty());
    }

    #[test]
    fn the_lock_is_exclusive() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("set.state");
        let held = StateLock::acquire(&path).expect("lock");
        let second = File::options()
            .write(true)
            .open(lock_path(&path))
            .expect("open");
        assert!(Flock::lock(second, FlockArg::LockExclusiveNonblock).is_err());
        drop(held);
        let third = File::options()
            .write(true)
            .open(lock_path(&path))
            .expect("open");
        assert!(Flock::lock(third, FlockArg::LockExclusiveNonblock).is_ok());
    }
}
