//! Mapping tables: a bad table is a startup error naming the file, the line and the reason;
//! the built-in tables compile; checked-in schemas match the code.

mod common;

use auditnorm::mapping::plan::compile;
use auditnorm::record::SourceKind;

const HEAD: &str = r#"source = "cloudtrail"
ocsf_version = "1.8.0"
profiles = ["cloud", "datetime"]
[detect]
field = "eventName"
exists = true
"#;

fn err(body: &str) -> String {
    let text = format!("{HEAD}{body}");
    match compile(SourceKind::CloudTrail, "t.toml", &text) {
        Ok(_) => panic!("table compiled but should not:\n{text}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn unknown_ocsf_attribute_names_file_line_and_segment() {
    let e = err(r#"[[class]]
name = "api_activity"
[[class.activity]]
id = 99
[[field]]
to = "actor.user.nmae"
from = "x"
"#);
    assert!(e.starts_with("t.toml:12:"), "{e}");
    assert!(e.contains("`nmae` is not an attribute"), "{e}");
}

#[test]
fn unknown_class_transform_and_lookup_are_errors() {
    let e = err("[[class]]\nname = \"api_activty\"\n[[class.activity]]\nid = 99\n");
    assert!(
        e.contains("t.toml:8:") && e.contains("unknown OCSF class"),
        "{e}"
    );
    let e = err(
        "[[class]]\nname = \"api_activity\"\n[[class.activity]]\nid = 99\n[[field]]\nto = \"time\"\nfrom = \"t\"\ntransform = \"epoch\"\n",
    );
    assert!(e.contains("unknown transform `epoch`"), "{e}");
    let e = err(
        "[[class]]\nname = \"api_activity\"\n[[class.activity]]\nid = 99\n[[field]]\nto = \"status_id\"\nfrom = \"t\"\nlookup = \"nope\"\n",
    );
    assert!(e.contains("no lookup table named `nope`"), "{e}");
}

#[test]
fn conditions_need_exactly_one_test_and_classes_a_fallback_activity() {
    let e = err(
        "[[class]]\nname = \"api_activity\"\nwhen = { field = \"a\", eq = \"x\", exists = true }\n[[class.activity]]\nid = 99\n",
    );
    assert!(e.contains("exactly one of"), "{e}");
    let e = err(
        "[[class]]\nname = \"api_activity\"\n[[class.activity]]\nid = 1\nwhen = { field = \"a\", eq = \"x\" }\n",
    );
    assert!(e.contains("last activity rule without `when`"), "{e}");
    let e = err("[[class]]\nname = \"api_activity\"\n[[class.activity]]\nid = 7\n");
    assert!(e.contains("activity id 7 does not exist"), "{e}");
}

#[test]
fn syntax_errors_and_unknown_keys_carry_a_line() {
    let e = err("[[class]]\nname = \"api_activity\"\nwhne = 1\n");
    assert!(e.starts_with("t.toml:"), "{e}");
    assert!(e.contains("unknown field `whne`"), "{e}");
    let text = format!("{HEAD}[[class]]\nname = \"api_activity\"\n[[class.activity]]\nid = 99\n");
    let e = compile(SourceKind::GcpAudit, "t.toml", &text)
        .unwrap_err()
        .to_string();
    assert!(e.contains("loaded as `gcp_audit`"), "{e}");
}

#[test]
fn builtin_tables_compile() {
    let m = common::mappings();
    assert!(m.plan(SourceKind::CloudTrail).is_some());
}

#[test]
fn dead_letter_schema_matches_the_code() {
    let checked_in = std::fs::read_to_string("schemas/dead-letter.schema.json").unwrap();
    assert_eq!(
        checked_in,
        auditnorm::dlq::json_schema(),
        "schemas/dead-letter.schema.json drifted; run `cargo run -- schema`"
    );
}

#[test]
fn exported_ocsf_classes_match_the_class_registry() {
    let script = std::fs::read_to_string("scripts/export-ocsf-schemas.py").unwrap();
    for c in auditnorm::ocsf::CLASSES {
        assert!(
            script.contains(&format!("\"{}\"", c.name)),
            "{} not exported",
            c.name
        );
        let v: serde_json::Value = serde_json::from_str(c.schema_json).unwrap();
        assert_eq!(v["properties"]["class_uid"]["const"], c.uid, "{}", c.name);
    }
}

#[test]
fn retention_check_reports_a_dropped_value() {
    let src = serde_json::json!({"a": "kept-value", "b": {"c": "dropped-value"}, "d": "abc"});
    let ev = r#"{"x":"kept-value","y":true}"#;
    assert_eq!(
        common::lost_values(&src, ev),
        vec!["dropped-value".to_string()]
    );
}

#[test]
fn ocsf_check_reports_schema_and_type_uid_problems() {
    let bad = r#"{"class_uid":6003,"category_uid":6,"activity_id":1,"type_uid":600302,"time":1,"severity_id":1,"metadata":{"version":"1.8.0","product":{"name":"x"}}}"#;
    let problems = common::ocsf_problems(bad);
    assert!(
        problems.iter().any(|p| p.contains("type_uid")),
        "{problems:?}"
    );
    assert!(problems.iter().any(|p| p.contains("actor")), "{problems:?}");
}
