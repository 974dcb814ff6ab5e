//! SIGINT and SIGTERM turned into one cancellation that every tool honours.
//!
//! A signal must not kill a tool outright: an upload in progress has to be aborted first, or its
//! parts stay stored (and billed) and a half-written object could become visible. So the first
//! signal cancels a token that the tool's work watches; the tool cleans up and exits with
//! 128 + the signal number. A second signal exits at once, for a person who really means it.

use std::sync::Arc;
use std::sync::atomic::{AtomicI32, Ordering};

use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

use crate::exit::{ExitCode, Failure};

/// The cancellation shared by a tool's tasks, and which signal caused it.
#[derive(Debug, Clone, Default)]
pub struct Cancellation {
    token: CancellationToken,
    signal: Arc<AtomicI32>,
}

impl Cancellation {
    /// Starts listening for SIGINT and SIGTERM. Must be called inside a tokio runtime.
    pub fn install() -> std::io::Result<Self> {
        let cancellation = Cancellation::default();
        let mut interrupt = signal(SignalKind::interrupt())?;
        let mut terminate = signal(SignalKind::terminate())?;
        let this = cancellation.clone();
        tokio::spawn(async move {
            loop {
                let number = tokio::select! {
                    _ = interrupt.recv() => 2,
                    _ = terminate.recv() => 15,
                };
                if this.signal.swap(number, Ordering::SeqCst) != 0 {
                    eprintln!("second signal: exiting without cleaning up");
                    std::process::exit(128 + number);
                }
                tracing::warn!("received signal {number}: cleaning up");
                this.token.cancel();
            }
        });
        Ok(cancellation)
    }

    /// The token to watch (`token.cancelled().await`).
    pub fn token(&self) -> &CancellationToken {
        &self.token
    }

    pub fn is_cancelled(&self) -> bool {
        self.token.is_cancelled()
    }

    /// Cancels the work without a signal (a failure in one task stopping the others).
    pub fn cancel(&self) {
        self.token.cancel();
    }

    /// The signal that cancelled the work, if a signal did.
    pub fn signal(&self) -> Option<i32> {
        match self.signal.load(Ordering::SeqCst) {
            0 => None,
            n => Some(n),
        }
    }

    /// The failure to exit with after cleaning up from a signal.
    pub fn failure(&self, what: &str) -> Failure {
        match self.signal() {
            Some(15) => Failure::new(
                ExitCode::Terminated,
                format!("terminated by SIGTERM; {what}"),
            ),
            Some(n) if n != 2 => {
                Failure::with_status(128 + n, format!("stopped by signal {n}; {what}"))
            }
            _ => Failure::new(
                ExitCode::Interrupted,
                format!("interrupted by SIGINT; {what}"),
            ),
        }
    }
}
