//! What a Kinesis record's data can be, through `Normalizer::normalize`: KPL aggregates (of
//! plain JSON, of gzip CloudWatch Logs subscription payloads, broken ones), and CloudWatch Logs
//! subscription payloads (CloudTrail and EKS audit log groups, control messages).
//!
//! Fixtures are in `tests/fixtures/kinesis/` (see its README); CloudTrail and Kubernetes
//! record bodies are reused from the other fixture directories.

mod common;

use auditnorm::dlq::DeadLetter;
use auditnorm::error::{ErrorCode, Stage};
use auditnorm::kinesis::kpl;
use auditnorm::normalize::{Emit, EventInfo, Normalizer};
use auditnorm::record::{Position, SourceKind};
use base64::Engine as _;
use serde_json::Value;
use std::io::Write;

/// Everything one unit gave, in emit order.
#[derive(Debug)]
enum Out {
    Event {
        json: String,
        source: SourceKind,
        position: Position,
    },
    Dead(Box<DeadLetter>),
    Skipped {
        position: Position,
        reason: String,
    },
}

#[derive(Default)]
struct Log(Vec<Out>);

impl Emit for Log {
    fn event(&mut self, json: &[u8], info: EventInfo<'_>) {
        self.0.push(Out::Event {
            json: String::from_utf8(json.to_vec()).expect("events are UTF-8"),
            source: info.source,
            position: info.position.clone(),
        });
    }
    fn dead_letter(&mut self, dl: DeadLetter) {
        self.0.push(Out::Dead(Box::new(dl)));
    }
    fn skipped(&mut self, position: &Position, reason: &str) {
        self.0.push(Out::Skipped {
            position: position.clone(),
            reason: reason.to_string(),
        });
    }
}

impl Log {
    fn events(&self) -> Vec<(&str, SourceKind, &Position)> {
        self.0
            .iter()
            .filter_map(|o| match o {
                Out::Event {
                    json,
                    source,
                    position,
                } => Some((json.as_str(), *source, position)),
                _ => None,
            })
            .collect()
    }
    fn dead(&self) -> Vec<&DeadLetter> {
        self.0
            .iter()
            .filter_map(|o| match o {
                Out::Dead(d) => Some(&**d),
                _ => None,
            })
            .collect()
    }
    fn positions(&self) -> Vec<Option<u32>> {
        self.0
            .iter()
            .map(|o| match o {
                Out::Event { position, .. } | Out::Skipped { position, .. } => position.index(),
                Out::Dead(d) => d.position.index(),
            })
            .collect()
    }
    /// "E" for an event, "D" for a dead letter, "S" for a skip, in order.
    fn shape(&self) -> String {
        self.0
            .iter()
            .map(|o| match o {
                Out::Event { .. } => 'E',
                Out::Dead(_) => 'D',
                Out::Skipped { .. } => 'S',
            })
            .collect()
    }
}

fn pos() -> Position {
    Position::Kinesis {
        stream: "audit".into(),
        shard: "shardId-000000000003".into(),
        sequence: "49654120731196893497375389437254946352346789012345678962".into(),
        index: None,
    }
}

fn normalizer() -> Normalizer {
    Normalizer::new(common::mappings(), None)
}

fn run(bytes: &[u8]) -> Log {
    run_with(&mut normalizer(), bytes)
}

fn run_with(n: &mut Normalizer, bytes: &[u8]) -> Log {
    let mut log = Log::default();
    n.normalize(bytes, &pos(), &mut log);
    for e in log.events() {
        let problems = common::ocsf_problems(e.0);
        assert!(problems.is_empty(), "invalid OCSF event: {problems:?}");
    }
    for d in log.dead() {
        check_dead_letter_schema(d);
    }
    log
}

fn check_dead_letter_schema(d: &DeadLetter) {
    let schema: Value = serde_json::from_str(
        &std::fs::read_to_string("schemas/dead-letter.schema.json").expect("dead-letter schema"),
    )
    .expect("schema JSON");
    let v: Value = serde_json::from_slice(&d.to_json()).expect("dead letter JSON");
    let validator = jsonschema::validator_for(&schema).expect("schema compiles");
    assert!(
        validator.is_valid(&v),
        "dead letter violates its schema: {v}"
    );
}

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(format!("tests/fixtures/kinesis/{name}")).expect("fixture")
}

fn lines(path: &str) -> Vec<String> {
    std::fs::read_to_string(path)
        .expect("fixture")
        .lines()
        .map(str::to_string)
        .collect()
}

