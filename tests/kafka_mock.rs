//! The Kafka pipeline on librdkafka's in-process mock cluster (no setup needed): order per
//! partition, dead letters and the commit point, a failing output, restart, rebalance.

#[path = "kafka_common.rs"]
mod kc;

use auditnorm::pipeline::{LaneError, PipelineError};
use kc::{check_output, commits_reach, committed, event_id, produce, read_topic, record};
use kc::{templates, Running, Setup};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{FutureProducer, Producer};
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use rdkafka::ClientConfig;
use std::collections::BTreeMap;
use std::time::Duration;

/// A one-broker mock cluster, owned by a producer client; group joins are not delayed.
struct Mock {
    owner: FutureProducer,
    bootstrap: String,
}

impl Mock {
    fn new() -> Mock {
        let owner: FutureProducer = ClientConfig::new()
            .set("test.mock.num.brokers", "1")
            .create()
            .expect("mock cluster");
        let bootstrap = owner
            .client()
            .mock_cluster()
            .expect("mock")
            .bootstrap_servers();
        // The mock's first group join otherwise waits ~3 s (group.initial.rebalance.delay.ms).
        unsafe {
            let m = rdkafka::bindings::rd_kafka_handle_mock_cluster(owner.client().native_ptr());
            assert!(!m.is_null());
            rdkafka::bindings::rd_kafka_mock_group_initial_rebalance_delay_ms(m, 0);
        }
        Mock { owner, bootstrap }
    }

    fn cluster(&self) -> MockCluster<'_, impl rdkafka::ClientContext> {
        self.owner.client().mock_cluster().expect("mock")
    }

    /// Creates topics (name, partitions).
    fn topics(&self, topics: &[(&str, i32)]) {
        for (name, partitions) in topics {
            self.cluster()
                .create_topic(name, *partitions, 1)
                .expect("create topic");
        }
    }

    /// Every Produce request fails (retriably) until `heal`.
    fn break_produce(&self) {
        self.cluster().request_errors(
            RDKafkaApiKey::Produce,
            &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS; 20_000],
        );
    }

    fn heal(&self) {
        self.cluster().clear_request_errors(RDKafkaApiKey::Produce);
    }

    fn producer(&self) -> FutureProducer {
        kc::producer(&self.bootstrap)
    }
}

/// Produces `n` records to each of `partitions`, tagged `tag`; returns the ids per partition.
fn fill(
    mock: &Mock,
    topic: &str,
    tag: &str,
    partitions: i32,
    range: std::ops::Range<usize>,
) -> BTreeMap<i32, Vec<String>> {
    let t = templates();
    let p = mock.producer();
    let mut ids = BTreeMap::new();
    for part in 0..partitions {
        let v: Vec<String> = range.clone().map(|i| event_id(tag, part, i)).collect();
        let recs: Vec<String> = range
            .clone()
            .zip(&v)
            .map(|(i, id)| record(&t, i, id))
            .collect();
        produce(&p, topic, part, &recs);
        ids.insert(part, v);
    }
    let _ = p.flush(Duration::from_secs(5));
    ids
}

fn extend(all: &mut BTreeMap<i32, Vec<String>>, more: BTreeMap<i32, Vec<String>>) {
    for (p, v) in more {
        all.entry(p).or_default().extend(v);
    }
}

const POISON: &str = "{\"eventVersion\": \"1.10\", this is not JSON";

/// How long a test waits for commits.
const WAIT: Duration = Duration::from_secs(60);

/// Pipeline settings under which a destination that refuses writes fails the run quickly.
const GIVE_UP_FAST: &str =
    "delivery_timeout: 1s, retry: {budget: 1, backoff: 100ms, max_backoff: 100ms}";

/// The config of a pipeline from `in` to `out`, dead letters to `dlq`, all on `bootstrap`.
fn setup<'a>(bootstrap: &'a str, group: &'a str) -> Setup<'a> {
    Setup {
        bootstrap,
        group,
        input: "in",
        output: "out",
        dead_letter: "dlq",
        dead_letter_brokers: None,
        output_brokers: None,
        pipeline: "",
    }
}

/// Runs `setup` and asserts that the pipeline gives up: a destination refuses every write
/// until the retry budget is spent.
fn assert_gives_up(setup: &Setup) {
    let failed = Running::start(&setup.yaml()).wait(WAIT);
    assert!(
        matches!(
            failed,
            Err(PipelineError::Lane(LaneError::RetryBudget { .. }))
        ),
        "{failed:?}"
    );
}

