//! Helpers shared by the Kafka tests (`kafka_mock.rs`, `kafka_broker.rs`) and the Kafka bench:
//! CloudTrail records with distinct event IDs, producing, reading a whole topic, committed
//! offsets, and running a pipeline on a runtime of its own (`templates` and `record` from
//! support/records.rs, `Running` and `wait_until` from support/pipeline.rs, shared with the
//! Kinesis tests). Included with `#[path]`; as a test target of its own it only checks its record
//! generator.
#![allow(dead_code)]

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Headers;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

#[path = "support/pipeline.rs"]
mod pipeline;
#[path = "support/records.rs"]
mod records;
#[allow(unused_imports)] // not every includer uses them all
pub use pipeline::{wait_until, Running};
#[allow(unused_imports)]
pub use records::{record, templates};

/// Client settings that make group joins and restarts quick (see ../shared/test-services.md).
pub const FAST_GROUP: &str =
    "{session.timeout.ms: 1500, heartbeat.interval.ms: 500, fetch.wait.max.ms: 10}";

/// The event ID given to record `i` of partition `p` in a test tagged `tag`.
pub fn event_id(tag: &str, p: i32, i: usize) -> String {
    format!("{tag}-p{p}-{i:07}")
}

pub fn producer(bootstrap: &str) -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .create()
        .expect("producer")
}

/// Produces `payloads` to one partition and waits for every acknowledgement.
pub fn produce(producer: &FutureProducer, topic: &str, partition: i32, payloads: &[String]) {
    let mut pending = Vec::with_capacity(payloads.len());
    for p in payloads {
        loop {
            match producer.send_result(
                FutureRecord::<(), _>::to(topic)
                    .partition(partition)
                    .payload(p.as_bytes()),
            ) {
                Ok(f) => {
                    pending.push(f);
                    break;
                }
                Err((e, _)) => {
                    assert!(
                        matches!(
                            e,
                            rdkafka::error::KafkaError::MessageProduction(
                                rdkafka::types::RDKafkaErrorCode::QueueFull
                            )
                        ),
                        "{e}"
                    );
                    producer.poll(Duration::from_millis(10));
                }
            }
        }
    }
    producer.flush(Duration::from_secs(30)).expect("flush");
    for f in pending {
        futures_block_on(f)
            .expect("delivery future")
            .expect("delivered");
    }
}

/// Resolves an already-completed future (after `flush`) without a runtime.
fn futures_block_on<F: std::future::Future>(f: F) -> F::Output {
    let mut f = std::pin::pin!(f);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    loop {
        if let std::task::Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// One record read back from a topic.
#[derive(Debug, Clone)]
pub struct Got {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<String>,
    pub value: Vec<u8>,
    pub headers: BTreeMap<String, String>,
}

impl Got {
    /// `metadata.uid` of an OCSF event.
    pub fn uid(&self) -> String {
        let v: serde_json::Value = serde_json::from_slice(&self.value).expect("event JSON");
        v["metadata"]["uid"]
            .as_str()
            .expect("metadata.uid")
            .to_string()
    }
}

/// Reads `topic` from the beginning until `want` records arrived and nothing more came for a
/// moment, or `timeout` passed. Returns them in partition, offset order.
pub fn read_topic(bootstrap: &str, topic: &str, want: usize, timeout: Duration) -> Vec<Got> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "auditnorm-test-reader")
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "10")
        .create()
        .expect("reader");
    let partitions = {
        let md = consumer
            .fetch_metadata(Some(topic), Duration::from_secs(10))
            .expect("metadata");
        md.topics()[0].partitions().len() as i32
    };
    {
        let mut tpl = TopicPartitionList::new();
        for p in 0..partitions {
            tpl.add_partition_offset(topic, p, Offset::Beginning)
                .expect("tpl");
        }
        consumer.assign(&tpl).expect("assign");
    }
    let deadline = Instant::now() + timeout;
    let mut got = Vec::new();
    let mut quiet_since = Instant::now();
    while Instant::now() < deadline {
        match consumer.poll(Duration::from_millis(50)) {
            Some(Ok(m)) => {
                let mut headers = BTreeMap::new();
                if let Some(h) = m.headers() {
                    for h in h.iter() {
                        headers.insert(
                            h.key.to_string(),
                            String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned(),
                        );
                    }
                }
                got.push(Got {
                    partition: m.partition(),
                    offset: m.offset(),
                    key: m.key().map(|k| String::from_utf8_lossy(k).into_owned()),
                    value: m.payload().unwrap_or_default().to_vec(),
                    headers,
                });
                quiet_since = Instant::now();
            }
            Some(Err(e)) => panic!("reading {topic}: {e}"),
            None => {
                if got.len() >= want && quiet_since.elapsed() > Duration::from_millis(300) {
                    break;
                }
            }
        }
    }
    got.sort_by_key(|g| (g.partition, g.offset));
    got
}

