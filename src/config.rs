//! The `auditnorm run` configuration: a YAML file in, a resolved [`Plan`] out.
//!
//! Two phases, as ripgrep turns flags into its "high-level arguments":
//! 1. **Shape** ([`ConfigFile`]): what the file may say. Serde types with
//!    `deny_unknown_fields` everywhere; their JSON Schema (`schemas/config.schema.json`, from
//!    [`json_schema`]) is the documentation and is checked first, so that every structural
//!    problem (unknown key, wrong type, bad duration) is reported at once, not the first only.
//! 2. **Plan** ([`ConfigFile::resolve`]): what the pipeline runs. Defaults filled in, `${VAR}`
//!    references read from the environment, relative paths anchored at the config file's
//!    directory, librdkafka properties checked by librdkafka itself, and the settings the
//!    guarantees depend on (offset store, idempotence) forced. Every semantic problem is
//!    collected, so `auditnorm validate` lists them all.
//!
//! The input is an enum ([`InputSpec`] -> [`InputPlan`]): Kinesis is another variant.

use crate::record::SourceKind;
use crate::sink::file::Target;
use schemars::gen::SchemaGenerator;
use schemars::schema::{InstanceType, Metadata, ObjectValidation, Schema, SchemaObject};
use schemars::JsonSchema;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

// ---------------------------------------------------------------------------------------------
// Phase 1: the shape of the file.
// ---------------------------------------------------------------------------------------------

/// The configuration of `auditnorm run`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "auditnorm run configuration")]
pub struct ConfigFile {
    /// The Kafka cluster used by every Kafka input, output and dead-letter topic that does not
    /// name its own `brokers`, and librdkafka options shared by all their clients.
    #[serde(default)]
    pub kafka: Option<KafkaCluster>,
    /// Where audit records come from.
    pub input: InputSpec,
    /// Where OCSF events go.
    pub output: OutputSpec,
    /// Where records that cannot become OCSF events go, with their original bytes. Only bad
    /// data goes there: when a destination cannot take writes, the pipeline retries instead.
    pub dead_letter: DeadLetterSpec,
    /// Lane settings: commit interval, in-flight limit, drain timeout, retry budget.
    #[serde(default)]
    pub pipeline: PipelineSpec,
    /// A directory of mapping tables (`<source>.toml`) that replace the built-in ones; relative
    /// to the directory of this file.
    #[serde(default)]
    pub mappings: Option<PathBuf>,
    /// Secret redaction in events and dead letters: on, with the built-in rules, by default.
    #[serde(default)]
    pub redaction: RedactionSpec,
    /// Prometheus metrics, `/healthz` and `/readyz` on one HTTP port. Absent: no port is
    /// opened (the Helm chart always writes it).
    #[serde(default)]
    pub metrics: Option<MetricsSpec>,
}

/// The metrics port: `GET <path>` (Prometheus text format), `GET /healthz` (200 while the
/// process is alive and no lane is stalled), `GET /readyz` (200 while the input is connected,
/// at least one lane runs, and the pipeline is not stopping).
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MetricsSpec {
    /// Address and port to listen on, `IP:PORT`, e.g. `0.0.0.0:9464` or `[::]:9464`.
    pub listen: String,
    /// Where the metrics are served.
    #[serde(default = "defaults::metrics_path")]
    pub path: String,
    /// A lane with records in flight whose commit point has not moved for this long (or that
    /// has not run at all) makes `/healthz` fail, so that Kubernetes restarts the pod. Keep it
    /// above what a retry cycle takes (`retry.budget` x (`delivery_timeout` + `max_backoff`)).
    #[serde(default = "defaults::stall_timeout")]
    pub stall_timeout: HumanDuration,
}

/// Redaction settings (the same as `replay`'s flags). The hash key never sits in this file:
/// name the environment variable or the file that holds it.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RedactionSpec {
    /// false turns redaction off (says so loudly at start).
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Use the built-in rule set (rules/redaction.toml) besides `rules`.
    #[serde(default = "yes")]
    pub builtin_rules: bool,
    /// Rule files added to (or, without the built-in set, replacing) it; relative to this file.
    #[serde(default)]
    pub rules: Vec<PathBuf>,
    /// Environment variable holding the key for keyed-hash replacements.
    #[serde(default)]
    pub hash_key_env: Option<String>,
    /// File holding that key; relative to this file.
    #[serde(default)]
    pub hash_key_file: Option<PathBuf>,
    /// Keep dead letters' raw bytes unredacted (a locked-down dead-letter destination only).
    #[serde(default)]
    pub keep_raw_dead_letters: bool,
}

fn yes() -> bool {
    true
}

impl Default for RedactionSpec {
    fn default() -> Self {
        RedactionSpec {
            enabled: true,
            builtin_rules: true,
            rules: Vec::new(),
            hash_key_env: None,
            hash_key_file: None,
            keep_raw_dead_letters: false,
        }
    }
}

/// A Kafka cluster and the librdkafka options every client on it gets.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct KafkaCluster {
    /// Bootstrap brokers, `host:port`.
    pub brokers: Vec<String>,
    /// librdkafka configuration properties for every client (consumer and producers), e.g.
    /// `security.protocol`, `sasl.mechanism`, `sasl.username`, `sasl.password`,
    /// `ssl.ca.location`. A value written `${NAME}` is read from environment variable NAME.
    #[serde(default)]
    pub options: Options,
}

/// librdkafka properties (see librdkafka's CONFIGURATION.md). Values may be strings, numbers
/// or booleans; `${NAME}` reads environment variable NAME.
pub type Options = BTreeMap<String, OptionValue>;

#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum OptionValue {
    Bool(bool),
    Int(i64),
    Float(f64),
    Text(String),
}

impl std::fmt::Display for OptionValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OptionValue::Bool(b) => write!(f, "{b}"),
            OptionValue::Int(i) => write!(f, "{i}"),
            OptionValue::Float(x) => write!(f, "{x}"),
            OptionValue::Text(s) => f.write_str(s),
        }
    }
}

/// Where records come from: exactly one of the keys.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub enum InputSpec {
    Kafka(KafkaInputSpec),
    Kinesis(KinesisInputSpec),
}

impl JsonSchema for InputSpec {
    fn schema_name() -> String {
        "InputSpec".into()
    }
    fn json_schema(gen: &mut SchemaGenerator) -> Schema {
        one_key(
            "Where records come from: exactly one of the keys.",
            vec![
                (
                    "kafka",
                    gen.subschema_for::<KafkaInputSpec>(),
                    "A consumer group reading Kafka topics; one lane per assigned partition.",
                ),
                (
                    "kinesis",
                    gen.subschema_for::<KinesisInputSpec>(),
                    "A Kinesis data stream; one lane per shard, shards shared by replicas \
                     through a lease table.",
                ),
            ],
        )
    }
}

