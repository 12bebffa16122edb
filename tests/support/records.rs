//! CloudTrail records for the pipeline tests and benches: the fixture's data events as
//! templates, and a record made from one with the eventID asked for.
//!
//! Included with `#[path = "support/records.rs"] mod records;` from a file in tests/ (a
//! subdirectory, so that Cargo does not make it a test target of its own), or with the path
//! from the includer's directory (benches/support/mod.rs).
#![allow(dead_code)]

use std::path::Path;

/// CloudTrail data events from the fixtures, used as templates.
pub fn templates() -> Vec<String> {
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/cloudtrail/s3-lambda-data-events.ndjson"),
    )
    .expect("fixture");
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(str::to_string)
        .collect()
}

/// A CloudTrail record whose eventID (and so the event's metadata.uid) is `id`.
pub fn record(templates: &[String], n: usize, id: &str) -> String {
    let t = &templates[n % templates.len()];
    let key = "\"eventID\":\"";
    let start = t.find(key).expect("template has an eventID") + key.len();
    let end = start + t[start..].find('"').expect("closing quote");
    format!("{}{}{}", &t[..start], id, &t[end..])
}