/// The group's committed offsets (next offset to read; -1001 when none) per partition.
pub fn committed(bootstrap: &str, group: &str, topic: &str, partitions: i32) -> Vec<i64> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let offsets = {
        let mut tpl = TopicPartitionList::new();
        for p in 0..partitions {
            tpl.add_partition(topic, p);
        }
        let got = consumer
            .committed_offsets(tpl, Duration::from_secs(10))
            .expect("committed offsets");
        let v: Vec<i64> = (0..partitions)
            .map(|p| match got.find_partition(topic, p).map(|e| e.offset()) {
                Some(Offset::Offset(o)) => o,
                _ => -1001,
            })
            .collect();
        v
        // `got` is dropped here, before the consumer (a live list would hang its drop).
    };
    drop(consumer);
    offsets
}

/// Waits up to `timeout` until `group` has committed `want` on `topic` (one offset per
/// partition).
pub fn commits_reach(
    bootstrap: &str,
    group: &str,
    topic: &str,
    want: &[i64],
    timeout: Duration,
) -> bool {
    wait_until(timeout, || {
        committed(bootstrap, group, topic, want.len() as i32) == want
    })
}

/// Sum of the high watermarks of a topic's partitions (records written so far); one client
/// kept for repeated, cheap calls.
pub struct Watermarks {
    consumer: BaseConsumer,
    topic: String,
    partitions: i32,
}

impl Watermarks {
    pub fn new(bootstrap: &str, topic: &str, partitions: i32) -> Watermarks {
        Watermarks {
            consumer: ClientConfig::new()
                .set("bootstrap.servers", bootstrap)
                .create()
                .expect("consumer"),
            topic: topic.to_string(),
            partitions,
        }
    }

    pub fn total(&self) -> i64 {
        (0..self.partitions)
            .map(|p| {
                self.consumer
                    .fetch_watermarks(&self.topic, p, Duration::from_secs(5))
                    .map(|(_, high)| high)
                    .unwrap_or(0)
            })
            .sum()
    }
}

/// The config of a pipeline reading `input` (with `source`) into `output`.
pub struct Setup<'a> {
    pub bootstrap: &'a str,
    pub group: &'a str,
    pub input: &'a str,
    pub output: &'a str,
    pub dead_letter: &'a str,
    /// Brokers of the dead-letter topic, when not `bootstrap`.
    pub dead_letter_brokers: Option<&'a str>,
    /// Brokers of the output topic, when not `bootstrap`.
    pub output_brokers: Option<&'a str>,
    /// Extra `pipeline:` keys, YAML flow style without braces.
    pub pipeline: &'a str,
}

impl Setup<'_> {
    pub fn yaml(&self) -> String {
        let brokers = |b: Option<&str>| {
            b.map(|b| format!(", brokers: [\"{b}\"]"))
                .unwrap_or_default()
        };
        let pipeline = if self.pipeline.is_empty() {
            "commit_interval: 200ms, drain_timeout: 10s".to_string()
        } else {
            format!(
                "commit_interval: 200ms, drain_timeout: 10s, {}",
                self.pipeline
            )
        };
        format!(
            "kafka:\n  brokers: [\"{b}\"]\ninput:\n  kafka:\n    group: {g}\n    topics: [{{name: {i}, source: cloudtrail}}]\n    options: {opts}\noutput:\n  kafka: {{topic: {o}{ob}}}\ndead_letter:\n  kafka: {{topic: {d}{db}}}\npipeline: {{{pipeline}}}\n",
            b = self.bootstrap,
            g = self.group,
            i = self.input,
            o = self.output,
            d = self.dead_letter,
            ob = brokers(self.output_brokers),
            db = brokers(self.dead_letter_brokers),
            opts = FAST_GROUP,
        )
    }
}

/// An input, an output and a dead-letter topic and a consumer group, named after a prefix so
/// that no earlier run used them (a broker keeps its topics while it runs).
pub struct Topics {
    pub input: String,
    pub output: String,
    pub dead: String,
    pub group: String,
}