/// A Kinesis data stream, read shard by shard. Credentials come from the AWS default chain
/// (environment, profile, IRSA web identity, container or instance role).
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct KinesisInputSpec {
    /// Stream name, or its ARN (`arn:aws:kinesis:REGION:ACCOUNT:stream/NAME`).
    pub stream: String,
    /// AWS region; defaults to the ARN's region, then to the default chain's (AWS_REGION).
    #[serde(default)]
    pub region: Option<String>,
    /// Endpoint override (a VPC endpoint, or kinesis-local for tests), e.g. `http://host:4568`.
    #[serde(default)]
    pub endpoint: Option<String>,
    /// The source of the stream's records, or `auto` to detect it per record.
    #[serde(default = "defaults::source")]
    pub source: SourceSpec,
    /// Where a shard with no checkpoint yet is read from.
    #[serde(default)]
    pub starting_position: StartingPosition,
    /// With `starting_position: at_timestamp`: an RFC 3339 time, e.g. `2026-11-01T00:00:00Z`.
    #[serde(default)]
    pub starting_timestamp: Option<String>,
    /// Pause between two GetRecords calls on one shard when it is caught up (Kinesis allows
    /// five calls per second per shard, shared by every consumer).
    #[serde(default = "defaults::poll_interval")]
    pub poll_interval: HumanDuration,
    /// Records per GetRecords call (1 to 10000).
    #[serde(default = "defaults::poll_limit")]
    pub poll_limit: u32,
    /// Read with enhanced fan-out instead of polling: the name of the stream consumer to
    /// register (RegisterStreamConsumer, once; replicas share it) and SubscribeToShard per
    /// shard. Each consumer gets its own 2 MB/s per shard and records are pushed as they
    /// arrive.
    #[serde(default)]
    pub enhanced_fan_out: Option<String>,
    /// Where leases and checkpoints live: a DynamoDB table shared by every replica, or a
    /// file for a single replica.
    pub leases: LeaseSpec,
    /// A lease whose counter stood still this long is taken over by another replica; leases
    /// are renewed every third of it.
    #[serde(default = "defaults::lease_duration")]
    pub lease_duration: HumanDuration,
    /// How often the stream's shard list is read for new shards (a shard that ends makes its
    /// owner read it at once).
    #[serde(default = "defaults::shard_sync_interval")]
    pub shard_sync_interval: HumanDuration,
    /// This replica's name in the lease table; defaults to the host name, the process id and
    /// a random suffix. Unique per running process.
    #[serde(default)]
    pub worker_id: Option<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum StartingPosition {
    /// The oldest record still in the stream.
    #[default]
    TrimHorizon,
    /// Only records written after the shard is first read.
    Latest,
    /// Records from `starting_timestamp` on.
    AtTimestamp,
}

/// Where a Kinesis input keeps its leases: exactly one of the keys.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub enum LeaseSpec {
    Dynamodb(DynamoLeaseSpec),
    File(String),
}

impl JsonSchema for LeaseSpec {
    fn schema_name() -> String {
        "LeaseSpec".into()
    }
    fn json_schema(gen: &mut SchemaGenerator) -> Schema {
        one_key(
            "Where a Kinesis input keeps its leases: exactly one of the keys.",
            vec![
                (
                    "dynamodb",
                    gen.subschema_for::<DynamoLeaseSpec>(),
                    "A DynamoDB table (created on demand, on-demand billing), one item per \
                     shard, shared by every replica.",
                ),
                (
                    "file",
                    gen.subschema_for::<String>(),
                    "A JSON file (relative to this file's directory) for a single replica; \
                     give it a volume (a StatefulSet) so that checkpoints survive restarts.",
                ),
            ],
        )
    }
}

/// A DynamoDB lease table.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DynamoLeaseSpec {
    /// Table name: one per application and stream.
    pub table: String,
    /// Region of the table; defaults to the stream's.
    #[serde(default)]
    pub region: Option<String>,
    /// Endpoint override (dynalite for tests, a VPC endpoint).
    #[serde(default)]
    pub endpoint: Option<String>,
}

/// A consumer group reading Kafka topics.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct KafkaInputSpec {
    /// Bootstrap brokers of the input cluster; defaults to `kafka.brokers`.
    #[serde(default)]
    pub brokers: Option<Vec<String>>,
    /// The consumer group (`group.id`): its committed offsets are where a restart resumes.
    pub group: String,
    /// The topics to read, each with the source of its records.
    pub topics: Vec<TopicSpec>,
    /// librdkafka properties for the consumer only (on top of `kafka.options`).
    #[serde(default)]
    pub options: Options,
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TopicSpec {
    /// Topic name.
    pub name: String,
    /// The source of the topic's records, or `auto` to detect it per record.
    pub source: SourceSpec,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum SourceSpec {
    Auto,
    #[serde(rename = "cloudtrail")]
    CloudTrail,
    GcpAudit,
    AzureActivity,
    K8sAudit,
}

impl SourceSpec {
    pub fn kind(self) -> Option<SourceKind> {
        match self {
            SourceSpec::Auto => None,
            SourceSpec::CloudTrail => Some(SourceKind::CloudTrail),
            SourceSpec::GcpAudit => Some(SourceKind::GcpAudit),
            SourceSpec::AzureActivity => Some(SourceKind::AzureActivity),
            SourceSpec::K8sAudit => Some(SourceKind::K8sAudit),
        }
    }
}

/// Where OCSF events go: exactly one of the keys.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub enum OutputSpec {
    Kafka(KafkaOutputSpec),
    Kinesis(KinesisOutputSpec),
    File(String),
}

impl JsonSchema for OutputSpec {
    fn schema_name() -> String {
        "OutputSpec".into()
    }
    fn json_schema(gen: &mut SchemaGenerator) -> Schema {
        one_key(
            "Where OCSF events go: exactly one of the keys.",
            vec![
                (
                    "kafka",
                    gen.subschema_for::<KafkaOutputSpec>(),
                    "A Kafka topic, written by an idempotent producer.",
                ),
                (
                    "kinesis",
                    gen.subschema_for::<KinesisOutputSpec>(),
                    "A Kinesis data stream (PutRecords); each event's partition key is its \
                     lane's name, so a lane's events keep their order.",
                ),
                (
                    "file",
                    gen.subschema_for::<String>(),
                    "For local use: a file (one event per line; relative to this file's \
                     directory), or `-` for standard output.",
                ),
            ],
        )
    }
}

/// A Kafka topic for OCSF events.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct KafkaOutputSpec {
    /// Bootstrap brokers of the output cluster; defaults to `kafka.brokers`.
    #[serde(default)]
    pub brokers: Option<Vec<String>>,
    /// Topic name. It must exist (or the cluster must create topics on demand).
    pub topic: String,
    /// How events of one input lane are placed on the output topic's partitions.
    #[serde(default)]
    pub partitioning: Partitioning,
    /// librdkafka properties for this producer only (on top of `kafka.options`).
    #[serde(default)]
    pub options: Options,
}

/// Every event of one input lane (Kafka partition) goes to one output partition, so that the
/// lane's order is kept. Each event's key is the lane's name, `<topic>/<partition>`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Partitioning {
    /// Input partition p goes to output partition p when the output topic has at least as many
    /// partitions as the input topic, else `lane_hash`.
    #[default]
    Auto,
    /// Input partition p goes to output partition p; a lane whose partition does not exist in
    /// the output topic stops the pipeline.
    InputPartition,
    /// The partition Kafka's default (murmur2) partitioner picks for the key
    /// `<topic>/<partition>`.
    LaneHash,
}

/// Where dead letters go: exactly one of the keys.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub enum DeadLetterSpec {
    Kafka(KafkaDeadLetterSpec),
    Kinesis(KinesisOutputSpec),
    File(String),
}

impl JsonSchema for DeadLetterSpec {
    fn schema_name() -> String {
        "DeadLetterSpec".into()
    }
    fn json_schema(gen: &mut SchemaGenerator) -> Schema {
        one_key(
            "Where dead letters go: exactly one of the keys.",
            vec![
                (
                    "kafka",
                    gen.subschema_for::<KafkaDeadLetterSpec>(),
                    "A Kafka topic: the value is the original record, the reason and origin \
                     are in `auditnorm-*` headers.",
                ),
                (
                    "kinesis",
                    gen.subschema_for::<KinesisOutputSpec>(),
                    "A Kinesis data stream: each record is a dead-letter JSON document \
                     (schemas/dead-letter.schema.json), keyed by its lane.",
                ),
                (
                    "file",
                    gen.subschema_for::<String>(),
                    "A file of dead-letter JSON lines (schemas/dead-letter.schema.json; \
                     relative to this file's directory), or `-` for standard error.",
                ),
            ],
        )
    }
}