#[test]
fn order_holds_per_partition_and_a_poison_record_goes_to_dead_letters() {
    let mock = Mock::new();
    mock.topics(&[("in", 3), ("out", 3), ("dlq", 1)]);
    let t = templates();
    let p = mock.producer();
    let mut expected = BTreeMap::new();
    for part in 0..3 {
        let ids: Vec<String> = (0..300).map(|i| event_id("order", part, i)).collect();
        let mut recs: Vec<String> = ids
            .iter()
            .enumerate()
            .map(|(i, id)| record(&t, i, id))
            .collect();
        if part == 1 {
            recs.insert(150, POISON.to_string());
        }
        produce(&p, "in", part, &recs);
        expected.insert(part, ids);
    }
    let run = Running::start(&setup(&mock.bootstrap, "g-order").yaml());
    assert!(
        commits_reach(&mock.bootstrap, "g-order", "in", &[300, 301, 300], WAIT),
        "commits did not reach the end: {:?}",
        committed(&mock.bootstrap, "g-order", "in", 3)
    );
    let summary = run.stop().expect("clean stop");
    assert_eq!(
        (summary.records, summary.events, summary.dead_letters),
        (901, 900, 1)
    );

    let out = read_topic(&mock.bootstrap, "out", 900, Duration::from_secs(30));
    assert_eq!(out.len(), 900);
    assert_eq!(
        check_output(&out, &expected),
        0,
        "no duplicates after a clean run"
    );
    for e in &out {
        // partitioning: auto, output has as many partitions: p -> p, keyed by the lane.
        assert_eq!(
            e.key.as_deref(),
            Some(format!("in/{}", e.partition).as_str())
        );
        assert!(
            e.uid().contains(&format!("-p{}-", e.partition)),
            "{} in {}",
            e.uid(),
            e.partition
        );
    }

    let dl = read_topic(&mock.bootstrap, "dlq", 1, Duration::from_secs(10));
    assert_eq!(dl.len(), 1);
    let d = &dl[0];
    assert_eq!(
        d.value,
        POISON.as_bytes(),
        "the original bytes are the value"
    );
    let h = |k: &str| d.headers.get(k).map(String::as_str);
    assert_eq!(h("auditnorm-error-code"), Some("invalid_json"));
    assert_eq!(h("auditnorm-error-stage"), Some("decode"));
    assert_eq!(h("auditnorm-source-topic"), Some("in"));
    assert_eq!(h("auditnorm-source-partition"), Some("1"));
    assert_eq!(h("auditnorm-source-offset"), Some("150"));
    assert_eq!(h("auditnorm-version"), Some(env!("CARGO_PKG_VERSION")));
    assert!(h("auditnorm-error-detail").is_some_and(|s| !s.is_empty()));
}

#[test]
fn the_commit_passes_a_dead_letter_only_after_its_acknowledgement() {
    let input = Mock::new();
    input.topics(&[("in", 1), ("out", 1)]);
    let dead = Mock::new();
    dead.topics(&[("dlq", 1)]);
    dead.break_produce();
    let t = templates();
    let mut ids: Vec<String> = (0..20).map(|i| event_id("dlack", 0, i)).collect();
    let mut recs: Vec<String> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| record(&t, i, id))
        .collect();
    recs.insert(10, POISON.to_string());
    produce(&input.producer(), "in", 0, &recs);
    let setup = Setup {
        dead_letter_brokers: Some(&dead.bootstrap),
        pipeline: GIVE_UP_FAST,
        ..setup(&input.bootstrap, "g-dlack")
    };
    assert_gives_up(&setup);
    // The 10 records before the poison one are committed; the 10 after it reached the output
    // but the commit stays on the record whose dead letter was not acknowledged.
    assert_eq!(committed(&input.bootstrap, "g-dlack", "in", 1), vec![10]);
    let out = read_topic(&input.bootstrap, "out", 20, Duration::from_secs(20));
    let mut expected = BTreeMap::from([(0, ids.clone())]);
    check_output(&out, &expected);

    dead.heal();
    let run = Running::start(&setup.yaml());
    assert!(commits_reach(
        &input.bootstrap,
        "g-dlack",
        "in",
        &[21],
        WAIT
    ));
    run.stop().expect("clean stop");
    let dl = read_topic(&dead.bootstrap, "dlq", 1, Duration::from_secs(10));
    assert_eq!(dl.len(), 1, "one dead letter once the topic takes writes");
    assert_eq!(dl[0].value, POISON.as_bytes());
    assert_eq!(
        dl[0]
            .headers
            .get("auditnorm-source-offset")
            .map(String::as_str),
        Some("10")
    );
    ids.truncate(20);
    expected.insert(0, ids);
    check_output(
        &read_topic(&input.bootstrap, "out", 20, Duration::from_secs(20)),
        &expected,
    );
}