impl Topics {
    /// `<prefix>-in`, `-out`, `-dlq` and `-group`, each made [`unique`].
    pub fn unique(prefix: &str) -> Topics {
        let name = |what: &str| unique(&format!("{prefix}-{what}"));
        Topics {
            input: name("in"),
            output: name("out"),
            dead: name("dlq"),
            group: name("group"),
        }
    }

    /// Creates the input and output topics with `partitions` partitions, the dead-letter topic
    /// with one.
    pub fn create(&self, bootstrap: &str, partitions: i32) {
        create_topics(
            bootstrap,
            &[
                (&self.input, partitions),
                (&self.output, partitions),
                (&self.dead, 1),
            ],
        );
    }

    /// The config of a pipeline from the input to the output, all on `bootstrap`.
    pub fn setup<'a>(&'a self, bootstrap: &'a str) -> Setup<'a> {
        Setup {
            bootstrap,
            group: &self.group,
            input: &self.input,
            output: &self.output,
            dead_letter: &self.dead,
            dead_letter_brokers: None,
            output_brokers: None,
            pipeline: "",
        }
    }
}

/// Checks an output topic against what was sent: every id in `expected` (per input
/// partition, in input order) is there; first occurrences keep input order within each output
/// partition; a repeated id has identical bytes. Returns the number of duplicates.
pub fn check_output(events: &[Got], expected: &BTreeMap<i32, Vec<String>>) -> usize {
    let mut position: BTreeMap<&str, (i32, usize)> = BTreeMap::new();
    for (p, ids) in expected {
        for (i, id) in ids.iter().enumerate() {
            position.insert(id, (*p, i));
        }
    }
    let mut seen: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    // Per (output partition, input partition): index of the newest first occurrence.
    let mut last: BTreeMap<(i32, i32), usize> = BTreeMap::new();
    let mut duplicates = 0;
    for e in events {
        let uid = e.uid();
        let &(p, i) = position
            .get(uid.as_str())
            .unwrap_or_else(|| panic!("unexpected event {uid}"));
        if let Some(first) = seen.get(&uid) {
            assert_eq!(first, &e.value, "re-delivered {uid} differs");
            duplicates += 1;
            continue;
        }
        seen.insert(uid.clone(), e.value.clone());
        let k = (e.partition, p);
        if let Some(prev) = last.get(&k) {
            assert!(
                i > *prev,
                "order: {uid} (input {p}#{i}) after input {p}#{prev} in output partition {}",
                e.partition
            );
        }
        last.insert(k, i);
    }
    let missing: Vec<&&str> = position
        .keys()
        .filter(|id| !seen.contains_key(**id))
        .collect();
    assert!(
        missing.is_empty(),
        "{} of {} events missing, e.g. {:?}",
        missing.len(),
        position.len(),
        &missing[..missing.len().min(5)]
    );
    duplicates
}

/// Creates topics (name, partitions); ones that exist already are fine.
pub fn create_topics(bootstrap: &str, topics: &[(&str, i32)]) {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .expect("admin client");
    let new: Vec<NewTopic> = topics
        .iter()
        .map(|(n, p)| NewTopic::new(n, *p, TopicReplication::Fixed(1)))
        .collect();
    let results =
        futures_block_on(admin.create_topics(&new, &AdminOptions::new())).expect("create topics");
    for r in results {
        match r {
            Ok(_) => {}
            Err((_, rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((t, e)) => panic!("cannot create topic {t}: {e}"),
        }
    }
}

/// A name no earlier run used (a broker keeps its topics while it runs).
pub fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        nanos % 1_000_000_000_000
    )
}

/// `auditnorm run` as a child process, its stderr in a log file.
pub struct Binary {
    pub child: std::process::Child,
    pub log: std::path::PathBuf,
}

impl Binary {
    pub fn run(config: &Path, log: &Path) -> Binary {
        let err = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .expect("log file");
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_auditnorm"))
            .args(["run", "--config"])
            .arg(config)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(err)
            .spawn()
            .expect("start auditnorm");
        Binary {
            child,
            log: log.to_path_buf(),
        }
    }

    /// SIGTERM, then the exit status (within `timeout`).
    pub fn terminate(mut self, timeout: Duration) -> std::process::ExitStatus {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.child.try_wait().expect("wait") {
                return s;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!(
                    "auditnorm did not stop within {timeout:?}; log:\n{}",
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGKILL: no draining, no commit.
    pub fn kill9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

#[test]
fn records_get_the_ids_asked_for() {
    let t = templates();
    let r = record(&t, 3, "abc-1");
    let v: serde_json::Value = serde_json::from_str(&r).expect("JSON");
    assert_eq!(v["eventID"], "abc-1");
}
