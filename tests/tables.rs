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

/// Every schema `auditnorm schema` writes is checked in as written, and nothing else is in
/// schemas/ (a schema the code no longer publishes is stale).
#[test]
fn checked_in_schemas_match_the_code() {
    let published = auditnorm::published_schemas();
    let mut drifted = Vec::new();
    for (path, text) in &published {
        let on_disk = std::fs::read_to_string(format!("schemas/{path}")).unwrap_or_default();
        if on_disk != *text {
            drifted.push(path.clone());
        }
    }
    assert!(
        drifted.is_empty(),
        "schemas drifted from the code: {drifted:?}; run `cargo run -- schema`"
    );
    fn walk(dir: &std::path::Path, out: &mut Vec<String>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(&p, out);
            } else {
                let rel = p.strip_prefix("schemas").unwrap();
                out.push(rel.to_string_lossy().replace('\\', "/"));
            }
        }
    }
    let mut on_disk = Vec::new();
    walk(std::path::Path::new("schemas"), &mut on_disk);
    let stale: Vec<&String> = on_disk
        .iter()
        .filter(|f| !published.iter().any(|(p, _)| p == *f))
        .collect();
    assert!(
        stale.is_empty(),
        "schemas/ holds files the code does not publish: {stale:?}"
    );
    for name in [
        "dead-letter.schema.json",
        "mapping-table.schema.json",
        "config.schema.json",
    ] {
        assert!(published.iter().any(|(p, _)| p == name), "{name}");
    }
}

/// The mapping-table schema accepts every shipped table (TOML read as JSON) and refuses a typo.
#[test]
fn mapping_table_schema_accepts_the_shipped_tables() {
    let schema: serde_json::Value =
        serde_json::from_str(&auditnorm::mapping::table::json_schema()).unwrap();
    let validator = jsonschema::validator_for(&schema).expect("schema compiles");
    let mut n = 0;
    for e in std::fs::read_dir("mappings").unwrap() {
        let p = e.unwrap().path();
        if p.extension().and_then(|x| x.to_str()) != Some("toml") {
            continue;
        }
        let t: toml::Value = toml::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
        let v = serde_json::to_value(&t).unwrap();
        let errors: Vec<String> = validator.iter_errors(&v).map(|e| e.to_string()).collect();
        assert!(errors.is_empty(), "{}: {errors:?}", p.display());
        n += 1;
        let mut bad = v.clone();
        bad["clases"] = serde_json::json!([]);
        assert!(!validator.is_valid(&bad), "{}: a typo passed", p.display());
    }
    assert!(n >= 4, "{n} tables");
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
