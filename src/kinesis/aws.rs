//! AWS clients for Kinesis and DynamoDB: the default credential chain (environment, profile,
//! IRSA web identity, container and instance roles), a region, and an optional endpoint
//! override (kinesis-local, dynalite, VPC endpoints).

use aws_config::BehaviorVersion;

/// Where and as whom to call AWS.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AwsSettings {
    /// `None`: the default chain's region (AWS_REGION, the profile, IMDS).
    pub region: Option<String>,
    /// `None`: the service's public endpoint for the region.
    pub endpoint: Option<String>,
}

/// The shared SDK configuration: credentials and region resolved once.
pub async fn sdk_config(s: &AwsSettings) -> aws_config::SdkConfig {
    let mut loader = aws_config::defaults(BehaviorVersion::latest());
    if let Some(r) = &s.region {
        loader = loader.region(aws_config::Region::new(r.clone()));
    }
    loader.load().await
}

pub fn kinesis(config: &aws_config::SdkConfig, endpoint: Option<&str>) -> aws_sdk_kinesis::Client {
    let mut b = aws_sdk_kinesis::config::Builder::from(config);
    if let Some(e) = endpoint {
        b = b.endpoint_url(e);
    }
    aws_sdk_kinesis::Client::from_conf(b.build())
}

pub fn dynamodb(
    config: &aws_config::SdkConfig,
    endpoint: Option<&str>,
) -> aws_sdk_dynamodb::Client {
    let mut b = aws_sdk_dynamodb::config::Builder::from(config);
    if let Some(e) = endpoint {
        b = b.endpoint_url(e);
    }
    aws_sdk_dynamodb::Client::from_conf(b.build())
}

/// An SDK error with its service code and message, for log lines and typed errors.
pub fn describe<E, R>(e: &aws_sdk_kinesis::error::SdkError<E, R>) -> String
where
    E: aws_sdk_kinesis::error::ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    use aws_sdk_kinesis::error::SdkError;
    match e {
        SdkError::ServiceError(s) => {
            let err = s.err();
            match (err.code(), err.message()) {
                (Some(c), Some(m)) => format!("{c}: {m}"),
                (Some(c), None) => c.to_string(),
                _ => format!("{err}"),
            }
        }
        SdkError::TimeoutError(_) => "timed out".into(),
        SdkError::DispatchFailure(d) => format!("cannot connect: {d:?}"),
        other => format!("{other}"),
    }
}