/// A Kinesis data stream to write to. Credentials come from the AWS default chain.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct KinesisOutputSpec {
    /// Stream name or ARN. It must exist.
    pub stream: String,
    /// AWS region; defaults to the ARN's, then to the default chain's.
    #[serde(default)]
    pub region: Option<String>,
    /// Endpoint override (a VPC endpoint, kinesis-local).
    #[serde(default)]
    pub endpoint: Option<String>,
    /// How long a record may wait for others to fill its PutRecords batch.
    #[serde(default = "defaults::linger")]
    pub linger: HumanDuration,
}

/// A Kafka topic for dead letters.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct KafkaDeadLetterSpec {
    /// Bootstrap brokers of the dead-letter cluster; defaults to `kafka.brokers`.
    #[serde(default)]
    pub brokers: Option<Vec<String>>,
    /// Topic name.
    pub topic: String,
    /// librdkafka properties for this producer only (on top of `kafka.options`).
    #[serde(default)]
    pub options: Options,
}

/// Lane settings. Durations are written like `500ms`, `5s`, `2m`, `1h`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PipelineSpec {
    /// How often acknowledged positions are committed (Kafka: `auto.commit.interval.ms`).
    #[serde(default = "defaults::commit_interval")]
    pub commit_interval: HumanDuration,
    /// Records per lane read but not yet acknowledged by their destinations; reading pauses
    /// at this many.
    #[serde(default = "defaults::in_flight")]
    pub in_flight: u32,
    /// On shutdown or rebalance, how long a lane may wait for its in-flight records before it
    /// commits what was acknowledged and lets go.
    #[serde(default = "defaults::drain_timeout")]
    pub drain_timeout: HumanDuration,
    /// How long one delivery may take, retries inside the Kafka client included
    /// (`message.timeout.ms`); past it the lane retries on its own, from its commit point.
    #[serde(default = "defaults::delivery_timeout")]
    pub delivery_timeout: HumanDuration,
    /// When a destination cannot take writes.
    #[serde(default)]
    pub retry: RetrySpec,
}

impl Default for PipelineSpec {
    fn default() -> Self {
        PipelineSpec {
            commit_interval: defaults::commit_interval(),
            in_flight: defaults::in_flight(),
            drain_timeout: defaults::drain_timeout(),
            delivery_timeout: defaults::delivery_timeout(),
            retry: RetrySpec::default(),
        }
    }
}

/// A lane whose delivery failed waits (doubling from `backoff` up to `max_backoff`) and sends
/// again everything it has not committed. After `budget` failed attempts in a row the process
/// exits non-zero without committing past the failure.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RetrySpec {
    /// Failed attempts in a row before the process gives up (exit status 1).
    #[serde(default = "defaults::retry_budget")]
    pub budget: u32,
    /// The first wait.
    #[serde(default = "defaults::backoff")]
    pub backoff: HumanDuration,
    /// The longest wait.
    #[serde(default = "defaults::max_backoff")]
    pub max_backoff: HumanDuration,
}

impl Default for RetrySpec {
    fn default() -> Self {
        RetrySpec {
            budget: defaults::retry_budget(),
            backoff: defaults::backoff(),
            max_backoff: defaults::max_backoff(),
        }
    }
}

mod defaults {
    use super::{HumanDuration, SourceSpec};
    use std::time::Duration;

    pub fn source() -> SourceSpec {
        SourceSpec::Auto
    }
    pub fn poll_interval() -> HumanDuration {
        HumanDuration(Duration::from_millis(250))
    }
    pub fn poll_limit() -> u32 {
        10000
    }
    pub fn lease_duration() -> HumanDuration {
        HumanDuration(Duration::from_secs(10))
    }
    pub fn linger() -> HumanDuration {
        HumanDuration(Duration::from_millis(20))
    }
    pub fn shard_sync_interval() -> HumanDuration {
        HumanDuration(Duration::from_secs(60))
    }

    pub fn commit_interval() -> HumanDuration {
        HumanDuration(Duration::from_secs(5))
    }
    pub fn in_flight() -> u32 {
        2000
    }
    pub fn drain_timeout() -> HumanDuration {
        HumanDuration(Duration::from_secs(30))
    }
    pub fn delivery_timeout() -> HumanDuration {
        HumanDuration(Duration::from_secs(30))
    }
    pub fn retry_budget() -> u32 {
        5
    }
    pub fn backoff() -> HumanDuration {
        HumanDuration(Duration::from_secs(1))
    }
    pub fn max_backoff() -> HumanDuration {
        HumanDuration(Duration::from_secs(30))
    }
    pub fn metrics_path() -> String {
        "/metrics".into()
    }
    pub fn stall_timeout() -> HumanDuration {
        HumanDuration(super::DEFAULT_STALL_TIMEOUT)
    }
}

/// `metrics.stall_timeout` when not given (and for pipelines without a metrics port).
pub const DEFAULT_STALL_TIMEOUT: Duration = Duration::from_secs(600);

/// A duration written as a whole number and a unit: `ms`, `s`, `m` or `h`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HumanDuration(pub Duration);

const DURATION_PATTERN: &str = "^[0-9]+(ms|s|m|h)$";

impl HumanDuration {
    pub fn parse(s: &str) -> Option<HumanDuration> {
        let split = s.find(|c: char| !c.is_ascii_digit())?;
        let (n, unit) = s.split_at(split);
        let n: u64 = n.parse().ok()?;
        let d = match unit {
            "ms" => Duration::from_millis(n),
            "s" => Duration::from_secs(n),
            "m" => Duration::from_secs(n.checked_mul(60)?),
            "h" => Duration::from_secs(n.checked_mul(3600)?),
            _ => return None,
        };
        Some(HumanDuration(d))
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        HumanDuration::parse(&s).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "`{s}` is not a duration; write a whole number and a unit: 500ms, 5s, 2m, 1h"
            ))
        })
    }
}

impl JsonSchema for HumanDuration {
    fn schema_name() -> String {
        "Duration".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        let mut s = SchemaObject {
            instance_type: Some(InstanceType::String.into()),
            ..Default::default()
        };
        s.string().pattern = Some(DURATION_PATTERN.into());
        s.metadata().description =
            Some("A whole number and a unit: `500ms`, `5s`, `2m`, `1h`.".into());
        s.into()
    }
}

/// The schema of an externally tagged enum: an object with exactly one of the given keys.
/// (schemars' own `oneOf` rendering makes validators report "matches none of the variants"
/// instead of the actual mistake inside the one key that was written.)
fn one_key(description: &str, variants: Vec<(&str, Schema, &str)>) -> Schema {
    let mut properties = schemars::Map::new();
    for (name, schema, doc) in variants {
        let schema = match schema {
            Schema::Object(mut o) if o.reference.is_none() => {
                o.metadata().description = Some(doc.into());
                Schema::Object(o)
            }
            other => Schema::Object(SchemaObject {
                metadata: Some(Box::new(Metadata {
                    description: Some(doc.into()),
                    ..Default::default()
                })),
                subschemas: Some(Box::new(schemars::schema::SubschemaValidation {
                    all_of: Some(vec![other]),
                    ..Default::default()
                })),
                ..Default::default()
            }),
        };
        properties.insert(name.to_string(), schema);
    }
    SchemaObject {
        metadata: Some(Box::new(Metadata {
            description: Some(description.into()),
            ..Default::default()
        })),
        instance_type: Some(InstanceType::Object.into()),
        object: Some(Box::new(ObjectValidation {
            properties,
            min_properties: Some(1),
            max_properties: Some(1),
            additional_properties: Some(Box::new(Schema::Bool(false))),
            ..Default::default()
        })),
        ..Default::default()
    }
    .into()
}

/// The JSON Schema of the configuration file, as checked in at `schemas/config.schema.json`.
pub fn json_schema() -> String {
    serde_json::to_string_pretty(&root_schema()).unwrap_or_default() + "\n"
}

/// Draft 7, with an optional field described by its type alone: leaving a key out is how a
/// file says "none" (an explicit `null` is refused), and validators then report the mistake
/// inside the value rather than "matches neither the type nor null".
fn root_schema() -> schemars::schema::RootSchema {
    schemars::gen::SchemaSettings::draft07()
        .with(|s| s.option_add_null_type = false)
        .into_generator()
        .into_root_schema_for::<ConfigFile>()
}