fn cloudtrail_lines() -> Vec<String> {
    lines("tests/fixtures/cloudtrail/sts-federation-and-errors.ndjson")
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(bytes).expect("gzip");
    gz.finish().expect("gzip")
}

fn json(event: &str) -> Value {
    serde_json::from_str(event).expect("event JSON")
}

/// The events a unit gives on its own (the plain path), for comparison.
fn plain_events(bytes: &[u8]) -> Vec<String> {
    let log = run(bytes);
    assert!(log.dead().is_empty(), "plain unit gave dead letters");
    log.events().iter().map(|e| e.0.to_string()).collect()
}

/// Asserts that the unit gives one skip, at its own position, for a reason that says `why`.
fn assert_skipped_whole(bytes: &[u8], why: &str) {
    let log = run(bytes);
    assert_eq!(log.shape(), "S");
    match &log.0[0] {
        Out::Skipped { position, reason } => {
            assert_eq!(*position, pos());
            assert!(reason.contains(why), "{reason}");
        }
        other => panic!("{other:?}"),
    }
}

// ------------------------------------------------------------------------- KPL, plain JSON

#[test]
fn kpl_fixture_is_what_the_encoder_writes() {
    // The fixture was written by an independent encoder (see the README); ours must agree
    // byte for byte, and the decoder must give back the three records.
    let ct = cloudtrail_lines();
    let bytes = fixture("kpl-3-cloudtrail.bin");
    let built = kpl::aggregate(&[
        ("trail-a", ct[0].as_bytes()),
        ("trail-b", ct[1].as_bytes()),
        ("trail-a", ct[2].as_bytes()),
    ]);
    assert_eq!(built, bytes);
    let agg = kpl::deaggregate(&bytes).expect("valid aggregate");
    let keys: Vec<&str> = agg.records.iter().map(|r| r.partition_key).collect();
    assert_eq!(keys, ["trail-a", "trail-b", "trail-a"]);
    for (r, line) in agg.records.iter().zip(&ct) {
        assert_eq!(r.data, line.as_bytes());
    }
}

#[test]
fn kpl_of_three_cloudtrail_records_gives_three_events_in_order() {
    let ct = cloudtrail_lines();
    let log = run(&fixture("kpl-3-cloudtrail.bin"));
    assert_eq!(log.shape(), "EEE");
    assert_eq!(log.positions(), [Some(0), Some(1), Some(2)]);
    for (i, (ev, source, p)) in log.events().into_iter().enumerate() {
        assert_eq!(source, SourceKind::CloudTrail);
        // Each sub-record is normalized as if it were its own unit.
        assert_eq!(vec![ev.to_string()], plain_events(ct[i].as_bytes()));
        let want: Value = serde_json::from_str(&ct[i]).expect("record");
        assert_eq!(json(ev)["metadata"]["uid"], want["eventID"]);
        assert_eq!(*p, pos().with_index(i as u32));
    }
}

#[test]
fn bad_sub_record_in_the_middle_is_one_dead_letter_in_its_place() {
    let ct = cloudtrail_lines();
    let bad = fixture("bad-cloudtrail-with-secret.json");
    let bad = bad.trim_ascii_end();
    let bytes = kpl::aggregate(&[
        ("k0", ct[0].as_bytes()),
        ("k1", bad),
        ("k2", ct[2].as_bytes()),
        ("k3", ct[3].as_bytes()),
    ]);
    // Without redaction the dead letter holds the sub-record's bytes exactly.
    let mut raw = normalizer().with_redactor(None);
    let log = run_with(&mut raw, &bytes);
    assert_eq!(log.shape(), "EDEE");
    assert_eq!(log.positions(), [Some(0), Some(1), Some(2), Some(3)]);
    let dead = log.dead();
    let d = dead[0];
    assert_eq!(d.position, pos().with_index(1));
    assert_eq!(d.original_bytes(), bad);
    assert_eq!(d.original.as_deref().map(str::as_bytes), Some(bad));
    assert_eq!(d.stage, Stage::Map, "{}", d.detail);
    assert!(d.detail.contains("eventName"), "{}", d.detail);
    assert!(
        d.detail.starts_with("KPL sub-record 1: "),
        "detail names the sub-record: {}",
        d.detail
    );
    let uids: Vec<Value> = log
        .events()
        .iter()
        .map(|e| json(e.0)["metadata"]["uid"].clone())
        .collect();
    let want: Vec<Value> = [0, 2, 3]
        .iter()
        .map(|&i| serde_json::from_str::<Value>(&ct[i]).expect("record")["eventID"].clone())
        .collect();
    assert_eq!(uids, want);
}

