//! Logging to stderr, with `-v`/`-q` and `RUST_LOG`.
//!
//! stdout belongs to the pipe (data or events), so every log line goes to stderr. The default shows
//! warnings only, because a tool in the middle of a cron pipeline should be silent when all is well.

use clap::Args;
use tracing_subscriber::EnvFilter;

/// `-v`/`-q`, flattened into every tool's command line.
#[derive(Debug, Clone, Default, Args)]
#[command(next_help_heading = "Logging")]
pub struct Verbosity {
    /// More log output on stderr: -v info, -vv debug, -vvv trace (RUST_LOG, when set, wins)
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    /// Less output: -q shows errors only and no progress bar, -qq nothing but the final error line
    #[arg(short, long, action = clap::ArgAction::Count, global = true, conflicts_with = "verbose")]
    pub quiet: u8,
}

impl Verbosity {
    /// The level for this crate's and the tools' own log lines.
    pub fn level(&self) -> &'static str {
        match (self.quiet, self.verbose) {
            (q, _) if q >= 2 => "off",
            (1, _) => "error",
            (_, 0) => "warn",
            (_, 1) => "info",
            (_, 2) => "debug",
            _ => "trace",
        }
    }
}

/// Installs the stderr logger. `RUST_LOG`, when set, replaces the level given by `-v`/`-q`.
///
/// `-v` is about what the tool does: the tool's crate (its name with `_` for `-`) and this one log
/// at the chosen level, while every other crate (the AWS SDK warning about each credential source
/// it tries, hyper, rustls) stays at `error` until `-vv`, because the tool's own error line
/// already says what failed.
pub fn init(tool: &str, verbosity: &Verbosity) {
    let filter = match std::env::var("RUST_LOG") {
        Ok(spec) if !spec.trim().is_empty() => EnvFilter::new(spec),
        _ => {
            let level = verbosity.level();
            let others = match (verbosity.verbose, level) {
                (_, "off") => "off",
                (v, _) if v >= 2 => level,
                _ => "error",
            };
            let crate_name = tool.replace('-', "_");
            EnvFilter::new(format!("{others},s3pipe={level},{crate_name}={level}"))
        }
    };
    let detailed = verbosity.verbose >= 2;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(detailed)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    // A second init (in tests) is harmless: the first logger stays.
    let _ = if detailed {
        builder.try_init()
    } else {
        builder.without_time().try_init()
    };
}