// ---------------------------------------------------------------------------------------------
// Problems: everything wrong with a file, at once.
// ---------------------------------------------------------------------------------------------

/// One thing wrong with the configuration, and where (a dotted path into the file).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub at: String,
    pub message: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.at.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.at, self.message)
        }
    }
}

/// All problems found; never empty.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problems(pub Vec<Problem>);

impl std::fmt::Display for Problems {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, p) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{p}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Problems {}

impl Problems {
    fn one(at: impl Into<String>, message: impl Into<String>) -> Problems {
        Problems(vec![Problem {
            at: at.into(),
            message: message.into(),
        }])
    }
}

#[derive(Default)]
struct Collect(Vec<Problem>);

impl Collect {
    fn push(&mut self, at: impl Into<String>, message: impl Into<String>) {
        self.0.push(Problem {
            at: at.into(),
            message: message.into(),
        });
    }
}

/// `/input/kafka/topics/0/name` -> `input.kafka.topics[0].name`.
fn dotted(pointer: &str) -> String {
    let mut out = String::new();
    for part in pointer.split('/').filter(|p| !p.is_empty()) {
        let part = part.replace("~1", "/").replace("~0", "~");
        if part.bytes().all(|b| b.is_ascii_digit()) {
            out.push_str(&format!("[{part}]"));
        } else {
            if !out.is_empty() {
                out.push('.');
            }
            out.push_str(&part);
        }
    }
    out
}

/// Parses YAML text into the shape: syntax first (with a line and column), then the JSON
/// Schema (every structural problem), then the typed structs.
pub fn parse(text: &str) -> Result<ConfigFile, Problems> {
    let value: serde_json::Value = serde_saphyr::from_str(text)
        .map_err(|e| Problems::one("", format!("not a valid YAML document: {e}")))?;
    if value.is_null() {
        return Err(Problems::one("", "the file is empty"));
    }
    let schema = serde_json::to_value(root_schema()).unwrap_or_default();
    let validator = jsonschema::validator_for(&schema)
        .map_err(|e| Problems::one("", format!("internal: the config schema is invalid: {e}")))?;
    let mut found = Collect::default();
    for e in validator.iter_errors(&value) {
        found.push(dotted(&e.instance_path.to_string()), e.to_string());
    }
    if !found.0.is_empty() {
        return Err(Problems(found.0));
    }
    serde_json::from_value(value).map_err(|e| Problems::one("", e.to_string()))
}

/// Reads, parses and resolves a configuration file.
pub fn load(path: &Path) -> Result<Plan, Problems> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        Problems::one(
            "",
            format!("cannot read config file {}: {e}", path.display()),
        )
    })?;
    let base = path.parent().unwrap_or(Path::new("."));
    parse(&text)?.resolve(base)
}

// ---------------------------------------------------------------------------------------------
// Phase 2: the resolved plan.
// ---------------------------------------------------------------------------------------------

/// What `auditnorm run` runs: every default filled in and every value checked.
#[derive(Debug, Clone)]
pub struct Plan {
    pub input: InputPlan,
    pub output: DestinationPlan,
    pub dead_letter: DestinationPlan,
    pub lanes: LaneSettings,
    /// Mapping tables directory (already anchored at the config file's directory).
    pub mappings: Option<PathBuf>,
    /// The redaction rules (`None`: redaction off) and whether dead letters stay raw.
    pub redactor: Option<crate::redact::Redactor>,
    pub keep_raw_dead_letters: bool,
    /// What the operator must read at start (redaction off, raw dead letters).
    pub notices: Vec<String>,
    /// The metrics port, when configured.
    pub metrics: Option<MetricsPlan>,
}

#[derive(Debug, Clone)]
pub struct MetricsPlan {
    pub listen: std::net::SocketAddr,
    pub path: String,
    pub stall_timeout: Duration,
}

#[derive(Debug, Clone)]
pub enum InputPlan {
    Kafka(KafkaInputPlan),
    Kinesis(Box<KinesisInputPlan>),
}

#[derive(Debug, Clone)]
pub struct KinesisInputPlan {
    /// The stream's name (taken from the ARN when one was given).
    pub stream: String,
    pub aws: crate::kinesis::aws::AwsSettings,
    pub source: Option<SourceKind>,
    pub start: StartPlan,
    pub interval: Duration,
    pub limit: i32,
    /// Enhanced fan-out: the consumer name (`None`: polling).
    pub fan_out: Option<String>,
    pub leases: LeasePlan,
    pub lease_duration: Duration,
    pub commit_interval: Duration,
    pub shard_sync_interval: Duration,
    pub worker_id: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartPlan {
    TrimHorizon,
    Latest,
    /// Milliseconds since the Unix epoch.
    AtTimestamp(i64),
}

impl std::fmt::Display for StartPlan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StartPlan::TrimHorizon => f.write_str("TRIM_HORIZON"),
            StartPlan::Latest => f.write_str("LATEST"),
            StartPlan::AtTimestamp(ms) => write!(f, "AT_TIMESTAMP {ms}"),
        }
    }
}

#[derive(Debug, Clone)]
pub enum LeasePlan {
    Dynamo {
        table: String,
        aws: crate::kinesis::aws::AwsSettings,
    },
    File(PathBuf),
}

#[derive(Debug, Clone)]
pub struct KafkaInputPlan {
    /// Complete consumer configuration (brokers, group, offset handling, user options).
    pub client: ClientSettings,
    pub group: String,
    /// Topic name and the source kind to force (`None`: detect per record).
    pub topics: Vec<(String, Option<SourceKind>)>,
}

#[derive(Debug, Clone)]
pub enum DestinationPlan {
    Kafka(KafkaTopicPlan),
    Kinesis(Box<crate::sink::kinesis::KinesisOutputSettings>),
    /// A line file, stdout (events) or stderr (dead letters).
    File(Target),
}

#[derive(Debug, Clone)]
pub struct KafkaTopicPlan {
    /// Complete producer configuration (brokers, idempotence, delivery timeout, user options).
    pub client: ClientSettings,
    pub topic: String,
    pub partitioning: Partitioning,
}

/// How lanes behave; the same for every kind of input.
#[derive(Debug, Clone)]
pub struct LaneSettings {
    pub commit_interval: Duration,
    pub in_flight: usize,
    pub drain_timeout: Duration,
    pub delivery_timeout: Duration,
    pub retry: RetryPolicy,
}

impl Default for LaneSettings {
    fn default() -> Self {
        let p = PipelineSpec::default();
        LaneSettings {
            commit_interval: p.commit_interval.0,
            in_flight: p.in_flight as usize,
            drain_timeout: p.drain_timeout.0,
            delivery_timeout: p.delivery_timeout.0,
            retry: RetryPolicy {
                budget: p.retry.budget,
                backoff: p.retry.backoff.0,
                max_backoff: p.retry.max_backoff.0,
            },
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    pub budget: u32,
    pub backoff: Duration,
    pub max_backoff: Duration,
}

impl RetryPolicy {
    /// The wait before attempt `n` (1-based) of a retry.
    pub fn delay(&self, attempt: u32) -> Duration {
        let factor = 1u32
            .checked_shl(attempt.saturating_sub(1))
            .unwrap_or(u32::MAX);
        self.backoff.saturating_mul(factor).min(self.max_backoff)
    }
}

/// A librdkafka client configuration. Its `Debug` hides values of secret-looking keys.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct ClientSettings(pub BTreeMap<String, String>);

impl ClientSettings {
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }

    pub fn set(&mut self, key: &str, value: impl Into<String>) {
        self.0.insert(key.to_string(), value.into());
    }

    pub fn to_client_config(&self) -> rdkafka::ClientConfig {
        let mut c = rdkafka::ClientConfig::new();
        for (k, v) in &self.0 {
            c.set(k, v);
        }
        c
    }
}

fn is_secret(key: &str) -> bool {
    ["password", "secret", "key.pem", "token", "jaas"]
        .iter()
        .any(|s| key.contains(s))
}

impl std::fmt::Debug for ClientSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut m = f.debug_map();
        for (k, v) in &self.0 {
            if is_secret(k) {
                m.entry(k, &"<hidden>");
            } else {
                m.entry(k, v);
            }
        }
        m.finish()
    }
}

