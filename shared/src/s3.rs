//! The S3 client, built from flags and the standard AWS environment.
//!
//! One function makes every tool's client, so that AWS, MinIO and Garage work the same in each of
//! them. The choices below each fix a known way that aws-sdk-s3 fails against S3-compatible servers
//! (see `shared/reference/s3-clients.md` in the project notes):
//!
//! - a custom endpoint gets path-style addressing, because virtual-host style breaks on IP addresses
//!   and `localhost`;
//! - a custom endpoint gets request checksums "when required" only: since early 2025 the SDK sends
//!   CRC32 trailers by default, which older MinIO, Garage versions, R2 and Ceph reject;
//! - `AWS_CA_BUNDLE` / `--ca-bundle` is honoured (the Rust SDK ignores it by itself), for MinIO with
//!   a private certificate authority;
//! - connect, read and per-attempt timeouts are always set, since the SDK sets none and a stuck
//!   connection would otherwise hang a cron job forever;
//! - retries use the SDK's standard mode (exponential back-off with full jitter) with more attempts
//!   than its default of 3, because a long pipeline makes thousands of requests.

use std::path::{Path, PathBuf};
use std::time::Duration;

use aws_config::BehaviorVersion;
use aws_config::meta::region::RegionProviderChain;
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_sdk_s3::config::{Region, RequestChecksumCalculation, ResponseChecksumValidation};
use aws_smithy_http_client::tls::{self, TlsContext, TrustStore, rustls_provider::CryptoMode};
use clap::{Args, ValueEnum};

use crate::exit::Failure;
use crate::units::parse_duration;

/// How bucket names go into request URLs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AddressingStyle {
    /// Path style on a custom endpoint, virtual-host style on AWS.
    Auto,
    /// `https://endpoint/bucket/key`.
    Path,
    /// `https://bucket.endpoint/key`.
    Virtual,
}

/// The S3 connection flags every S3 tool takes.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "S3 connection")]
pub struct S3Options {
    /// S3 endpoint of MinIO, Garage, Ceph, R2 and the like [default: $AWS_ENDPOINT_URL_S3, then $AWS_ENDPOINT_URL, then AWS]
    #[arg(long, value_name = "URL")]
    pub endpoint_url: Option<String>,

    /// Region used to sign requests [default: $AWS_REGION, the profile's, then us-east-1]
    #[arg(long, value_name = "REGION")]
    pub region: Option<String>,

    /// Named profile from ~/.aws/config and ~/.aws/credentials [default: $AWS_PROFILE]
    #[arg(long, value_name = "NAME")]
    pub profile: Option<String>,

    /// Bucket addressing: auto is path style on a custom endpoint and virtual-host style on AWS
    #[arg(long, value_enum, default_value_t = AddressingStyle::Auto, value_name = "STYLE")]
    pub addressing_style: AddressingStyle,

    /// PEM file of extra certificate authorities to trust, for a private CA [default: $AWS_CA_BUNDLE]
    #[arg(long, value_name = "FILE")]
    pub ca_bundle: Option<PathBuf>,

    /// Give up connecting to the endpoint after this long
    #[arg(long, value_parser = parse_duration, default_value = "10s", value_name = "DURATION")]
    pub connect_timeout: Duration,

    /// Give up on a response that sends nothing for this long
    #[arg(long, value_parser = parse_duration, default_value = "60s", value_name = "DURATION")]
    pub read_timeout: Duration,

    /// Give up on one attempt of one request (a part upload, a ranged GET) after this long
    #[arg(long, value_parser = parse_duration, default_value = "5m", value_name = "DURATION")]
    pub attempt_timeout: Duration,

    /// Attempts per request, first try included, with jittered exponential back-off between them
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=100), value_name = "N")]
    pub max_attempts: u32,
}

impl S3Options {
    /// The endpoint in effect: the flag, then `AWS_ENDPOINT_URL_S3`, then `AWS_ENDPOINT_URL`.
    /// `None` means AWS itself. A trailing slash is dropped (some servers answer a bare 400).
    pub fn endpoint(&self) -> Option<String> {
        let ignore_env =
            std::env::var("AWS_IGNORE_CONFIGURED_ENDPOINT_URLS").is_ok_and(|v| v == "true");
        let from_env = |name: &str| {
            if ignore_env {
                None
            } else {
                std::env::var(name).ok()
            }
        };
        self.endpoint_url
            .clone()
            .or_else(|| from_env("AWS_ENDPOINT_URL_S3"))
            .or_else(|| from_env("AWS_ENDPOINT_URL"))
            .map(|url| url.trim().trim_end_matches('/').to_string())
            .filter(|url| !url.is_empty())
    }

