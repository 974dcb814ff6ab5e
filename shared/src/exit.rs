//! Exit codes, the same in every tool, and the error type that carries one.
//!
//! Scripts branch on these, so they are part of the interface: they are listed in the README and in
//! every man page (see [`ExitCode::TABLE`]), and never renumbered.

use std::fmt;

use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};

/// A documented process exit status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitCode {
    /// Everything asked for was done.
    Success,
    /// An error that fits no other class.
    Failure,
    /// Bad command line: unknown flag, bad `s3://` URL, bad size, value out of range.
    Usage,
    /// The bucket or object does not exist.
    NotFound,
    /// Access denied, or missing or wrong credentials.
    Access,
    /// Data read back does not match its checksum, or is not the size it should be.
    Verify,
    /// The input failed: a read error, a stream shorter or longer than `--size`, too many parts.
    Input,
    /// A precondition failed: the object exists and `--if-none-match` forbade overwriting it.
    Exists,
    /// The S3 service could not be reached, or kept failing after every retry.
    Network,
    /// Interrupted by SIGINT (128 + 2).
    Interrupted,
    /// Terminated by SIGTERM (128 + 15).
    Terminated,
}

impl ExitCode {
    /// Every code with its meaning, in order: the source of the README table and the man pages.
    pub const TABLE: &'static [(ExitCode, &'static str)] = &[
        (ExitCode::Success, "success"),
        (ExitCode::Failure, "an error that fits no other class"),
        (
            ExitCode::Usage,
            "bad command line: unknown flag, bad s3:// URL, bad size or value",
        ),
        (ExitCode::NotFound, "the bucket or object does not exist"),
        (
            ExitCode::Access,
            "access denied, or missing or wrong credentials",
        ),
        (
            ExitCode::Verify,
            "data does not match its checksum or expected size",
        ),
        (
            ExitCode::Input,
            "the input failed: read error, --size mismatch, more than 10,000 parts",
        ),
        (
            ExitCode::Exists,
            "the object exists and --if-none-match forbade overwriting it",
        ),
        (
            ExitCode::Network,
            "S3 unreachable, timed out, or failing after every retry",
        ),
        (ExitCode::Interrupted, "interrupted by SIGINT"),
        (ExitCode::Terminated, "terminated by SIGTERM"),
    ];

    /// The numeric status the process exits with.
    pub fn code(self) -> i32 {
        match self {
            ExitCode::Success => 0,
            ExitCode::Failure => 1,
            ExitCode::Usage => 2,
            ExitCode::NotFound => 3,
            ExitCode::Access => 4,
            ExitCode::Verify => 5,
            ExitCode::Input => 6,
            ExitCode::Exists => 7,
            ExitCode::Network => 8,
            ExitCode::Interrupted => 130,
            ExitCode::Terminated => 143,
        }
    }
}

/// An error that ends a tool: the one line printed on stderr and the exit status.
///
/// Tools build these at the point where they know what went wrong and what the user can do about
/// it, so the message can name the flag to use or the object concerned.
#[derive(Debug)]
pub struct Failure {
    pub exit: ExitCode,
    /// Overrides `exit` when a tool passes on another process's status (a producer that failed).
    pub status: Option<i32>,
    pub message: String,
}

impl Failure {
    pub fn new(exit: ExitCode, message: impl Into<String>) -> Self {
        Failure {
            exit,
            status: None,
            message: message.into(),
        }
    }

    /// A failure that exits with a raw status, such as a child process's.
    pub fn with_status(status: i32, message: impl Into<String>) -> Self {
        Failure {
            exit: ExitCode::Failure,
            status: Some(status),
            message: message.into(),
        }
    }

    pub fn usage(message: impl Into<String>) -> Self {
        Self::new(ExitCode::Usage, message)
    }

    pub fn input(message: impl Into<String>) -> Self {
        Self::new(ExitCode::Input, message)
    }

    pub fn verify(message: impl Into<String>) -> Self {
        Self::new(ExitCode::Verify, message)
    }