/// Properties the pipeline sets itself, because its guarantees depend on them; a config that
/// sets them is refused with what to write instead.
const CONSUMER_OWNED: &[(&str, &str)] = &[
    ("bootstrap.servers", "write `brokers`"),
    ("metadata.broker.list", "write `brokers`"),
    ("group.id", "write `group`"),
    (
        "enable.auto.commit",
        "offsets are committed by the pipeline; set `pipeline.commit_interval`",
    ),
    ("auto.commit.interval.ms", "set `pipeline.commit_interval`"),
    (
        "enable.auto.offset.store",
        "offsets are stored only after delivery; this cannot be changed",
    ),
    (
        "enable.partition.eof",
        "the pipeline does not use end-of-partition events",
    ),
];

const PRODUCER_OWNED: &[(&str, &str)] = &[
    ("bootstrap.servers", "write `brokers`"),
    ("metadata.broker.list", "write `brokers`"),
    (
        "enable.idempotence",
        "the producer is always idempotent (ordering per partition depends on it)",
    ),
    ("message.timeout.ms", "set `pipeline.delivery_timeout`"),
    ("delivery.timeout.ms", "set `pipeline.delivery_timeout`"),
    ("transactional.id", "auditnorm does not use transactions"),
];

/// Which librdkafka client an endpoint gets.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Role {
    Consumer,
    Producer,
}

/// Topic names Kafka accepts.
fn topic_problem(name: &str) -> Option<String> {
    if name.is_empty() {
        return Some("a topic name cannot be empty".into());
    }
    if name.len() > 249 {
        return Some("a topic name is at most 249 characters".into());
    }
    if name == "." || name == ".." {
        return Some(format!("`{name}` is not a valid topic name"));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Some(format!(
            "`{name}`: topic names use only letters, digits, `.`, `_` and `-` (found {c:?})"
        ));
    }
    None
}

/// `${NAME}` -> the environment variable's value.
fn expand(value: &str, at: &str, problems: &mut Collect) -> String {
    if let Some(name) = value.strip_prefix("${").and_then(|v| v.strip_suffix('}')) {
        let valid = !name.is_empty()
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
            && !name.as_bytes()[0].is_ascii_digit();
        if !valid {
            problems.push(
                at,
                format!("`{value}`: not a valid environment variable name"),
            );
            return String::new();
        }
        match std::env::var(name) {
            Ok(v) => v,
            Err(_) => {
                problems.push(at, format!("environment variable {name} is not set"));
                String::new()
            }
        }
    } else {
        value.to_string()
    }
}

/// Asks librdkafka whether it knows the property and accepts the value (no connection made).
fn librdkafka_accepts(key: &str, value: &str) -> Result<(), String> {
    let mut c = rdkafka::ClientConfig::new();
    c.set(key, value);
    c.create_native_config().map(|_| ()).map_err(|e| match e {
        rdkafka::error::KafkaError::ClientConfig(_, desc, _, _) => desc,
        other => other.to_string(),
    })
}

/// `arn:aws:kinesis:REGION:ACCOUNT:stream/NAME` -> (REGION, NAME).
fn stream_arn(s: &str) -> Option<(&str, &str)> {
    let rest = s.strip_prefix("arn:")?;
    let mut parts = rest.splitn(5, ':');
    let (_partition, service, region, _account, resource) = (
        parts.next()?,
        parts.next()?,
        parts.next()?,
        parts.next()?,
        parts.next()?,
    );
    let name = resource.strip_prefix("stream/")?;
    (service == "kinesis" && !region.is_empty() && !name.is_empty()).then_some((region, name))
}

/// Kinesis stream names: 1 to 128 of letters, digits, `_`, `.` and `-`.
fn stream_problem(name: &str) -> Option<String> {
    if name.is_empty() || name.len() > 128 {
        return Some("a stream name has 1 to 128 characters".into());
    }
    name.chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
        .map(|c| {
            format!(
                "`{name}`: stream names use only letters, digits, `.`, `_` and `-` (found {c:?})"
            )
        })
}

/// A Kinesis destination: the sink's settings, with the lane settings' retry policy.
fn kinesis_output(
    k: &KinesisOutputSpec,
    lanes: &LaneSettings,
    at: &str,
    p: &mut Collect,
) -> DestinationPlan {
    let (name, aws) = kinesis_stream(&k.stream, &k.region, &k.endpoint, at, p);
    let mut s = crate::sink::kinesis::KinesisOutputSettings::new(name, aws);
    s.linger = k.linger.0;
    s.max_in_flight = lanes.in_flight.saturating_mul(4).max(1000);
    s.request_timeout = lanes.delivery_timeout;
    DestinationPlan::Kinesis(Box::new(s))
}

fn default_worker_id() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "auditnorm".into());
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{host}-{}-{:04x}", std::process::id(), nanos & 0xffff)
}

/// A stream named by name or ARN: its name, and where to call it (the ARN's region unless a
/// region is given, which must then agree).
fn kinesis_stream(
    stream: &str,
    region: &Option<String>,
    endpoint: &Option<String>,
    at: &str,
    p: &mut Collect,
) -> (String, crate::kinesis::aws::AwsSettings) {
    let (arn_region, name) = match stream_arn(stream) {
        Some((r, n)) => (Some(r.to_string()), n.to_string()),
        None if stream.starts_with("arn:") => {
            p.push(
                format!("{at}.stream"),
                format!(
                    "`{stream}` is not a Kinesis stream ARN (arn:aws:kinesis:REGION:ACCOUNT:stream/NAME)"
                ),
            );
            (None, stream.to_string())
        }
        None => (None, stream.to_string()),
    };
    if let Some(why) = stream_problem(&name) {
        p.push(format!("{at}.stream"), why);
    }
    if let (Some(r), Some(a)) = (region, &arn_region) {
        if r != a {
            p.push(
                format!("{at}.region"),
                format!("`{r}` differs from the stream ARN's region `{a}`"),
            );
        }
    }
    let aws = crate::kinesis::aws::AwsSettings {
        region: region.clone().or(arn_region),
        endpoint: endpoint.clone(),
    };
    (name, aws)
}

