//! One Azure activity, two record shapes, one OCSF event.
//!
//! Every pair in tests/fixtures/azure/pairs/ is the same activity as the diagnostic-settings /
//! Event Hub resource-log record (`NN-x.records.json`) and as the REST API / portal event
//! (`NN-x.rest.json`). Both are replayed through the library with source detection, and must
//! give equal events once the fields that only one shape can fill are set aside.

mod common;

use serde_json::Value;
use std::path::{Path, PathBuf};

/// Fields that one shape carries and the other cannot, so they cannot be equal:
/// - `unmapped`: the source fields left over keep each shape's own names, nesting
///   (`identity.claims` vs `claims`, `properties.eventProperties` vs `properties`) and wording
///   (`resultType: Success` vs `status.value: Succeeded`, `level: Information` vs
///   `Informational`, upper-case vs original-case resource ids).
/// - `metadata.uid`: the REST event's `eventDataId`; the resource-log schema has no event id,
///   so the table derives one from correlationId, resourceId, operationName, resultType and
///   time (see mappings/azure_activity.toml).
/// - `metadata.logged_time` / `metadata.logged_time_dt`: the REST `submissionTimestamp`, which
///   the resource-log schema does not carry.
/// - `http_request`: the REST `httpRequest` (method, client request id); the resource-log
///   schema keeps only the caller's IP address (`callerIpAddress`, mapped in both).
/// - `duration`: the resource-log `durationMs`, which the REST shape does not carry.
const SHAPE_SPECIFIC: &[(&str, Shape)] = &[
    ("unmapped", Shape::Both),
    ("metadata.uid", Shape::Both),
    ("metadata.logged_time", Shape::Rest),
    ("metadata.logged_time_dt", Shape::Rest),
    ("http_request", Shape::Rest),
    ("duration", Shape::Records),
];

#[derive(Clone, Copy, PartialEq, Debug)]
enum Shape {
    Both,
    Records,
    Rest,
}

/// Removes `path` (dot-separated) from `v`; returns whether it was there.
fn take(v: &mut Value, path: &str) -> bool {
    let (parent, last) = match path.rsplit_once('.') {
        Some((p, l)) => (Some(p), l),
        None => (None, path),
    };
    let mut cur = v;
    if let Some(p) = parent {
        for seg in p.split('.') {
            match cur.get_mut(seg) {
                Some(x) => cur = x,
                None => return false,
            }
        }
    }
    cur.as_object_mut().and_then(|o| o.remove(last)).is_some()
}

fn one_event(path: &Path) -> Value {
    let c = common::replay_file(path);
    assert!(
        c.dead.is_empty(),
        "{}: dead letter: {}",
        path.display(),
        c.dead[0].detail
    );
    assert_eq!(c.events.len(), 1, "{}: expected one event", path.display());
    let ev: Value = serde_json::from_str(&c.events[0]).expect("event JSON");
    let problems = common::ocsf_problems(&c.events[0]);
    assert!(problems.is_empty(), "{}: {problems:?}", path.display());
    ev
}

/// A readable account of where two events differ.
fn diff(a: &Value, b: &Value, at: &str, out: &mut Vec<String>) {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let mut keys: Vec<&String> = x.keys().chain(y.keys()).collect();
            keys.sort();
            keys.dedup();
            for k in keys {
                let p = if at.is_empty() {
                    k.clone()
                } else {
                    format!("{at}.{k}")
                };
                match (x.get(k), y.get(k)) {
                    (Some(l), Some(r)) => diff(l, r, &p, out),
                    (l, r) => out.push(format!("{p}: records {l:?} / rest {r:?}")),
                }
            }
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => {
            for (i, (l, r)) in x.iter().zip(y).enumerate() {
                diff(l, r, &format!("{at}.{i}"), out);
            }
        }
        _ if a != b => out.push(format!("{at}: records {a} / rest {b}")),
        _ => {}
    }
}

#[test]
fn both_azure_shapes_of_an_activity_give_the_same_event() {
    let dir = PathBuf::from("tests/fixtures/azure/pairs");
    let mut records: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("pairs dir")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.to_string_lossy().ends_with(".records.json"))
        .collect();
    records.sort();
    let mut compared = 0;
    let mut failures = Vec::new();
    for rec_path in &records {
        let name = rec_path.to_string_lossy();
        let rest_path = PathBuf::from(name.replace(".records.json", ".rest.json"));
        assert!(rest_path.exists(), "{} has no .rest.json twin", name);
        let mut a = one_event(rec_path);
        let mut b = one_event(&rest_path);
        for (field, shape) in SHAPE_SPECIFIC {
            let in_a = take(&mut a, field);
            let in_b = take(&mut b, field);
            // A field set aside as one shape's must not appear in the other: that would mean
            // it can be mapped from both and belongs in the comparison.
            match shape {
                Shape::Records => {
                    assert!(!in_b, "{name}: `{field}` came from the REST shape too")
                }
                Shape::Rest => {
                    assert!(!in_a, "{name}: `{field}` came from the records shape too")
                }
                Shape::Both => {}
            }
        }
        let mut d = Vec::new();
        diff(&a, &b, "", &mut d);
        if !d.is_empty() {
            failures.push(format!("{name}:\n  {}", d.join("\n  ")));
        }
        compared += 1;
    }
    assert!(
        compared >= 6,
        "only {compared} pairs compared under {}",
        dir.display()
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn both_shapes_have_an_event_id_and_they_differ() {
    // metadata.uid is the de-duplication key: present in both shapes, and the derived one of
    // the resource-log shape must not collide with the REST eventDataId.
    let dir = Path::new("tests/fixtures/azure/pairs");
    for name in ["01-vm-write-user", "08-vm-start-begin-ipv6-user"] {
        let a = one_event(&dir.join(format!("{name}.records.json")));
        let b = one_event(&dir.join(format!("{name}.rest.json")));
        let (ua, ub) = (&a["metadata"]["uid"], &b["metadata"]["uid"]);
        assert!(ua.is_string() && ub.is_string(), "{name}: {ua} / {ub}");
        assert_ne!(ua, ub, "{name}");
        assert_eq!(
            a["metadata"]["correlation_uid"], b["metadata"]["correlation_uid"],
            "{name}"
        );
    }
}
