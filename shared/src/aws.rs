//! The AWS control-plane clients (EC2, EBS direct, RDS, DynamoDB), built from flags and the
//! standard AWS environment, and the instance metadata (IMDSv2) look-ups.
//!
//! This mirrors `crate::s3::S3Options` for the services that are not S3: the same timeouts, retry
//! policy, CA bundle and profile handling, so a cron job behaves the same whichever service it talks
//! to. snapshot-restore and ebs-attach both use it.
//!
//! Endpoints: `--endpoint-url` wins for every service; otherwise aws-config itself reads the
//! service-specific `AWS_ENDPOINT_URL_EC2`, `AWS_ENDPOINT_URL_EBS`, `AWS_ENDPOINT_URL_RDS`,
//! `AWS_ENDPOINT_URL_DYNAMODB`, then `AWS_ENDPOINT_URL` (so moto, LocalStack or a VPC endpoint
//! work without flags).

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use aws_config::SdkConfig;
use aws_config::retry::RetryConfig;
use aws_smithy_types::error::metadata::ProvideErrorMetadata;
use clap::Args;

use crate::exit::{HttpStatus, classify_sdk_error};
use crate::units::parse_duration;
use crate::{ExitCode, Failure};

/// The AWS connection flags of the control-plane tools.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "AWS connection")]
pub struct AwsOptions {
    /// Endpoint for every AWS API the tool calls (moto, LocalStack, a VPC endpoint) [default: $AWS_ENDPOINT_URL_EC2 / _EBS / _RDS / _DYNAMODB, then $AWS_ENDPOINT_URL, then AWS]
    #[arg(long, global = true, value_name = "URL")]
    pub endpoint_url: Option<String>,

    /// Region of the snapshot, volume or table [default: $AWS_REGION, the profile's, then us-east-1]
    #[arg(long, global = true, value_name = "REGION")]
    pub region: Option<String>,

    /// Named profile from ~/.aws/config and ~/.aws/credentials [default: $AWS_PROFILE]
    #[arg(long, global = true, value_name = "NAME")]
    pub profile: Option<String>,

    /// PEM file of extra certificate authorities to trust, for a private CA [default: $AWS_CA_BUNDLE]
    #[arg(long, global = true, value_name = "FILE")]
    pub ca_bundle: Option<PathBuf>,

    /// Give up connecting to an endpoint after this long
    #[arg(long, global = true, value_parser = parse_duration, default_value = "10s", value_name = "DURATION")]
    pub connect_timeout: Duration,

    /// Give up on a response that sends nothing for this long
    #[arg(long, global = true, value_parser = parse_duration, default_value = "60s", value_name = "DURATION")]
    pub read_timeout: Duration,

    /// Give up on one attempt of one request after this long
    #[arg(long, global = true, value_parser = parse_duration, default_value = "2m", value_name = "DURATION")]
    pub attempt_timeout: Duration,

    /// Attempts per request, first try included, with jittered exponential back-off between them
    #[arg(long, global = true, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=100), value_name = "N")]
    pub max_attempts: u32,
}

impl AwsOptions {
    /// The endpoint given by flag, if any (the environment is left to aws-config).
    fn endpoint(&self) -> Result<Option<String>, Failure> {
        let Some(url) = self
            .endpoint_url
            .as_deref()
            .map(|u| u.trim().trim_end_matches('/'))
            .filter(|u| !u.is_empty())
        else {
            return Ok(None);
        };
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(Failure::usage(format!(
                "endpoint '{url}' must start with http:// or https://"
            )));
        }
        Ok(Some(url.to_string()))
    }

    /// The shared SDK configuration, for `aws_sdk_<service>::Client::new` in the tool that needs
    /// the service (this crate links no service SDK, so a tool compiles only those it uses).
    /// `adaptive` turns on client-side rate limiting that slows down when the service throttles
    /// (the EBS direct APIs' per-snapshot request limit), instead of retrying at full speed into
    /// more throttling.
    pub async fn sdk_config(&self, adaptive: bool) -> Result<SdkConfig, Failure> {
        let endpoint = self.endpoint()?;
        let retry = if adaptive {
            RetryConfig::adaptive()
        } else {
            RetryConfig::standard()
        };
        let mut loader = crate::s3::Connection {
            region: self.region.clone(),
            profile: self.profile.as_deref(),
            ca_bundle: self.ca_bundle.as_deref(),
            connect_timeout: self.connect_timeout,
            read_timeout: self.read_timeout,
            attempt_timeout: self.attempt_timeout,
            max_attempts: self.max_attempts,
        }
        .loader(retry)?;
        if let Some(url) = &endpoint {
            loader = loader.endpoint_url(url);
        }
        let config = loader.load().await;
        tracing::debug!(endpoint = endpoint.as_deref().unwrap_or("from environment or AWS"), region = ?config.region(), "AWS configuration ready");
        Ok(config)
    }
}

