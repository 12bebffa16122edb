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
        let (original, original_base64) = stored(original);
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

    /// Replaces the original bytes with their redacted form (`Redactor::redact_bytes`), stored
    /// as `new` stores bytes: text when they are UTF-8, base64 when not. Bytes that are not
    /// UTF-8 thus survive redaction exactly, instead of becoming lossy text.
    pub fn set_redacted_original(&mut self, redacted: &[u8]) {
        (self.original, self.original_base64) = stored(redacted);
        self.redacted = true;
    }

    /// The original bytes, as received (redacted when `redacted` is set).
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

/// `(original, original_base64)` for `bytes`.
fn stored(bytes: &[u8]) -> (Option<String>, Option<String>) {
    match std::str::from_utf8(bytes) {
        Ok(s) => (Some(s.to_string()), None),
        Err(_) => (
            None,
            Some(base64::engine::general_purpose::STANDARD.encode(bytes)),
        ),
    }
}

/// The JSON Schema of a dead letter, as published in `schemas/`.
pub fn json_schema() -> String {
    let schema = schemars::schema_for!(DeadLetter);
    serde_json::to_string_pretty(&schema).unwrap_or_default() + "\n"
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorCode;
    use crate::redact::{RedactionCounts, Redactor};

    fn dead_letter(bytes: &[u8]) -> DeadLetter {
        let pos = Position::File {
            path: "in.bin".into(),
            line: Some(1),
            offset: 0,
            index: None,
        };
        let err = RecordError::new(ErrorCode::InvalidJson, Stage::Decode, "not JSON");
        DeadLetter::new(err, pos, None, bytes)
    }

    #[test]
    fn redacted_original_keeps_bytes_that_are_not_utf8() {
        let raw: &[u8] = b"\xff\xfe{\"password\":\"pw-1234567\",\"n\":\"caf\xe9\"";
        let mut dl = dead_letter(raw);
        assert!(dl.original.is_none() && dl.original_base64.is_some());
        let cleaned = Redactor::builtin().redact_bytes(raw, &mut RedactionCounts::default());
        assert_ne!(cleaned, raw);
        dl.set_redacted_original(&cleaned);
        assert!(dl.redacted);
        assert_eq!(dl.original, None);
        assert_eq!(
            dl.original_bytes(),
            b"\xff\xfe{\"password\":\"[REDACTED:password]\",\"n\":\"caf\xe9\""
        );

        // UTF-8 stays readable text.
        let mut dl = dead_letter(b"password=pw-1234567");
        dl.set_redacted_original(b"password=[REDACTED:password]");
        assert_eq!(dl.original.as_deref(), Some("password=[REDACTED:password]"));
        assert_eq!(dl.original_base64, None);
    }
}