    /// Builds the client. Cheap to clone afterwards; build it once per process.
    pub async fn client(&self) -> Result<aws_sdk_s3::Client, Failure> {
        let endpoint = self.endpoint();
        if let Some(url) = &endpoint
            && !(url.starts_with("http://") || url.starts_with("https://"))
        {
            return Err(Failure::usage(format!(
                "endpoint '{url}' must start with http:// or https://"
            )));
        }
        let shared = Connection {
            region: self.region.clone(),
            profile: self.profile.as_deref(),
            ca_bundle: self.ca_bundle.as_deref(),
            connect_timeout: self.connect_timeout,
            read_timeout: self.read_timeout,
            attempt_timeout: self.attempt_timeout,
            max_attempts: self.max_attempts,
        }
        .loader(RetryConfig::standard())?
        .load()
        .await;

        let mut config = aws_sdk_s3::config::Builder::from(&shared);
        if let Some(url) = &endpoint {
            config = config.endpoint_url(url);
            if std::env::var_os("AWS_REQUEST_CHECKSUM_CALCULATION").is_none() {
                config =
                    config.request_checksum_calculation(RequestChecksumCalculation::WhenRequired);
            }
            if std::env::var_os("AWS_RESPONSE_CHECKSUM_VALIDATION").is_none() {
                config =
                    config.response_checksum_validation(ResponseChecksumValidation::WhenRequired);
            }
        }
        let path_style = match self.addressing_style {
            AddressingStyle::Auto => endpoint.is_some(),
            AddressingStyle::Path => true,
            AddressingStyle::Virtual => false,
        };
        config = config.force_path_style(path_style);
        tracing::debug!(
            endpoint = endpoint.as_deref().unwrap_or("AWS"),
            region = ?shared.region(),
            path_style,
            "S3 client ready"
        );
        Ok(aws_sdk_s3::Client::from_conf(config.build()))
    }
}

/// What every SDK client of ours is built from, S3 or not: region, profile, the HTTPS client with
/// any extra CA, timeouts, and retries with jittered back-off. One place, so that the flags mean
/// the same for every service.
pub(crate) struct Connection<'a> {
    pub region: Option<String>,
    pub profile: Option<&'a str>,
    pub ca_bundle: Option<&'a std::path::Path>,
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
    pub attempt_timeout: Duration,
    pub max_attempts: u32,
}

impl Connection<'_> {
    /// An aws-config loader with all of that; `retry` is standard or adaptive.
    pub(crate) fn loader(self, retry: RetryConfig) -> Result<aws_config::ConfigLoader, Failure> {
        let region = RegionProviderChain::first_try(self.region.map(Region::new))
            .or_default_provider()
            .or_else(Region::from_static("us-east-1"));
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .region(region)
            .http_client(https_client(self.ca_bundle)?)
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(self.connect_timeout)
                    .read_timeout(self.read_timeout)
                    .operation_attempt_timeout(self.attempt_timeout)
                    .build(),
            )
            .retry_config(
                retry
                    .with_max_attempts(self.max_attempts)
                    .with_initial_backoff(Duration::from_millis(200))
                    .with_max_backoff(Duration::from_secs(20)),
            );
        if let Some(profile) = self.profile {
            loader = loader.profile_name(profile);
        }
        Ok(loader)
    }
}

/// The HTTPS client every AWS client of ours uses: rustls with the system's roots plus a PEM
/// bundle of extra authorities from `ca_bundle` or else `AWS_CA_BUNDLE` (which the Rust SDK does
/// not read by itself). Shared so the control-plane clients (EC2, EBS, RDS, DynamoDB) trust what
/// the S3 client trusts.
pub fn https_client(
    ca_bundle: Option<&Path>,
) -> Result<aws_smithy_runtime_api::client::http::SharedHttpClient, Failure> {
    let bundle = ca_bundle
        .map(Path::to_path_buf)
        .or_else(|| std::env::var_os("AWS_CA_BUNDLE").map(PathBuf::from));
    let mut trust = TrustStore::default();
    if let Some(path) = bundle.filter(|p| !p.as_os_str().is_empty()) {
        let pem = std::fs::read(&path).map_err(|err| {
            Failure::usage(format!("cannot read CA bundle {}: {err}", path.display()))
        })?;
        trust = trust.with_pem_certificate(pem);
    }
    let context = TlsContext::builder()
        .with_trust_store(trust)
        .build()
        .map_err(|err| Failure::usage(format!("unusable TLS settings: {err}")))?;
    Ok(aws_smithy_http_client::Builder::new()
        .tls_provider(tls::Provider::Rustls(CryptoMode::AwsLc))
        .tls_context(context)
        .build_https())
}

/// Parses a storage class by the names the SDK knows (`STANDARD`, `GLACIER_IR`, ...), for clap.
pub fn parse_storage_class(text: &str) -> Result<aws_sdk_s3::types::StorageClass, String> {
    parse_known(
        "storage class",
        aws_sdk_s3::types::StorageClass::values(),
        text,
    )
}

/// Parses a canned ACL by the names the SDK knows (`private`, `bucket-owner-full-control`, ...).
pub fn parse_canned_acl(text: &str) -> Result<aws_sdk_s3::types::ObjectCannedAcl, String> {
    parse_known(
        "canned ACL",
        aws_sdk_s3::types::ObjectCannedAcl::values(),
        text,
    )
}

/// An SDK enum from one of its known names; an unknown name is refused with the list, rather
/// than passed on as the SDK's `Unknown` variant for the server to reject mid-run.
fn parse_known<T: for<'a> From<&'a str>>(
    what: &str,
    known: &[&str],
    text: &str,
) -> Result<T, String> {
    if known.contains(&text) {
        Ok(T::from(text))
    } else {
        Err(format!(
            "unknown {what} '{text}' (known: {})",
            known.join(", ")
        ))
    }
}