#[test]
fn secret_in_a_dead_sub_record_is_redacted() {
    let ct = cloudtrail_lines();
    let secret = "PLANTED-kpl-dead-letter-0001";
    let bad = fixture("bad-cloudtrail-with-secret.json");
    assert!(String::from_utf8_lossy(&bad).contains(secret));
    let bytes = kpl::aggregate(&[("a", ct[0].as_bytes()), ("b", bad.trim_ascii_end())]);
    let mut n = normalizer();
    let log = run_with(&mut n, &bytes);
    assert_eq!(log.shape(), "ED");
    let d = log.dead()[0];
    assert!(d.redacted, "the dead letter is marked redacted");
    let text = String::from_utf8(d.to_json()).expect("utf-8");
    assert!(!text.contains(secret), "secret leaked: {text}");
    // The rest of the sub-record is still there to debug with.
    assert!(text.contains("kpl-test-user"), "{text}");
    assert_eq!(d.position, pos().with_index(1));
    assert!(!n.redaction_counts().is_empty());
}

#[test]
fn non_utf8_sub_record_is_kept_as_base64() {
    let ct = cloudtrail_lines();
    let junk: &[u8] = &[0xff, 0xfe, b'{', 0x00, 0x80];
    let bytes = kpl::aggregate(&[("a", junk), ("b", ct[0].as_bytes())]);
    let log = run(&bytes);
    assert_eq!(log.shape(), "DE");
    let d = log.dead()[0];
    assert_eq!(d.code(), ErrorCode::InvalidJson);
    assert_eq!(d.position, pos().with_index(0));
    assert_eq!(d.original, None);
    assert_eq!(
        d.original_base64.as_deref(),
        Some(
            base64::engine::general_purpose::STANDARD
                .encode(junk)
                .as_str()
        )
    );
}

#[test]
fn kpl_with_an_empty_sub_record_and_a_nested_aggregate() {
    // An empty sub-record is invalid JSON; a sub-record that is itself an aggregate is not
    // de-aggregated again (KCL does not either): it is a record that is not JSON.
    let ct = cloudtrail_lines();
    let inner = kpl::aggregate(&[("x", ct[0].as_bytes())]);
    let bytes = kpl::aggregate(&[("a", b""), ("b", &inner), ("c", ct[1].as_bytes())]);
    let log = run_with(&mut normalizer().with_redactor(None), &bytes);
    assert_eq!(log.shape(), "DDE");
    assert_eq!(log.positions(), [Some(0), Some(1), Some(2)]);
    let dead = log.dead();
    assert!(dead.iter().all(|d| d.code() == ErrorCode::InvalidJson));
    assert_eq!(dead[1].original_bytes(), inner);
}

// ------------------------------------------------------------------- KPL, broken as a whole

/// Without redaction, so that the dead letter's bytes can be compared (a redacted binary dead
/// letter is lossy text; see `whole_unit_dead_letter_is_redacted`).
fn whole_unit_dead_letter(bytes: &[u8]) -> DeadLetter {
    let log = run_with(&mut normalizer().with_redactor(None), bytes);
    assert_eq!(log.shape(), "D", "{:?}", log.0);
    let d = log.dead()[0].clone();
    assert_eq!(d.code(), ErrorCode::KplInvalid);
    assert_eq!(d.code().as_str(), "kpl_invalid");
    assert_eq!(d.stage, Stage::Decode);
    assert_eq!(d.position, pos(), "the unit's own position, no index");
    assert_eq!(d.original_bytes(), bytes, "the whole unit's bytes");
    let v: Value = serde_json::from_slice(&d.to_json()).expect("JSON");
    assert_eq!(v["error_code"], "kpl_invalid");
    d
}

#[test]
fn aggregate_with_a_bad_digest_is_one_dead_letter() {
    let mut bytes = fixture("kpl-3-cloudtrail.bin");
    let n = bytes.len();
    bytes[n - 1] ^= 0x55;
    let d = whole_unit_dead_letter(&bytes);
    assert!(d.detail.contains("digest does not match"), "{}", d.detail);
    assert!(d.detail.contains("plain record"), "{}", d.detail);
    // Not UTF-8: kept as base64.
    assert!(d.original.is_none() && d.original_base64.is_some());
}