    /// Classifies an S3 SDK error and words it for a person: `context` says what was being done.
    pub fn from_sdk<E, R>(context: impl fmt::Display, err: &SdkError<E, R>) -> Self
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
        R: fmt::Debug + HttpStatus + 'static,
    {
        let (exit, detail) = classify_sdk_error(err);
        Failure::new(exit, format!("{context}: {detail}"))
    }

    /// The status the process should exit with.
    pub fn status(&self) -> i32 {
        self.status.unwrap_or_else(|| self.exit.code())
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Failure {}

impl From<std::io::Error> for Failure {
    fn from(err: std::io::Error) -> Self {
        Failure::new(ExitCode::Failure, err.to_string())
    }
}

/// The HTTP status of a raw SDK response, where there is one (so a HEAD 404, which carries no
/// error code in its empty body, is still recognised as "not found").
pub trait HttpStatus {
    fn http_status(&self) -> u16;
}

impl HttpStatus for aws_smithy_runtime_api::http::Response {
    fn http_status(&self) -> u16 {
        self.status().as_u16()
    }
}

/// Maps an SDK error to an exit code and a one-line description without secrets.
pub fn classify_sdk_error<E, R>(err: &SdkError<E, R>) -> (ExitCode, String)
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: fmt::Debug + HttpStatus + 'static,
{
    match err {
        SdkError::ServiceError(service) => {
            let inner = service.err();
            let status = service.raw().http_status();
            let code = inner.code().unwrap_or("");
            let message = inner.message().unwrap_or("");
            let exit = match (code, status) {
                (
                    "NoSuchBucket" | "NoSuchKey" | "NoSuchUpload" | "NotFound" | "NoSuchVersion",
                    _,
                ) => ExitCode::NotFound,
                (
                    "AccessDenied"
                    | "InvalidAccessKeyId"
                    | "SignatureDoesNotMatch"
                    | "InvalidToken"
                    | "ExpiredToken"
                    | "AllAccessDisabled"
                    | "Forbidden",
                    _,
                ) => ExitCode::Access,
                ("PreconditionFailed" | "ConditionalRequestConflict", _) => ExitCode::Exists,
                ("SlowDown" | "InternalError" | "ServiceUnavailable" | "RequestTimeout", _) => {
                    ExitCode::Network
                }
                (_, 404) => ExitCode::NotFound,
                (_, 401 | 403) => ExitCode::Access,
                (_, 412) => ExitCode::Exists,
                (_, 500..=599) => ExitCode::Network,
                _ => ExitCode::Failure,
            };
            let what = match (code, message) {
                ("", "") => match status {
                    404 => "not found (HTTP 404)".to_string(),
                    403 => "access denied (HTTP 403)".to_string(),
                    412 => "precondition failed (HTTP 412)".to_string(),
                    s => format!("HTTP {s}"),
                },
                ("NotFound", "") => "no such bucket or object (HTTP 404)".to_string(),
                (code, "") => format!("{code} (HTTP {status})"),
                ("", message) => format!("HTTP {status}: {message}"),
                (code, message) => format!("{code}: {message}"),
            };
            (exit, what)
        }
        SdkError::TimeoutError(_) => (ExitCode::Network, "timed out".to_string()),
        SdkError::DispatchFailure(failure) => {
            let text = error_chain(err);
            if text.contains("no credentials") {
                (
                    ExitCode::Access,
                    "no AWS credentials found: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or use --profile".to_string(),
                )
            } else if failure.is_timeout() {
                (ExitCode::Network, "timed out".to_string())
            } else if failure.is_io() {
                (
                    ExitCode::Network,
                    format!("cannot reach the S3 endpoint: {}", error_chain(err)),
                )
            } else {
                (ExitCode::Network, error_chain(err))
            }
        }
        SdkError::ConstructionFailure(_) => {
            let text = error_chain(err);
            if text.contains("credentials") {
                (
                    ExitCode::Access,
                    format!("no usable AWS credentials: {text}"),
                )
            } else {
                (ExitCode::Failure, text)
            }
        }
        SdkError::ResponseError(_) => (ExitCode::Network, error_chain(err)),
        _ => (ExitCode::Failure, error_chain(err)),
    }
}

/// An error and its sources on one line, the way a person reads them ("a: b: c").
pub fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let part = cause.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = cause.source();
    }
    text.replace('\n', " ")
}
