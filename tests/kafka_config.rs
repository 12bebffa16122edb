//! The `run` configuration: the checked-in JSON Schema matches the code, the shipped example
//! is valid, and `auditnorm validate` lists every problem of a broken file.

use std::path::Path;
use std::process::Command;

#[test]
fn checked_in_config_schema_matches_the_code() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas/config.schema.json");
    let on_disk = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        on_disk == auditnorm::config::json_schema(),
        "schemas/config.schema.json is out of date: run `cargo run -- schema`"
    );
}

/// `auditnorm validate --config <path>`: its exit code and standard error.
fn validate(path: &Path) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_auditnorm"))
        .args(["validate", "--config"])
        .arg(path)
        .output()
        .expect("run auditnorm validate");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn the_example_config_is_valid() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/auditnorm.yaml");
    let plan = auditnorm::config::load(&path).unwrap_or_else(|p| panic!("{p}"));
    let auditnorm::config::InputPlan::Kafka(k) = &plan.input else {
        panic!("not a Kafka input")
    };
    assert_eq!(k.topics.len(), 2);
    assert_eq!(k.client.get("enable.auto.offset.store"), Some("false"));
    let (code, err) = validate(&path);
    assert_eq!(code, Some(0), "{err}");
}

#[test]
fn validate_lists_every_problem_and_fails() {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("kafka-config");
    std::fs::create_dir_all(&dir).expect("dir");
    let path = dir.join("broken.yaml");
    let cases: [(&str, &[&str]); 2] = [
        (
            "input:\n  kafka:\n    group: g\n    topics: [{name: in, source: cloudtral}]\n    options: {enable.auto.commit: false}\noutput:\n  kafka: {topic: out, partitoning: auto}\ndead_letter:\n  file: dlq.ndjson\npipeline: {in_flight: -1}\n",
            &[
                "cloudtral",
                "partitoning",
                "pipeline.in_flight",
                "problem(s) found",
            ],
        ),
        // Structure fine, meaning wrong: every semantic problem, and the mapping tables checked.
        (
            "input:\n  kafka:\n    group: g\n    topics: [{name: in, source: auto}]\n    options: {enable.auto.commit: false}\noutput:\n  kafka: {topic: in}\ndead_letter:\n  kafka: {topic: dlq}\nmappings: no-such-dir\n",
            &[
                "input.kafka: no brokers",
                "enable.auto.commit",
                "dead_letter.kafka: no brokers",
                "mappings:",
                "ok: mappings/cloudtrail.toml",
            ],
        ),
    ];
    for (yaml, needles) in cases {
        std::fs::write(&path, yaml).expect("write");
        let (code, err) = validate(&path);
        assert_eq!(code, Some(2), "{err}");
        for needle in needles {
            assert!(err.contains(needle), "{needle} missing from:\n{err}");
        }
    }
}