#[test]
fn whole_unit_dead_letter_is_redacted() {
    // The first record of the fixture holds an STS session token in its response.
    let token = "IQoJb3JpZ2luX2VjEXAMPLETOKEN";
    let mut bytes = fixture("kpl-3-cloudtrail.bin");
    assert!(String::from_utf8_lossy(&bytes).contains(token));
    let n = bytes.len();
    bytes[n - 1] ^= 0x55;
    let log = run(&bytes);
    assert_eq!(log.shape(), "D");
    let d = log.dead()[0];
    assert_eq!(d.code(), ErrorCode::KplInvalid);
    assert!(d.redacted);
    let text = String::from_utf8(d.to_json()).expect("utf-8");
    assert!(
        !text.contains(token),
        "token leaked from a whole-unit dead letter"
    );
}

#[test]
fn truncated_aggregate_is_one_dead_letter() {
    // A record cut short in transit: the trailer is no longer the digest.
    let bytes = fixture("kpl-3-cloudtrail.bin");
    let d = whole_unit_dead_letter(&bytes[..bytes.len() / 2]);
    assert!(d.detail.contains("digest does not match"), "{}", d.detail);
    // Too short to hold a digest at all.
    let d = whole_unit_dead_letter(&bytes[..12]);
    assert!(d.detail.contains("only 12 bytes"), "{}", d.detail);
}

#[test]
fn truncated_protobuf_with_a_valid_digest_names_the_byte() {
    let ct = cloudtrail_lines();
    let full = kpl::aggregate(&[("k", ct[0].as_bytes())]);
    // The protobuf body without its last 10 bytes, re-framed with a matching digest.
    let body = &full[4..full.len() - 16];
    let d = whole_unit_dead_letter(&kpl::frame(&body[..body.len() - 10]));
    assert!(
        d.detail.starts_with("bad KPL protobuf at byte 8: length"),
        "{}",
        d.detail
    );
}

#[test]
fn partition_key_index_out_of_range_is_one_dead_letter() {
    let msg = kpl::proto::AggregatedRecord {
        partition_key_table: vec!["k".into()],
        explicit_hash_key_table: vec![],
        records: vec![
            kpl::proto::Record {
                partition_key_index: 0,
                explicit_hash_key_index: None,
                data: b"{}".to_vec(),
                tags: vec![],
            },
            kpl::proto::Record {
                partition_key_index: 2,
                explicit_hash_key_index: None,
                data: b"{}".to_vec(),
                tags: vec![],
            },
        ],
    };
    let d = whole_unit_dead_letter(&kpl::encode(&msg));
    assert!(
        d.detail
            .contains("sub-record 1: partition key index 2 is out of range"),
        "{}",
        d.detail
    );
}

#[test]
fn empty_aggregate_is_skipped() {
    assert_skipped_whole(&kpl::aggregate(&[]), "empty KPL aggregate");
}

// --------------------------------------------------------- CloudWatch Logs subscriptions

#[test]
fn cloudtrail_via_cloudwatch_subscription() {
    let body = fixture("cloudwatch-cloudtrail.json");
    let cw: Value = serde_json::from_slice(&body).expect("fixture JSON");
    let log = run(&gzip(&body));
    assert_eq!(log.shape(), "EEE");
    assert_eq!(log.positions(), [Some(0), Some(1), Some(2)]);
    for (i, (ev, source, _)) in log.events().into_iter().enumerate() {
        assert_eq!(source, SourceKind::CloudTrail);
        let rec: Value =
            serde_json::from_str(cw["logEvents"][i]["message"].as_str().expect("message"))
                .expect("record");
        assert_eq!(json(ev)["metadata"]["uid"], rec["eventID"]);
        let lost = common::lost_values(&rec, ev);
        assert!(lost.is_empty(), "values lost: {lost:?}");
    }
}

#[test]
fn eks_audit_via_cloudwatch_subscription_gives_kubernetes_events() {
    let body = fixture("cloudwatch-eks-audit.json");
    let cw: Value = serde_json::from_slice(&body).expect("fixture JSON");
    let log = run(&gzip(&body));
    assert_eq!(log.shape(), "EEEE");
    assert_eq!(log.positions(), [Some(0), Some(1), Some(2), Some(3)]);
    for (i, (ev, source, _)) in log.events().into_iter().enumerate() {
        assert_eq!(source, SourceKind::K8sAudit);
        let v = json(ev);
        let el = &cw["logEvents"][i];
        let rec: Value =
            serde_json::from_str(el["message"].as_str().expect("message")).expect("record");
        assert_eq!(v["class_uid"], 6003);
        assert_eq!(
            v["metadata"]["uid"],
            format!(
                "{}:{}",
                rec["auditID"].as_str().expect("auditID"),
                rec["stage"].as_str().expect("stage")
            )
        );
        assert_eq!(v["metadata"]["original_event_uid"], el["id"]);
        assert_eq!(v["metadata"]["log_source"], "/aws/eks/kpl-demo/cluster");
        assert_eq!(v["metadata"]["reporter"]["name"], cw["logStream"]);
        assert_eq!(v["metadata"]["product"]["name"], "Amazon EKS");
        assert_eq!(v["dst_endpoint"]["name"], "kpl-demo");
        assert_eq!(v["metadata"]["logged_time"], el["timestamp"]);
    }
}