fn kinesis_input(
    k: &KinesisInputSpec,
    lanes: &LaneSettings,
    base: &Path,
    p: &mut Collect,
    later: &mut Collect,
) -> KinesisInputPlan {
    let at = "input.kinesis";
    let (stream, aws) = kinesis_stream(&k.stream, &k.region, &k.endpoint, at, p);
    let start = match (k.starting_position, &k.starting_timestamp) {
        (StartingPosition::TrimHorizon, None) => StartPlan::TrimHorizon,
        (StartingPosition::Latest, None) => StartPlan::Latest,
        (StartingPosition::AtTimestamp, Some(t)) => {
            match time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339) {
                Ok(dt) => StartPlan::AtTimestamp((dt.unix_timestamp_nanos() / 1_000_000) as i64),
                Err(e) => {
                    p.push(
                        format!("{at}.starting_timestamp"),
                        format!(
                            "`{t}` is not an RFC 3339 time ({e}); write e.g. 2026-11-01T00:00:00Z"
                        ),
                    );
                    StartPlan::TrimHorizon
                }
            }
        }
        (StartingPosition::AtTimestamp, None) => {
            p.push(
                format!("{at}.starting_timestamp"),
                "starting_position at_timestamp needs a starting_timestamp",
            );
            StartPlan::TrimHorizon
        }
        (_, Some(_)) => {
            p.push(
                format!("{at}.starting_timestamp"),
                "only used with starting_position: at_timestamp; remove it or change the position",
            );
            StartPlan::TrimHorizon
        }
    };
    if !(1..=10000).contains(&k.poll_limit) {
        later.push(format!("{at}.poll_limit"), "must be between 1 and 10000");
    }
    for (name, d) in [
        ("lease_duration", k.lease_duration.0),
        ("shard_sync_interval", k.shard_sync_interval.0),
    ] {
        if d < Duration::from_millis(300) {
            later.push(format!("{at}.{name}"), "must be at least 300ms");
        }
    }
    let leases = match &k.leases {
        LeaseSpec::Dynamodb(t) => {
            if t.table.len() < 3
                || t.table.len() > 255
                || !t
                    .table
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
            {
                p.push(
                    format!("{at}.leases.dynamodb.table"),
                    format!(
                        "`{}`: DynamoDB table names have 3 to 255 letters, digits, `.`, `_` or `-`",
                        t.table
                    ),
                );
            }
            LeasePlan::Dynamo {
                table: t.table.clone(),
                aws: crate::kinesis::aws::AwsSettings {
                    region: t.region.clone().or_else(|| aws.region.clone()),
                    endpoint: t.endpoint.clone(),
                },
            }
        }
        LeaseSpec::File(f) => {
            if f.trim().is_empty() {
                p.push(format!("{at}.leases.file"), "name a file");
            }
            LeasePlan::File(base.join(f))
        }
    };
    if let Some(c) = &k.enhanced_fan_out {
        if c.is_empty()
            || c.len() > 128
            || !c
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        {
            p.push(
                format!("{at}.enhanced_fan_out"),
                format!("`{c}`: consumer names have 1 to 128 letters, digits, `.`, `_` or `-`"),
            );
        }
    }
    let worker_id = match &k.worker_id {
        Some(w) if w.trim().is_empty() => {
            p.push(format!("{at}.worker_id"), "cannot be empty");
            default_worker_id()
        }
        Some(w) => w.clone(),
        None => default_worker_id(),
    };
    KinesisInputPlan {
        stream,
        aws,
        source: k.source.kind(),
        start,
        interval: k.poll_interval.0,
        limit: k.poll_limit.clamp(1, 10000) as i32,
        fan_out: k.enhanced_fan_out.clone(),
        leases,
        lease_duration: k.lease_duration.0.max(Duration::from_millis(300)),
        commit_interval: lanes.commit_interval,
        shard_sync_interval: k.shard_sync_interval.0.max(Duration::from_millis(300)),
        worker_id,
    }
}

impl ConfigFile {
    /// Phase 2: checks everything that the schema cannot and returns the plan, or every
    /// problem found. Relative paths are anchored at `base` (the config file's directory).
    pub fn resolve(&self, base: &Path) -> Result<Plan, Problems> {
        let mut p = Collect::default();
        let mut later = Collect::default();
        let pipe = &self.pipeline;
        let mut lanes = LaneSettings {
            commit_interval: pipe.commit_interval.0,
            in_flight: pipe.in_flight as usize,
            drain_timeout: pipe.drain_timeout.0,
            delivery_timeout: pipe.delivery_timeout.0,
            retry: RetryPolicy {
                budget: pipe.retry.budget,
                backoff: pipe.retry.backoff.0,
                max_backoff: pipe.retry.max_backoff.0,
            },
        };
        for (at, d) in [
            ("pipeline.commit_interval", lanes.commit_interval),
            ("pipeline.drain_timeout", lanes.drain_timeout),
            ("pipeline.delivery_timeout", lanes.delivery_timeout),
            ("pipeline.retry.backoff", lanes.retry.backoff),
            ("pipeline.retry.max_backoff", lanes.retry.max_backoff),
        ] {
            if d.is_zero() {
                later.push(at, "must be longer than zero");
            } else if d.as_millis() > i32::MAX as u128 {
                later.push(at, "must be shorter than 24 days");
            }
        }
        if lanes.in_flight == 0 {
            later.push("pipeline.in_flight", "must be at least 1");
        }
        if lanes.retry.max_backoff < lanes.retry.backoff {
            later.push(
                "pipeline.retry.max_backoff",
                "must not be shorter than pipeline.retry.backoff",
            );
        }
        lanes.in_flight = lanes.in_flight.max(1);

        let shared = self.kafka.as_ref();
        if let Some(k) = shared {
            check_brokers(&k.brokers, "kafka.brokers", &mut p);
        }

        let input = match &self.input {
            InputSpec::Kafka(k) => {
                let at = "input.kafka";
                let mut client =
                    self.client(k.brokers.as_ref(), &k.options, Role::Consumer, at, &mut p);
                if k.group.trim().is_empty() {
                    p.push(format!("{at}.group"), "the consumer group cannot be empty");
                }
                client.set("group.id", k.group.as_str());
                client.set("enable.auto.commit", "true");
                client.set(
                    "auto.commit.interval.ms",
                    lanes.commit_interval.as_millis().to_string(),
                );
                client.set("enable.auto.offset.store", "false");
                client.set("enable.partition.eof", "false");
                if client.get("statistics.interval.ms").is_none() {
                    // Consumer lag per lane and the broker connection state (for /readyz).
                    client.set("statistics.interval.ms", "5000");
                }
                if client.get("auto.offset.reset").is_none() {
                    // A new group reads what is there: nothing older is skipped silently.
                    client.set("auto.offset.reset", "earliest");
                }
                if k.topics.is_empty() {
                    p.push(format!("{at}.topics"), "name at least one topic");
                }
                let mut topics = Vec::new();
                for (i, t) in k.topics.iter().enumerate() {
                    let tat = format!("{at}.topics[{i}].name");
                    if let Some(why) = topic_problem(&t.name) {
                        p.push(&tat, why);
                    }
                    if k.topics[..i].iter().any(|o| o.name == t.name) {
                        p.push(&tat, format!("topic `{}` is listed twice", t.name));
                    }
                    topics.push((t.name.clone(), t.source.kind()));
                }
                InputPlan::Kafka(KafkaInputPlan {
                    client,
                    group: k.group.clone(),
                    topics,
                })
            }
            InputSpec::Kinesis(k) => {
                InputPlan::Kinesis(Box::new(kinesis_input(k, &lanes, base, &mut p, &mut later)))
            }
        };

        let output = match &self.output {
            OutputSpec::Kafka(k) => DestinationPlan::Kafka(self.producer(
                k.brokers.as_ref(),
                &k.topic,
                k.partitioning,
                &k.options,
                &lanes,
                "output.kafka",
                &mut p,
            )),
            OutputSpec::Kinesis(k) => kinesis_output(k, &lanes, "output.kinesis", &mut p),
            OutputSpec::File(f) => {
                DestinationPlan::File(file_target(f, Target::Stdout, base, "output.file", &mut p))
            }
        };
        let dead_letter = match &self.dead_letter {
            DeadLetterSpec::Kafka(k) => DestinationPlan::Kafka(self.producer(
                k.brokers.as_ref(),
                &k.topic,
                Partitioning::LaneHash,
                &k.options,
                &lanes,
                "dead_letter.kafka",
                &mut p,
            )),
            DeadLetterSpec::Kinesis(k) => kinesis_output(k, &lanes, "dead_letter.kinesis", &mut p),
            DeadLetterSpec::File(f) => DestinationPlan::File(file_target(
                f,
                Target::Stderr,
                base,
                "dead_letter.file",
                &mut p,
            )),
        };

        // Loops and mix-ups between the three ends.
        if let InputPlan::Kinesis(k) = &input {
            for (at, dest) in [
                ("output.kinesis.stream", &output),
                ("dead_letter.kinesis.stream", &dead_letter),
            ] {
                if let DestinationPlan::Kinesis(d) = dest {
                    let same_place = d.aws.endpoint == k.aws.endpoint
                        && (d.aws.region == k.aws.region
                            || d.aws.region.is_none()
                            || k.aws.region.is_none());
                    if same_place && d.stream == k.stream {
                        p.push(
                            at,
                            format!(
                                "`{}` is also the input stream: the pipeline would read its own writes",
                                d.stream
                            ),
                        );
                    }
                }
            }
        }
        let kafka_input = match &input {
            InputPlan::Kafka(k) => Some(k),
            InputPlan::Kinesis(_) => None,
        };
        for (at, dest) in [
            ("output.kafka.topic", &output),
            ("dead_letter.kafka.topic", &dead_letter),
        ] {
            if let (DestinationPlan::Kafka(d), Some(inp)) = (dest, kafka_input) {
                let same_cluster =
                    d.client.get("bootstrap.servers") == inp.client.get("bootstrap.servers");
                if same_cluster && inp.topics.iter().any(|(t, _)| *t == d.topic) {
                    p.push(
                        at,
                        format!(
                            "`{}` is also an input topic: the pipeline would read its own writes",
                            d.topic
                        ),
                    );
                }
            }
        }
        match (&output, &dead_letter) {
            (DestinationPlan::Kafka(o), DestinationPlan::Kafka(d))
                if o.topic == d.topic
                    && o.client.get("bootstrap.servers") == d.client.get("bootstrap.servers") =>
            {
                p.push(
                    "dead_letter.kafka.topic",
                    "events and dead letters would share one topic; name a separate dead-letter topic",
                );
            }
            (DestinationPlan::Kinesis(o), DestinationPlan::Kinesis(d))
                if o.stream == d.stream && o.aws == d.aws =>
            {
                p.push(
                    "dead_letter.kinesis.stream",
                    "events and dead letters would share one stream; name a separate dead-letter stream",
                );
            }
            (DestinationPlan::File(Target::File(o)), DestinationPlan::File(Target::File(d)))
                if o == d =>
            {
                p.push(
                    "dead_letter.file",
                    "events and dead letters would be written to the same file",
                );
            }
            _ => {}
        }

        p.0.append(&mut later.0);
        let mappings = self.mappings.as_ref().map(|m| base.join(m));
        if let Some(m) = &mappings {
            if !m.is_dir() {
                p.push("mappings", format!("{} is not a directory", m.display()));
            }
        }

        let r = &self.redaction;
        let args = crate::redaction::RedactionArgs {
            rules: r.rules.iter().map(|f| base.join(f)).collect(),
            no_builtin_redaction_rules: !r.builtin_rules,
            redaction_hash_key_env: r.hash_key_env.clone(),
            redaction_hash_key_file: r.hash_key_file.as_ref().map(|f| base.join(f)),
            keep_raw_dead_letters: r.keep_raw_dead_letters,
            no_redaction: !r.enabled,
        };
        if r.hash_key_env.is_some() && r.hash_key_file.is_some() {
            p.push("redaction", "set hash_key_env or hash_key_file, not both");
        }
        let (redactor, notices) = match args.build() {
            Ok(x) => x,
            Err(e) => {
                p.push("redaction", e.to_string());
                (None, Vec::new())
            }
        };

        let metrics = self.metrics.as_ref().map(|m| {
            let listen = m.listen.parse().unwrap_or_else(|_| {
                p.push(
                    "metrics.listen",
                    format!("`{}` is not `IP:PORT` (e.g. 0.0.0.0:9464)", m.listen),
                );
                std::net::SocketAddr::from(([0, 0, 0, 0], 0))
            });
            if !m.path.starts_with('/') || m.path.len() < 2 {
                p.push("metrics.path", "must start with `/` and name a path");
            } else if ["/healthz", "/readyz"].contains(&m.path.as_str()) {
                p.push(
                    "metrics.path",
                    format!("`{}` is taken by the probe", m.path),
                );
            }
            if m.stall_timeout.0.is_zero() {
                p.push("metrics.stall_timeout", "must be longer than zero");
            }
            MetricsPlan {
                listen,
                path: m.path.clone(),
                stall_timeout: m.stall_timeout.0,
            }
        });

        if p.0.is_empty() {
            Ok(Plan {
                input,
                output,
                dead_letter,
                lanes,
                mappings,
                redactor,
                keep_raw_dead_letters: r.keep_raw_dead_letters,
                notices,
                metrics,
            })
        } else {
            Err(Problems(p.0))
        }
    }

