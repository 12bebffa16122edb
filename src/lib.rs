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
