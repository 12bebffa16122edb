//! The bounded vocabulary of failures: error codes and pipeline stages used in dead letters,
//! metrics labels and log lines. A code never carries record content; the human detail does.

use serde::Serialize;

/// Where in the flow of a record a failure happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    /// Bytes to JSON: decompression, UTF-8, JSON syntax.
    Decode,
    /// Carrier unwrapping: which envelope, which source, where the records are.
    Envelope,
    /// Running the source's mapping table.
    Map,
    /// Checking the produced event against the OCSF schema.
    Validate,
    /// Serializing the event.
    Encode,
}

impl Stage {
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Decode => "decode",
            Stage::Envelope => "envelope",
            Stage::Map => "map",
            Stage::Validate => "validate",
            Stage::Encode => "encode",
        }
    }
}

/// Bounded error codes. Adding one is an API change for dashboards: keep the set small.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The bytes are not JSON (syntax error, not UTF-8, binary).
    InvalidJson,
    /// A gzip stream ended early or is corrupt.
    TruncatedGzip,
    /// JSON, but not a shape any carrier or source knows.
    UnknownSource,
    /// A known carrier or source whose record has the wrong shape (missing or mistyped field).
    WrongShape,
    /// A field could not be converted (a timestamp that is not one, a number that is not one).
    InvalidField,
    /// A carrier's embedded payload could not be decoded (base64, nested JSON string).
    BadPayload,
    /// The produced event does not satisfy the OCSF schema.
    SchemaViolation,
    /// A Kinesis record that starts with the KPL aggregate magic but cannot be split into its
    /// user records (MD5 digest, protobuf body, partition key table): the whole record is lost.
    KplInvalid,
    /// The OCSF event is larger than the output accepts (Kafka `message.max.bytes`, a Kinesis
    /// record's 1 MiB): it is kept in the dead letter instead of wedging the lane.
    EventTooLarge,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidJson => "invalid_json",
            ErrorCode::TruncatedGzip => "truncated_gzip",
            ErrorCode::UnknownSource => "unknown_source",
            ErrorCode::WrongShape => "wrong_shape",
            ErrorCode::InvalidField => "invalid_field",
            ErrorCode::BadPayload => "bad_payload",
            ErrorCode::SchemaViolation => "schema_violation",
            ErrorCode::KplInvalid => "kpl_invalid",
            ErrorCode::EventTooLarge => "event_too_large",
        }
    }
}

/// A record-level failure: the record goes to the dead-letter queue with this.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordError {
    pub code: ErrorCode,
    pub stage: Stage,
    /// Human-readable reason; may name fields and paths, never secret values.
    pub detail: String,
}

impl RecordError {
    pub fn new(code: ErrorCode, stage: Stage, detail: impl Into<String>) -> Self {
        RecordError {
            code,
            stage,
            detail: detail.into(),
        }
    }
}

impl std::fmt::Display for RecordError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} at {}: {}",
            self.code.as_str(),
            self.stage.as_str(),
            self.detail
        )
    }
}