    /// A Kafka client's settings: brokers (own, else shared), shared options, own options.
    fn client(
        &self,
        brokers: Option<&Vec<String>>,
        own: &Options,
        role: Role,
        at: &str,
        p: &mut Collect,
    ) -> ClientSettings {
        let mut c = ClientSettings::default();
        let brokers = match (brokers, self.kafka.as_ref()) {
            (Some(b), _) => {
                check_brokers(b, &format!("{at}.brokers"), p);
                b.clone()
            }
            (None, Some(k)) => k.brokers.clone(),
            (None, None) => {
                p.push(
                    at,
                    "no brokers: write `brokers` here or a `kafka:` section with `brokers`",
                );
                Vec::new()
            }
        };
        let brokers: Vec<String> = brokers
            .iter()
            .enumerate()
            .map(|(i, b)| expand(b, &format!("{at}.brokers[{i}]"), p))
            .collect();
        c.set("bootstrap.servers", brokers.join(","));
        let owned = match role {
            Role::Consumer => CONSUMER_OWNED,
            Role::Producer => PRODUCER_OWNED,
        };
        let shared = self.kafka.as_ref().map(|k| &k.options);
        for (prefix, opts) in [
            ("kafka.options", shared),
            (&*format!("{at}.options"), Some(own)),
        ] {
            for (k, v) in opts.into_iter().flatten() {
                let kat = format!("{prefix}.{k}");
                if let Some((_, instead)) = owned.iter().find(|(o, _)| o == k) {
                    p.push(&kat, format!("set by auditnorm: {instead}"));
                    continue;
                }
                let value = match v {
                    OptionValue::Text(s) => expand(s, &kat, p),
                    other => other.to_string(),
                };
                if let Err(why) = librdkafka_accepts(k, &value) {
                    // librdkafka's message names the property; never echo a secret value.
                    p.push(&kat, why);
                    continue;
                }
                c.set(k, value);
            }
        }
        c
    }

    #[allow(clippy::too_many_arguments)]
    fn producer(
        &self,
        brokers: Option<&Vec<String>>,
        topic: &str,
        partitioning: Partitioning,
        options: &Options,
        lanes: &LaneSettings,
        at: &str,
        p: &mut Collect,
    ) -> KafkaTopicPlan {
        let mut client = self.client(brokers, options, Role::Producer, at, p);
        client.set("enable.idempotence", "true");
        client.set(
            "message.timeout.ms",
            lanes.delivery_timeout.as_millis().to_string(),
        );
        if let Some(why) = topic_problem(topic) {
            p.push(format!("{at}.topic"), why);
        }
        KafkaTopicPlan {
            client,
            topic: topic.to_string(),
            partitioning,
        }
    }
}

fn check_brokers(brokers: &[String], at: &str, p: &mut Collect) {
    if brokers.is_empty() {
        p.push(at, "name at least one broker (`host:port`)");
    }
    for (i, b) in brokers.iter().enumerate() {
        if b.starts_with("${") {
            continue;
        }
        let hostport = b.rsplit_once("://").map_or(b.as_str(), |(_, r)| r);
        let ok = hostport
            .rsplit_once(':')
            .is_some_and(|(h, port)| !h.is_empty() && port.parse::<u16>().is_ok());
        if !ok {
            p.push(format!("{at}[{i}]"), format!("`{b}` is not `host:port`"));
        }
    }
}

