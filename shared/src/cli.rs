//! The `main` every tool shares: logging, the runtime, signals, and the one-line error on exit.

use std::future::Future;
use std::io::Write;

use crate::exit::Failure;
use crate::logging::{self, Verbosity};
use crate::signals::Cancellation;

/// Runs a tool's work and exits the process with its documented status.
///
/// On failure exactly one line, `TOOL: MESSAGE`, goes to stderr. The process exits here rather than
/// returning, so that a thread still blocked reading stdin cannot keep it alive.
pub fn run<F, Fut>(tool: &str, verbosity: &Verbosity, work: F) -> !
where
    F: FnOnce(Cancellation) -> Fut,
    Fut: Future<Output = Result<(), Failure>>,
{
    logging::init(tool, verbosity);
    let result = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|err| {
            Failure::new(
                crate::ExitCode::Failure,
                format!("cannot start the async runtime: {err}"),
            )
        })
        .and_then(|runtime| {
            let result = runtime.block_on(async {
                let cancellation = Cancellation::install().map_err(|err| {
                    Failure::new(
                        crate::ExitCode::Failure,
                        format!("cannot watch signals: {err}"),
                    )
                })?;
                work(cancellation).await
            });
            // Dropping the runtime would wait for every blocking task, and one may be stuck in a
            // read of a stdin that never ends (a stalled producer after SIGTERM): do not wait.
            runtime.shutdown_background();
            result
        });
    let _ = std::io::stdout().flush();
    match result {
        Ok(()) => std::process::exit(0),
        Err(failure) => {
            let _ = writeln!(std::io::stderr(), "{tool}: {}", failure.message);
            std::process::exit(failure.status())
        }
    }
}