/// Classifies an SDK error of any AWS service for the exit-code table, adding the control-plane
/// error codes that the S3-oriented shared classifier does not know (`InvalidVolume.NotFound`,
/// `UnauthorizedOperation`, `RequestLimitExceeded`, ...).
pub fn aws_failure<E, R>(
    context: impl fmt::Display,
    err: &aws_smithy_runtime_api::client::result::SdkError<E, R>,
) -> Failure
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: fmt::Debug + HttpStatus + 'static,
{
    let (mut exit, detail) = classify_sdk_error(err);
    if let Some(code) = err.code() {
        if code.ends_with("NotFound")
            || code.ends_with(".NotFound")
            || code.ends_with("NotFoundFault")
            || code == "ResourceNotFoundException"
            || code == "TableNotFoundException"
            || code == "ExportNotFoundException"
        {
            exit = ExitCode::NotFound;
        } else if code == "UnauthorizedOperation"
            || code == "AccessDeniedException"
            || code == "AuthFailure"
        {
            exit = ExitCode::Access;
        } else if code == "RequestLimitExceeded"
            || code == "ThrottlingException"
            || code == "ServiceUnavailableException"
            || code == "InternalServerException"
        {
            exit = ExitCode::Network;
        }
    }
    Failure::new(exit, format!("{context}: {detail}"))
}

/// Where this instance's identity comes from: flags or environment first, then IMDSv2.
#[derive(Debug, Clone, Default, Args)]
#[command(next_help_heading = "Instance metadata")]
pub struct InstanceOptions {
    /// Availability zone [default: this instance's, from the instance metadata service (IMDSv2)]
    #[arg(long = "az", env = "S3PIPE_AVAILABILITY_ZONE", value_name = "AZ")]
    pub availability_zone: Option<String>,

    /// Instance metadata service (IMDSv2) to ask for the instance id and zone [default: $AWS_EC2_METADATA_SERVICE_ENDPOINT, then http://169.254.169.254]
    #[arg(long, value_name = "URL")]
    pub imds_endpoint: Option<String>,
}

/// A small IMDSv2 client: a session token first, then the metadata paths (aws-config's client,
/// with short timeouts so a machine that is not on EC2 fails in seconds, not minutes).
#[derive(Debug)]
pub struct Imds {
    client: aws_config::imds::Client,
}

impl Imds {
    pub fn new(endpoint: Option<&str>) -> Result<Self, Failure> {
        let mut builder = aws_config::imds::Client::builder()
            .connect_timeout(Duration::from_secs(2))
            .read_timeout(Duration::from_secs(5))
            .max_attempts(3);
        if let Some(url) = endpoint {
            builder = builder.endpoint(url).map_err(|err| {
                Failure::usage(format!("bad instance metadata endpoint '{url}': {err}"))
            })?;
        }
        Ok(Imds {
            client: builder.build(),
        })
    }

    /// One metadata value, e.g. `instance-id` or `placement/availability-zone`.
    pub async fn get(&self, what: &str) -> Result<String, Failure> {
        let path = format!("/latest/meta-data/{what}");
        match self.client.get(&path).await {
            Ok(value) => Ok(value.as_ref().trim().to_string()),
            Err(err) => Err(Failure::new(
                ExitCode::Network,
                format!(
                    "cannot read {what} from the instance metadata service (IMDSv2): {}; not on EC2? pass it by flag",
                    crate::exit::error_chain(&err)
                ),
            )),
        }
    }
}

impl InstanceOptions {
    /// The availability zone: `--az` / `$S3PIPE_AVAILABILITY_ZONE`, else IMDSv2.
    pub async fn availability_zone(&self) -> Result<String, Failure> {
        if let Some(az) = self.availability_zone.clone().filter(|a| !a.is_empty()) {
            return Ok(az);
        }
        Imds::new(self.imds_endpoint.as_deref())?
            .get("placement/availability-zone")
            .await
    }
}
