//! Dead letters: a record that could not become an OCSF event, with why and where it came
//! from, and its original bytes, so that nothing is lost and it can be replayed once fixed.

use crate::error::{ErrorCode, RecordError, Stage};
use crate::record::{Position, SourceKind};
use base64::Engine as _;
use schemars::JsonSchema;
use serde::Serialize;

pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// One dead letter, as written one per line to a dead-letter file (and its JSON Schema,
/// `schemas/dead-letter.schema.json`).
#[derive(Debug, Clone, Serialize, JsonSchema)]
#[schemars(title = "auditnorm dead letter")]
pub struct DeadLetter {
    /// Bounded error code, usable in alerts and dashboards.
    #[schemars(with = "String")]
    pub error_code: ErrorCode,
    /// Where in the flow it failed: decode, envelope, map, validate, encode.
    #[schemars(with = "String")]
    pub stage: Stage,
    /// Human-readable reason, naming fields and paths.
    pub detail: String,
    /// Where the record came from.
    #[schemars(with = "serde_json::Value")]
    pub position: Position,
    /// The source kind, when it was known.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<String>")]
    pub source: Option<SourceKind>,
    /// The original bytes as UTF-8 text (absent when they are not UTF-8).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub original: Option<String>,
    /// The original bytes, base64, when they are not UTF-8 text.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub original_base64: Option<String>,
    /// True when secrets were removed from `original` (see the redaction rules).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub redacted: bool,
    pub auditnorm_version: &'static str,
}

impl DeadLetter {
    pub fn new(
        error: RecordError,
        position: Position,
        source: Option<SourceKind>,
        original: &[u8],
    ) -> DeadLetter {
        let (original, original_base64) = match std::str::from_utf8(original) {
            Ok(s) => (Some(s.to_string()), None),
            Err(_) => (
                None,
                Some(base64::engine::general_purpose::STANDARD.encode(original)),
            ),
        };
        DeadLetter {
            error_code: error.code,
            stage: error.stage,
            detail: error.detail,
            position,
            source,
            original,
            original_base64,
            redacted: false,
            auditnorm_version: VERSION,
        }
    }

    /// The original bytes, as received.
    pub fn original_bytes(&self) -> Vec<u8> {
        match (&self.original, &self.original_base64) {
            (Some(s), _) => s.as_bytes().to_vec(),
            (None, Some(b)) => base64::engine::general_purpose::STANDARD
                .decode(b)
                .unwrap_or_default(),
            (None, None) => Vec::new(),
        }
    }

    /// One JSON line (no newline).
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_else(|e| {
            // Serializing plain strings and enums cannot fail; if it ever does, say so in-band.
            format!(r#"{{"error_code":"encode","detail":{:?}}}"#, e.to_string()).into_bytes()
        })
    }

    pub fn code(&self) -> ErrorCode {
        self.error_code
    }
}

/// The JSON Schema of a dead letter, as published in `schemas/`.
pub fn json_schema() -> String {
    let schema = schemars::schema_for!(DeadLetter);
    serde_json::to_string_pretty(&schema).unwrap_or_default() + "\n"
}
