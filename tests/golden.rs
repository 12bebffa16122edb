//! Every fixture replayed: events match the reviewed golden files, every event is valid OCSF
//! 1.8.0 against the exported schemas, broken fixtures (and only they) give dead letters, and
//! dead letters match their published schema.

mod common;

use std::path::Path;

fn check_source(source: &str) {
    let dl_schema: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string("schemas/dead-letter.schema.json").expect("dead-letter schema"),
    )
    .expect("schema JSON");
    let dl_validator = jsonschema::validator_for(&dl_schema).expect("schema compiles");
    let mut failures = Vec::new();
    let mut events_total = 0;
    for path in common::fixture_files(source) {
        let c = common::replay_file(&path);
        let rel = path
            .strip_prefix(format!("tests/fixtures/{source}"))
            .expect("under fixtures");
        let broken = rel.starts_with("broken");
        events_total += c.events.len();
        for (i, (ev, rec)) in c.events.iter().zip(&c.records).enumerate() {
            for p in common::ocsf_problems(ev) {
                failures.push(format!("{} event {i}: {p}", path.display()));
            }
            let rec: serde_json::Value = serde_json::from_str(rec).expect("record JSON");
            let lost = common::lost_values(&rec, ev);
            if !lost.is_empty() {
                failures.push(format!(
                    "{} event {i}: source values lost: {lost:?}",
                    path.display()
                ));
            }
        }
        let empty = std::fs::metadata(&path)
            .map(|m| m.len() == 0)
            .unwrap_or(false);
        if broken && !empty && c.dead.is_empty() && c.skipped.is_empty() {
            failures.push(format!(
                "{}: broken fixture gave no dead letter",
                path.display()
            ));
        }
        if !broken && !c.dead.is_empty() {
            failures.push(format!(
                "{}: {} unexpected dead letters, first: {}",
                path.display(),
                c.dead.len(),
                c.dead[0].detail
            ));
        }
        let mut dl_text = String::new();
        for d in &c.dead {
            let v: serde_json::Value = serde_json::from_slice(&d.to_json()).expect("DL JSON");
            if let Err(e) = dl_validator.validate(&v) {
                failures.push(format!(
                    "{}: dead letter violates its schema: {e}",
                    path.display()
                ));
            }
            dl_text.push_str(&String::from_utf8(d.to_json()).expect("utf8"));
            dl_text.push('\n');
        }
        let mut ev_text = String::new();
        for e in &c.events {
            ev_text.push_str(e);
            ev_text.push('\n');
        }
        let golden = Path::new("tests/golden").join(source).join(rel);
        let with = |ext: &str| {
            let mut p = golden.clone().into_os_string();
            p.push(ext);
            std::path::PathBuf::from(p)
        };
        for (file, text) in [
            (with(".ocsf.ndjson"), ev_text),
            (with(".dlq.ndjson"), dl_text),
        ] {
            if let Err(e) = common::golden(&file, &text) {
                failures.push(e);
            }
        }
    }
    assert!(events_total > 0, "{source}: no events at all");
    assert!(failures.is_empty(), "{source}:\n{}", failures.join("\n"));
}

#[test]
fn cloudtrail_fixtures_match_golden_and_validate() {
    check_source("cloudtrail");
}

#[test]
fn gcp_fixtures_match_golden_and_validate() {
    check_source("gcp");
}

#[test]
fn azure_fixtures_match_golden_and_validate() {
    check_source("azure");
}

#[test]
fn k8s_fixtures_match_golden_and_validate() {
    check_source("k8s");
}
