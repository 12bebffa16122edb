//! Bench corpora generated from the project's own fixtures: records of one source, one per
//! line, each with a distinct event id so nothing is accidentally deduplicated or cached.
#![allow(dead_code)]

use std::io::Read;
use std::path::{Path, PathBuf};

/// Every record of a fixture tree (carriers unwrapped the simple way: Records[], entries[],
/// records[], value[], items[], EventBridge detail, or the object itself), broken/ skipped.
pub fn fixture_records(dir: &str) -> Vec<serde_json::Value> {
    let mut files = Vec::new();
    walk(Path::new(dir), &mut files);
    files.sort();
    let mut out = Vec::new();
    for f in files {
        let s = f.to_string_lossy();
        if s.contains("/broken/") || s.ends_with(".md") {
            continue;
        }
        let mut bytes = std::fs::read(&f).expect("fixture");
        if bytes.starts_with(&[0x1f, 0x8b]) {
            let mut d = Vec::new();
            flate2::read::MultiGzDecoder::new(&bytes[..])
                .read_to_end(&mut d)
                .expect("gzip fixture");
            bytes = d;
        }
        let text = String::from_utf8_lossy(&bytes);
        let docs: Vec<serde_json::Value> = match serde_json::from_str(&text) {
            Ok(v) => vec![v],
            Err(_) => text
                .lines()
                .filter(|l| !l.trim().is_empty())
                .filter_map(|l| serde_json::from_str(l).ok())
                .collect(),
        };
        for d in docs {
            unwrap(d, &mut out);
        }
    }
    out
}

fn unwrap(d: serde_json::Value, out: &mut Vec<serde_json::Value>) {
    for key in ["Records", "entries", "records", "value", "items"] {
        if let Some(serde_json::Value::Array(a)) = d.get(key) {
            out.extend(a.iter().cloned());
            return;
        }
    }
    if let serde_json::Value::Array(a) = &d {
        out.extend(a.iter().cloned());
        return;
    }
    if let Some(detail) = d.get("detail") {
        out.push(detail.clone());
        return;
    }
    if d.get("digestStartTime").is_none() && d.get("messageType").is_none() {
        out.push(d);
    }
}

fn walk(p: &Path, out: &mut Vec<PathBuf>) {
    if p.is_dir() {
        for e in std::fs::read_dir(p).expect("dir").flatten() {
            walk(&e.path(), out);
        }
    } else {
        out.push(p.to_path_buf());
    }
}

/// The CloudTrail corpus of the spine issue: sign-in, IAM, STS, EC2 and S3 records, sized
/// around 1.1 KB, cycled to `n` lines with distinct eventIDs. Returns the lines and the mean
/// record size.
pub fn cloudtrail_lines(n: usize) -> (Vec<String>, usize) {
    let mut templates: Vec<serde_json::Value> = fixture_records("tests/fixtures/cloudtrail")
        .into_iter()
        .filter(|r| {
            let src = r["eventSource"].as_str().unwrap_or_default();
            ["signin.", "iam.", "sts.", "ec2.", "s3."]
                .iter()
                .any(|p| src.starts_with(p))
        })
        .filter(|r| {
            let len = serde_json::to_string(r).map(|s| s.len()).unwrap_or(0);
            (600..=1500).contains(&len)
        })
        .collect();
    assert!(!templates.is_empty(), "no CloudTrail templates");
    templates.sort_by_key(|r| r["eventID"].as_str().unwrap_or_default().to_string());
    let mut lines = Vec::with_capacity(n);
    let mut total = 0usize;
    for i in 0..n {
        let mut r = templates[i % templates.len()].clone();
        r["eventID"] =
            serde_json::Value::String(format!("{:08x}-0000-4000-8000-{:012x}", i as u32, i));
        let line = serde_json::to_string(&r).expect("json");
        total += line.len();
        lines.push(line);
    }
    let mean = total / n.max(1);
    (lines, mean)
}

/// Any source's records from its fixture dir, cycled to `n` lines (ids left as they are).
pub fn source_lines(dir: &str, n: usize) -> (Vec<String>, usize) {
    let templates = fixture_records(dir);
    assert!(!templates.is_empty(), "no templates in {dir}");
    let mut lines = Vec::with_capacity(n);
    let mut total = 0;
    for i in 0..n {
        let line = serde_json::to_string(&templates[i % templates.len()]).expect("json");
        total += line.len();
        lines.push(line);
    }
    (lines, total / n.max(1))
}