#[test]
fn a_failing_output_holds_the_commit_and_a_restart_resumes_right_after_it() {
    let input = Mock::new();
    input.topics(&[("in", 2), ("dlq", 1)]);
    let output = Mock::new();
    output.topics(&[("out", 2)]);
    let setup = Setup {
        output_brokers: Some(&output.bootstrap),
        pipeline: GIVE_UP_FAST,
        ..setup(&input.bootstrap, "g-outage")
    };
    let ends = |v: i64| commits_reach(&input.bootstrap, "g-outage", "in", &[v, v], WAIT);

    // 1. A normal run commits everything.
    let mut expected = fill(&input, "in", "outage", 2, 0..50);
    let run = Running::start(&setup.yaml());
    assert!(ends(50));
    run.stop().expect("clean stop");

    // 2. The output refuses every write: the pipeline gives up, the commit stays at 50.
    output.break_produce();
    extend(&mut expected, fill(&input, "in", "outage", 2, 50..100));
    assert_gives_up(&setup);
    assert_eq!(
        committed(&input.bootstrap, "g-outage", "in", 2),
        vec![50, 50]
    );

    // 3. Output back: a restart resumes at 50, so every record is there exactly once.
    output.heal();
    let run = Running::start(&setup.yaml());
    assert!(ends(100));
    run.stop().expect("clean stop");
    let out = read_topic(&output.bootstrap, "out", 200, Duration::from_secs(30));
    assert_eq!(check_output(&out, &expected), 0, "no record sent twice");
    assert_eq!(out.len(), 200);
}

#[test]
fn a_rebalance_between_two_pipelines_loses_nothing() {
    let mock = Mock::new();
    mock.topics(&[("in", 6), ("out", 6), ("dlq", 1)]);
    let yaml = setup(&mock.bootstrap, "g-rebalance").yaml();
    let mut expected = fill(&mock, "in", "rb", 6, 0..300);
    let first = Running::start(&yaml);
    std::thread::sleep(Duration::from_millis(1500));
    extend(&mut expected, fill(&mock, "in", "rb", 6, 300..600));
    // A second member joins: partitions move while records are in flight.
    let second = Running::start(&yaml);
    for batch in 0..4 {
        std::thread::sleep(Duration::from_millis(500));
        let from = 600 + batch * 100;
        extend(&mut expected, fill(&mock, "in", "rb", 6, from..from + 100));
    }
    // The first leaves: its partitions go to the second.
    let s1 = first.stop().expect("first stops cleanly");
    extend(&mut expected, fill(&mock, "in", "rb", 6, 1000..1200));
    assert!(
        commits_reach(&mock.bootstrap, "g-rebalance", "in", &[1200; 6], WAIT),
        "commits: {:?}",
        committed(&mock.bootstrap, "g-rebalance", "in", 6)
    );
    let s2 = second.stop().expect("second stops cleanly");
    assert!(
        s1.records > 0 && s2.records > 0,
        "both members worked: {s1} / {s2}"
    );
    let out = read_topic(&mock.bootstrap, "out", 7200, Duration::from_secs(60));
    // Nothing is lost; order holds. Duplicates are possible here only because the mock's group
    // coordinator refuses commits while a rebalance is in progress (a real broker accepts them
    // from the current generation), so a partition can move before its last commit landed.
    let dups = check_output(&out, &expected);
    eprintln!("rebalance: {} events, {dups} re-delivered", out.len());
    assert_eq!(out.len(), 7200 + dups);
}

#[test]
fn file_destinations_append_across_restarts() {
    let mock = Mock::new();
    mock.topics(&[("in", 2)]);
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("kafka-mock-files");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let (events, dead) = (dir.join("events.ndjson"), dir.join("dead.ndjson"));
    let yaml = format!(
        "input:\n  kafka:\n    brokers: [\"{b}\"]\n    group: g-files\n    topics: [{{name: in, source: auto}}]\n    options: {fast}\noutput:\n  file: {e}\ndead_letter:\n  file: {d}\npipeline: {{commit_interval: 200ms}}\n",
        b = mock.bootstrap,
        fast = kc::FAST_GROUP,
        e = events.display(),
        d = dead.display(),
    );
    let lines = |p: &std::path::Path| std::fs::read_to_string(p).map_or(0, |t| t.lines().count());
    let mut expected = fill(&mock, "in", "files", 2, 0..40);
    let p = mock.producer();
    produce(&p, "in", 0, &[POISON.to_string()]);
    let reach = |want: &[i64]| commits_reach(&mock.bootstrap, "g-files", "in", want, WAIT);
    let run = Running::start(&yaml);
    assert!(reach(&[41, 40]));
    run.stop().expect("clean stop");
    extend(&mut expected, fill(&mock, "in", "files", 2, 40..60));
    let run = Running::start(&yaml);
    assert!(reach(&[61, 60]));
    run.stop().expect("clean stop");
    assert_eq!(lines(&events), 120, "the second run appended");
    assert_eq!(lines(&dead), 1);
    let ids: std::collections::BTreeSet<String> = std::fs::read_to_string(&events)
        .expect("events")
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).expect("event")["metadata"]["uid"]
                .as_str()
                .expect("uid")
                .to_string()
        })
        .collect();
    assert_eq!(ids.len(), 120);
    assert!(expected.values().flatten().all(|id| ids.contains(id)));
}
