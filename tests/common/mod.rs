//! Shared test harness: replay fixture files through the library, collect what comes out, and
//! check it (OCSF schema validity, golden files, value retention).
#![allow(dead_code)]

use auditnorm::dlq::DeadLetter;
use auditnorm::error::RecordError;
use auditnorm::mapping::Mappings;
use auditnorm::normalize::{Emit, EventInfo, Normalizer};
use auditnorm::record::Position;
use auditnorm::source::file::{self, InputFile, UnitSink};
use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

#[derive(Default)]
pub struct Collected {
    pub events: Vec<String>,
    /// The source record of each event, as JSON.
    pub records: Vec<String>,
    pub dead: Vec<DeadLetter>,
    pub skipped: Vec<String>,
}

impl Emit for Collected {
    fn event(&mut self, json: &[u8], info: EventInfo<'_>) {
        self.events
            .push(String::from_utf8(json.to_vec()).expect("events are UTF-8"));
        let rec = auditnorm::normalize::original_of(info.record);
        self.records
            .push(String::from_utf8(rec).expect("records are UTF-8"));
    }
    fn dead_letter(&mut self, dl: DeadLetter) {
        self.dead.push(dl);
    }
    fn skipped(&mut self, position: &Position, reason: &str) {
        self.skipped.push(format!("{position}: {reason}"));
    }
}

struct Units<'a> {
    n: &'a mut Normalizer,
    c: &'a mut Collected,
}

impl UnitSink for Units<'_> {
    fn unit(&mut self, bytes: &[u8], pos: Position) {
        self.n.normalize(bytes, &pos, self.c);
    }
    fn broken(&mut self, error: RecordError, bytes: &[u8], pos: Position) {
        self.n
            .dead_letter(DeadLetter::new(error, pos, None, bytes), self.c);
    }
}

pub fn mappings() -> Arc<Mappings> {
    static M: OnceLock<Arc<Mappings>> = OnceLock::new();
    M.get_or_init(|| Arc::new(Mappings::load(None).expect("built-in tables compile")))
        .clone()
}

pub fn replay_file(path: &Path) -> Collected {
    let mut n = Normalizer::new(mappings(), None);
    let mut c = Collected::default();
    file::read(
        &InputFile::Path(path.to_path_buf()),
        &mut Units {
            n: &mut n,
            c: &mut c,
        },
    )
    .expect("fixture readable");
    c
}

/// Every fixture input of a source, in sorted order, without the README.
pub fn fixture_files(source: &str) -> Vec<PathBuf> {
    let root = format!("tests/fixtures/{source}");
    let files = file::expand(std::slice::from_ref(&root)).expect("fixture dir exists");
    let out: Vec<PathBuf> = files
        .into_iter()
        .filter_map(|f| match f {
            InputFile::Path(p) => Some(p),
            InputFile::Stdin => None,
        })
        .filter(|p| p.extension().is_none_or(|e| e != "md"))
        .collect();
    assert!(!out.is_empty(), "no fixtures under {root}");
    out
}

fn validators() -> &'static HashMap<i64, jsonschema::Validator> {
    static V: OnceLock<HashMap<i64, jsonschema::Validator>> = OnceLock::new();
    V.get_or_init(|| {
        let mut m = HashMap::new();
        for c in auditnorm::ocsf::CLASSES {
            let schema: serde_json::Value =
                serde_json::from_str(c.schema_json).expect("schema JSON");
            m.insert(
                c.uid,
                jsonschema::validator_for(&schema).expect("schema compiles"),
            );
        }
        m
    })
}

/// Validates one event against the exported OCSF schema of its class, plus the identities
/// JSON Schema cannot express. Returns the problems found.
pub fn ocsf_problems(event: &str) -> Vec<String> {
    let v: serde_json::Value = match serde_json::from_str(event) {
        Ok(v) => v,
        Err(e) => return vec![format!("not JSON: {e}")],
    };
    let class = v["class_uid"].as_i64().unwrap_or(-1);
    let activity = v["activity_id"].as_i64().unwrap_or(-1);
    let mut problems = Vec::new();
    match validators().get(&class) {
        None => problems.push(format!("unknown class_uid {class}")),
        Some(val) => {
            for e in val.iter_errors(&v) {
                problems.push(format!("{} at {}", e, e.instance_path));
            }
        }
    }
    if v["type_uid"].as_i64() != Some(class * 100 + activity) {
        problems.push(format!(
            "type_uid {} != class_uid*100+activity_id",
            v["type_uid"]
        ));
    }
    if v["category_uid"].as_i64() != Some(class / 1000) {
        problems.push("category_uid != class_uid/1000".into());
    }
    if v["metadata"]["version"] != "1.8.0" {
        problems.push("metadata.version is not 1.8.0".into());
    }
    problems
}

fn strings_of(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::String(s) => out.push(s.clone()),
        serde_json::Value::Array(a) => a.iter().for_each(|x| strings_of(x, out)),
        serde_json::Value::Object(o) => o.values().for_each(|x| strings_of(x, out)),
        _ => {}
    }
}

fn scalars_of(v: &serde_json::Value, out: &mut BTreeSet<String>) {
    match v {
        serde_json::Value::String(s) => {
            out.insert(s.clone());
        }
        serde_json::Value::Array(a) => a.iter().for_each(|x| scalars_of(x, out)),
        serde_json::Value::Object(o) => o.values().for_each(|x| scalars_of(x, out)),
        serde_json::Value::Null => {}
        other => {
            out.insert(other.to_string());
        }
    }
}

/// Source string values of 4+ characters that appear nowhere in the event. A string that
/// became a boolean or number of the same text counts as kept (lossless conversion), and so
/// does one the built-in redaction rules remove from the source record (a secret).
pub fn lost_values(source: &serde_json::Value, event: &str) -> Vec<String> {
    let ev: serde_json::Value = serde_json::from_str(event).expect("event JSON");
    let mut have = BTreeSet::new();
    scalars_of(&ev, &mut have);
    let mut redacted = source.clone();
    auditnorm::redact::Redactor::builtin().redact_json(
        &mut redacted,
        &mut auditnorm::redact::RedactionCounts::default(),
    );
    let mut kept_by_redaction = BTreeSet::new();
    scalars_of(&redacted, &mut kept_by_redaction);
    let mut want = Vec::new();
    strings_of(source, &mut want);
    want.into_iter()
        .filter(|s| s.chars().count() >= 4)
        .filter(|s| kept_by_redaction.contains(s))
        .filter(|s| !have.contains(s) && !have.contains(&s.to_ascii_lowercase()))
        .collect()
}

/// Compares `actual` with the golden file, or rewrites it under UPDATE_GOLDEN=1.
pub fn golden(path: &Path, actual: &str) -> Result<(), String> {
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::create_dir_all(path.parent().expect("golden dir")).expect("mkdir golden");
        if actual.is_empty() {
            let _ = std::fs::remove_file(path);
        } else {
            std::fs::write(path, actual).expect("write golden");
        }
        return Ok(());
    }
    let expected = std::fs::read_to_string(path).unwrap_or_default();
    if expected == actual {
        return Ok(());
    }
    let first = expected
        .lines()
        .zip(actual.lines())
        .position(|(a, b)| a != b)
        .unwrap_or(expected.lines().count().min(actual.lines().count()));
    Err(format!(
        "{} differs from the output (first at line {}); review and run `UPDATE_GOLDEN=1 cargo test --test golden`",
        path.display(),
        first + 1
    ))
}