fn file_target(f: &str, dash: Target, base: &Path, at: &str, p: &mut Collect) -> Target {
    if f == "-" {
        return dash;
    }
    if f.is_empty() {
        p.push(at, "the file name cannot be empty");
    }
    let path = base.join(f);
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if !dir.is_dir() {
            p.push(at, format!("directory {} does not exist", dir.display()));
        }
    }
    Target::File(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = "
kafka:
  brokers: [127.0.0.1:9092]
input:
  kafka:
    group: g
    topics: [{name: in, source: cloudtrail}]
output:
  kafka: {topic: out}
dead_letter:
  kafka: {topic: dlq}
";

    #[test]
    fn minimal_config_resolves_with_defaults_and_forced_settings() {
        let plan = parse(MINIMAL).unwrap().resolve(Path::new(".")).unwrap();
        let InputPlan::Kafka(k) = &plan.input else {
            panic!("not a Kafka input")
        };
        assert_eq!(k.client.get("enable.auto.offset.store"), Some("false"));
        assert_eq!(k.client.get("group.id"), Some("g"));
        assert_eq!(k.client.get("auto.commit.interval.ms"), Some("5000"));
        assert_eq!(
            k.topics,
            vec![("in".to_string(), Some(SourceKind::CloudTrail))]
        );
        let DestinationPlan::Kafka(o) = &plan.output else {
            panic!("kafka output")
        };
        assert_eq!(o.client.get("enable.idempotence"), Some("true"));
        assert_eq!(o.client.get("message.timeout.ms"), Some("30000"));
        assert_eq!(o.partitioning, Partitioning::Auto);
        assert_eq!(plan.lanes.in_flight, 2000);
    }

    #[test]
    fn every_structural_problem_is_listed() {
        let text = "
kafka:
  brokerz: [a:1]
input:
  kafka:
    group: g
    topics: [{name: in, source: clodtrail}]
output:
  kafak: {topic: out}
dead_letter:
  file: dlq.ndjson
pipeline:
  commit_interval: 5 seconds
";
        let Problems(all) = parse(text).unwrap_err();
        let text = Problems(all.clone()).to_string();
        assert!(all.len() >= 4, "{text}");
        for needle in ["brokerz", "clodtrail", "kafak", "pipeline.commit_interval"] {
            assert!(text.contains(needle), "{needle} missing from:\n{text}");
        }
    }

    #[test]
    fn every_semantic_problem_is_listed() {
        let text = "
input:
  kafka:
    group: ''
    topics: [{name: 'bad topic', source: auto}, {name: in, source: auto}, {name: in, source: auto}]
    options: {enable.auto.offset.store: true, no.such.property: 1, sasl.password: '${AUDITNORM_TEST_UNSET_VAR}'}
output:
  kafka: {topic: in, brokers: [nohost]}
dead_letter:
  kafka: {topic: dlq}
pipeline: {in_flight: 0, drain_timeout: 0s}
mappings: /nonexistent/dir
";
        let Problems(all) = parse(text).unwrap().resolve(Path::new(".")).unwrap_err();
        let text = Problems(all).to_string();
        for needle in [
            "input.kafka.group",
            "input.kafka.topics[0].name",
            "listed twice",
            "enable.auto.offset.store",
            "no.such.property",
            "AUDITNORM_TEST_UNSET_VAR",
            "output.kafka.brokers[0]",
            "dead_letter.kafka: no brokers",
            "pipeline.in_flight",
            "pipeline.drain_timeout",
            "mappings",
        ] {
            assert!(text.contains(needle), "{needle} missing from:\n{text}");
        }
    }

    #[test]
    fn secrets_stay_out_of_debug_output() {
        let mut c = ClientSettings::default();
        c.set("sasl.password", "hunter2");
        assert!(!format!("{c:?}").contains("hunter2"));
    }

    #[test]
    fn durations_and_backoff() {
        assert_eq!(
            HumanDuration::parse("250ms"),
            Some(HumanDuration(Duration::from_millis(250)))
        );
        assert_eq!(
            HumanDuration::parse("2m"),
            Some(HumanDuration(Duration::from_secs(120)))
        );
        assert_eq!(HumanDuration::parse("2"), None);
        assert_eq!(HumanDuration::parse("s"), None);
        let r = RetryPolicy {
            budget: 3,
            backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(350),
        };
        assert_eq!(r.delay(1), Duration::from_millis(100));
        assert_eq!(r.delay(2), Duration::from_millis(200));
        assert_eq!(r.delay(3), Duration::from_millis(350));
        assert_eq!(r.delay(60), Duration::from_millis(350));
    }

    const KINESIS: &str = "
input:
  kinesis:
    stream: arn:aws:kinesis:eu-west-1:123456789012:stream/audit
    leases:
      dynamodb: {table: auditnorm-leases}
output:
  file: events.ndjson
dead_letter:
  file: dead.ndjson
";

    #[test]
    fn a_kinesis_stream_arn_gives_the_name_and_the_region() {
        let plan = parse(KINESIS).unwrap().resolve(Path::new(".")).unwrap();
        let InputPlan::Kinesis(k) = &plan.input else {
            panic!("not a Kinesis input")
        };
        assert_eq!(k.stream, "audit");
        assert_eq!(k.aws.region.as_deref(), Some("eu-west-1"));
        assert_eq!(k.start, StartPlan::TrimHorizon);
        assert_eq!(k.fan_out, None);
        match &k.leases {
            LeasePlan::Dynamo { table, aws } => {
                assert_eq!(table, "auditnorm-leases");
                assert_eq!(
                    aws.region.as_deref(),
                    Some("eu-west-1"),
                    "the stream's region"
                );
            }
            other => panic!("{other:?}"),
        }
        assert!(!k.worker_id.is_empty());
    }

    #[test]
    fn kinesis_settings_are_checked_together() {
        let text = KINESIS
            .replace(
                "    leases:",
                "    region: us-east-1\n    starting_position: at_timestamp\n    poll_limit: 20000\n    enhanced_fan_out: \"bad name\"\n    leases:",
            )
            .replace("auditnorm-leases", "x");
        let err = parse(&text)
            .unwrap()
            .resolve(Path::new("."))
            .unwrap_err()
            .to_string();
        for want in [
            "input.kinesis.region: `us-east-1` differs from the stream ARN's region `eu-west-1`",
            "input.kinesis.starting_timestamp: starting_position at_timestamp needs a starting_timestamp",
            "input.kinesis.poll_limit: must be between 1 and 10000",
            "input.kinesis.enhanced_fan_out",
            "input.kinesis.leases.dynamodb.table",
        ] {
            assert!(err.contains(want), "missing `{want}` in:\n{err}");
        }
    }

    #[test]
    fn at_timestamp_reads_an_rfc3339_time() {
        let text = KINESIS.replace(
            "    leases:",
            "    starting_position: at_timestamp\n    starting_timestamp: 2026-11-01T00:00:00Z\n    leases:",
        );
        let plan = parse(&text).unwrap().resolve(Path::new(".")).unwrap();
        let InputPlan::Kinesis(k) = &plan.input else {
            panic!("not a Kinesis input")
        };
        assert_eq!(k.start, StartPlan::AtTimestamp(1_793_491_200_000));
    }

    #[test]
    fn the_kinesis_example_is_valid() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/kinesis.yaml");
        let plan = load(&path).unwrap_or_else(|p| panic!("{p}"));
        let InputPlan::Kinesis(k) = &plan.input else {
            panic!("not a Kinesis input")
        };
        assert_eq!(k.stream, "audit-trail");
        assert!(matches!(plan.output, DestinationPlan::Kinesis(_)));
        assert!(matches!(plan.dead_letter, DestinationPlan::Kinesis(_)));
    }

    #[test]
    fn a_kinesis_output_cannot_be_the_input_stream() {
        let text = KINESIS.replace("  file: events.ndjson", "  kinesis: {stream: audit}");
        let err = parse(&text)
            .unwrap()
            .resolve(Path::new("."))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("output.kinesis.stream: `audit` is also the input stream"),
            "{err}"
        );
    }
}