#[test]
fn control_message_is_skipped() {
    assert_skipped_whole(
        &gzip(&fixture("cloudwatch-control.json")),
        "control message",
    );
}

#[test]
fn kpl_of_gzip_cloudwatch_payloads() {
    let ct_body = gzip(&fixture("cloudwatch-cloudtrail.json"));
    let eks_body = gzip(&fixture("cloudwatch-eks-audit.json"));
    let control = gzip(&fixture("cloudwatch-control.json"));
    let bytes = kpl::aggregate(&[("ct", &ct_body), ("cw", &control), ("eks", &eks_body)]);
    let log = run(&bytes);
    assert_eq!(log.shape(), "EEESEEEE");
    // Every record of a sub-record carries the sub-record's index.
    assert_eq!(
        log.positions(),
        [
            Some(0),
            Some(0),
            Some(0),
            Some(1),
            Some(2),
            Some(2),
            Some(2),
            Some(2)
        ]
    );
    let sources: Vec<SourceKind> = log.events().iter().map(|e| e.1).collect();
    assert_eq!(sources[..3], [SourceKind::CloudTrail; 3]);
    assert_eq!(sources[3..], [SourceKind::K8sAudit; 4]);
    // The same events as each payload gives as a unit of its own.
    let mut want = plain_events(&ct_body);
    want.extend(plain_events(&eks_body));
    let got: Vec<String> = log.events().iter().map(|e| e.0.to_string()).collect();
    assert_eq!(got, want);
}

#[test]
fn bad_log_event_inside_a_kpl_sub_record_names_its_element() {
    let mut cw: Value =
        serde_json::from_slice(&fixture("cloudwatch-eks-audit.json")).expect("fixture JSON");
    cw["logEvents"][2]["message"] = Value::from("{\"kind\":\"Event\",\"auditID\":");
    let body = gzip(&serde_json::to_vec(&cw).expect("JSON"));
    let ct = cloudtrail_lines();
    let bytes = kpl::aggregate(&[("a", ct[0].as_bytes()), ("b", &body)]);
    let log = run(&bytes);
    assert_eq!(log.shape(), "EEEDE");
    assert_eq!(
        log.positions(),
        [Some(0), Some(1), Some(1), Some(1), Some(1)]
    );
    let d = log.dead()[0];
    assert_eq!(d.code(), ErrorCode::InvalidJson);
    assert!(
        d.detail.starts_with("KPL sub-record 1, element [2]: "),
        "{}",
        d.detail
    );
    assert_eq!(d.original_bytes(), b"{\"kind\":\"Event\",\"auditID\":");
    // Outside an aggregate the same payload puts the element in the position.
    let plain = run(&body);
    assert_eq!(plain.positions(), [Some(0), Some(1), Some(2), Some(3)]);
    assert!(!plain.dead()[0].detail.contains("KPL"));
}

#[test]
fn truncated_gzip_sub_record_keeps_its_own_bytes() {
    let body = gzip(&fixture("cloudwatch-cloudtrail.json"));
    let cut = &body[..body.len() / 2];
    let ct = cloudtrail_lines();
    let bytes = kpl::aggregate(&[("a", cut), ("b", ct[0].as_bytes())]);
    let log = run(&bytes);
    assert_eq!(log.shape(), "DE");
    let d = log.dead()[0];
    assert_eq!(d.code(), ErrorCode::TruncatedGzip);
    assert_eq!(d.position, pos().with_index(0));
    assert_eq!(d.original_bytes(), cut);
}

#[test]
fn plain_units_are_untouched() {
    // No KPL magic: the unit is one record at the unit's position (no index).
    let ct = cloudtrail_lines();
    let log = run(ct[0].as_bytes());
    assert_eq!(log.shape(), "E");
    assert_eq!(log.positions(), [None]);
    // A unit that merely contains the magic later on is plain too.
    let mut odd = b"xx".to_vec();
    odd.extend_from_slice(&kpl::MAGIC);
    let log = run(&odd);
    assert_eq!(log.shape(), "D");
    assert_eq!(log.dead()[0].code(), ErrorCode::InvalidJson);
}
