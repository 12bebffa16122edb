//! auditnorm turns cloud audit logs (AWS CloudTrail, GCP Cloud Audit Logs, Azure Activity Log,
//! Kubernetes audit) into OCSF 1.8.0 events, and every record it cannot map into a dead letter.
//!
//! # Layout: which module owns what
//! - [`record`]: source kinds and positions (where a record came from).
//! - [`source`]: inputs; [`source::file`] frames archived files into units.
//! - [`normalize`]: one unit in, events and dead letters out. Calls, in order:
//!   - [`envelope`]: carrier formats (`{"Records":[..]}`, EventBridge, ...);
//!   - [`mapping`]: tables from `mappings/` compiled into plans and run by the engine;
//!   - [`ocsf`]: class facts and the schema validator;
//!   - [`event`]: the event tree and its encoding.
//! - [`redact`]: secret redaction rules and matching; [`redaction`]: its settings.
//! - [`dlq`]: the dead-letter record. [`error`]: bounded error codes and stages.
//! - [`sink`]: outputs. [`replay`]: the `replay` command's lane loop.
//! - [`json`]: the tape view and JSON writer shared by all of the above.
//! - [`telemetry`]: metric and log-event names, `/metrics` `/healthz` `/readyz`, log setup.

pub mod config;
pub mod dlq;
pub mod envelope;
pub mod error;
pub mod event;
pub mod json;
pub mod kinesis;
pub mod mapping;
pub mod normalize;
pub mod ocsf;
pub mod pipeline;
pub mod record;
pub mod redact;
pub mod redaction;
pub mod replay;
pub mod sink;
pub mod source;
pub mod telemetry;

/// Every JSON Schema auditnorm publishes, as `(path under schemas/, text)`: the run config, the
/// mapping-table format, the dead letter, and the exported OCSF classes events are checked
/// against (written from the copies embedded in the binary). `auditnorm schema` writes them; a
/// test fails when a checked-in file differs.
pub fn published_schemas() -> Vec<(String, String)> {
    let mut v = vec![
        ("config.schema.json".to_string(), config::json_schema()),
        (
            "mapping-table.schema.json".to_string(),
            mapping::table::json_schema(),
        ),
        ("dead-letter.schema.json".to_string(), dlq::json_schema()),
    ];
    for c in ocsf::CLASSES {
        v.push((
            format!("ocsf/{}/{}.json", ocsf::OCSF_VERSION, c.name),
            c.schema_json.to_string(),
        ));
    }
    v
}
