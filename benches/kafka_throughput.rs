//! Kafka throughput, latency and memory: `auditnorm run` against a raw consume-and-produce
//! passthrough of the same records, with the same client settings, on a real broker.
//!
//!   cargo bench --bench kafka_throughput
//!
//! Broker: AUDITNORM_TEST_KAFKA, else one started with scripts/kafka-broker.sh (and stopped).
//! Length: AUDITNORM_BENCH_SECS (default 120) for the whole run; AUDITNORM_BENCH_RECORDS the
//! backlog of the throughput phases (default 5,000 per second of run).
//!
//! Phases, each a child process so that its peak RSS (VmHWM) and CPU time are its own:
//! 1. throughput: a backlog of CloudTrail records (~1.1 KB, 6 partitions) drained by the
//!    passthrough, then by auditnorm; events/s between the first and the last output record;
//! 2. latency: a feeder produces at a fifth of the slower rate (AUDITNORM_BENCH_LATENCY_RATE)
//!    for the rest of the time; latency is output-consume time minus produce time (carried in
//!    the record's eventID).
//!
//! The passthrough is this same executable, started with AUDITNORM_BENCH_ROLE=passthrough:
//! one task per partition (split partition queues), idempotent producer, offsets stored after
//! delivery in order, auto-commit; the client settings come from the same auditnorm config.

#[path = "../tests/kafka_common.rs"]
mod kc;
#[path = "support/mod.rs"]
mod support;

use auditnorm::config::{self, DestinationPlan, InputPlan};
use kc::{record, templates, Topics};
use rdkafka::consumer::stream_consumer::StreamPartitionQueue;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::{ClientConfig, ClientContext, Message, Offset, TopicPartitionList};
use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::{env_num, loadavg, now_micros, small_templates, Child, Script};

const PARTITIONS: i32 = 6;

/// Starts and stops the broker when AUDITNORM_TEST_KAFKA names none.
const BROKER: Script = Script("scripts/kafka-broker.sh");

fn main() {
    if std::env::var("AUDITNORM_BENCH_ROLE").as_deref() == Ok("passthrough") {
        passthrough_child();
        return;
    }
    // `cargo bench` passes `--bench`; a filter that does not match skips the run.
    if support::filtered_out("kafka_throughput") {
        return;
    }
    let secs = env_num("AUDITNORM_BENCH_SECS", 120).max(10);
    let records = env_num("AUDITNORM_BENCH_RECORDS", secs * 5000).max(10_000) as usize;
    let (broker, started) = match std::env::var("AUDITNORM_TEST_KAFKA") {
        Ok(b) if !b.trim().is_empty() => (b.trim().to_string(), false),
        // `start` reuses a broker the script already runs; stop only one started here.
        _ => {
            let was_running = BROKER.ok("status");
            (BROKER.run("start"), !was_running)
        }
    };
    let result = std::panic::catch_unwind(|| bench(&broker, secs, records));
    if started {
        BROKER.run("stop");
    }
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
}

/// The eventID carries the produce time, so that latency can be read off the output.
fn bench_id(p: i32, i: usize, sent_micros: u64) -> String {
    format!("b{p}-{i:09}-{sent_micros:016}")
}

fn sent_micros(value: &[u8]) -> Option<u64> {
    // Both outputs carry the id: the passthrough in `eventID`, auditnorm in `metadata.uid`.
    let text = std::str::from_utf8(value).ok()?;
    for key in ["\"eventID\":\"b", "\"uid\":\"b"] {
        if let Some(at) = text.find(key) {
            let id = &text[at + key.len() - 1..];
            let id = &id[..id.find('"')?];
            return id.rsplit('-').next()?.parse().ok();
        }
    }
    None
}

fn new_topics(broker: &str, tag: &str) -> Topics {
    let t = Topics::unique(&format!("bench-{tag}"));
    t.create(broker, PARTITIONS);
    t
}

fn write_config(dir: &Path, broker: &str, t: &Topics) -> PathBuf {
    let yaml = format!(
        "kafka:\n  brokers: [\"{broker}\"]\ninput:\n  kafka:\n    group: {g}\n    topics: [{{name: {i}, source: cloudtrail}}]\n    options: {fast}\noutput:\n  kafka: {{topic: {o}}}\ndead_letter:\n  kafka: {{topic: {d}}}\npipeline: {{commit_interval: 1s}}\n",
        g = t.group,
        i = t.input,
        o = t.output,
        d = t.dead,
        fast = kc::FAST_GROUP,
    );
    let path = dir.join(format!("{}.yaml", t.group));
    std::fs::write(&path, yaml).expect("config");
    path
}

impl Child {
    fn auditnorm(config: &Path, log: &Path) -> Child {
        Child::spawn(
            std::process::Command::new(env!("CARGO_BIN_EXE_auditnorm"))
                .args(["run", "--config"])
                .arg(config),
            log,
        )
    }

    fn passthrough(config: &Path, log: &Path) -> Child {
        Child::spawn(
            std::process::Command::new(std::env::current_exe().expect("own path"))
                .env("AUDITNORM_BENCH_ROLE", "passthrough")
                .env("AUDITNORM_BENCH_CONFIG", config),
            log,
        )
    }
}

struct Throughput {
    rate: f64,
    rss_kib: u64,
    cpu_secs: f64,
    records: usize,
}

/// Drains the backlog into `t.output` with the child. The rate comes from the output
/// records' own timestamps (first to last), so how often this polls does not matter; it polls
/// seldom, because tansu answers offset queries slowly and they slow its fetches down.
fn drain(child: Child, broker: &str, t: &Topics, backlog: usize) -> Throughput {
    // Completion is seen by reading the output (fetches), not by offset queries: on tansu,
    // polling ListOffsets while the pipeline runs slowed it down many times over.
    let reader = output_reader(broker, "bench-drain-reader", "100", &t.output);
    let deadline = Instant::now() + Duration::from_secs(1800);
    let mut seen = 0usize;
    while seen < backlog {
        if let Some(Ok(_)) = reader.poll(Duration::from_millis(200)) {
            seen += 1;
        }
        assert!(
            Instant::now() < deadline,
            "stuck at {seen} of {backlog}; see {}",
            child.log.display()
        );
    }
    drop(reader);
    // CPU time includes start-up and the idle moment before the stop: small next to the drain.
    let usage = child.usage();
    child.stop();
    let (first, last) = time_span(broker, &t.output);
    Throughput {
        rate: backlog as f64 / ((last - first) as f64 / 1000.0).max(1e-3),
        rss_kib: usage.0,
        cpu_secs: usage.1,
        records: backlog,
    }
}

/// A consumer of every partition of `topic` from its beginning, with its own `group` and
/// `fetch.wait.max.ms`.
fn output_reader(broker: &str, group: &str, fetch_wait_ms: &str, topic: &str) -> BaseConsumer {
    let reader: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", broker)
        .set("group.id", group)
        .set("fetch.wait.max.ms", fetch_wait_ms)
        .create()
        .expect("reader");
    let mut tpl = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .expect("tpl");
    }
    reader.assign(&tpl).expect("assign");
    reader
}

/// The earliest and the latest record timestamp (ms) of a topic.
fn time_span(broker: &str, topic: &str) -> (i64, i64) {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", broker)
        .set("group.id", "bench-span-reader")
        .create()
        .expect("reader");
    let (mut first, mut last) = (i64::MAX, i64::MIN);
    for p in 0..PARTITIONS {
        let (low, high) = c
            .fetch_watermarks(topic, p, Duration::from_secs(10))
            .expect("watermarks");
        if high <= low {
            continue;
        }
        for at in [low, high - 1] {
            {
                let mut tpl = TopicPartitionList::new();
                tpl.add_partition_offset(topic, p, Offset::Offset(at))
                    .expect("tpl");
                c.assign(&tpl).expect("assign");
            }
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Some(Ok(m)) = c.poll(Duration::from_millis(100)) {
                    if let Some(ts) = m.timestamp().to_millis() {
                        first = first.min(ts);
                        last = last.max(ts);
                    }
                    break;
                }
            }
        }
    }
    (first, last)
}

struct Latency {
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    samples: usize,
    rate: f64,
    rss_kib: u64,
}

/// Feeds `t.input` at `rate` records/s for `secs` while the child runs; latency from the output.
fn latency(child: Child, broker: &str, t: &Topics, rate: f64, secs: u64) -> Latency {
    let stop = Arc::new(AtomicBool::new(false));
    let feeder = {
        let stop = stop.clone();
        let broker = broker.to_string();
        let topic = t.input.clone();
        std::thread::spawn(move || {
            let templates = small_templates(templates());
            let producer = kc::producer(&broker);
            let start = Instant::now();
            let mut sent = 0usize;
            while !stop.load(Ordering::Relaxed) {
                let due = (start.elapsed().as_secs_f64() * rate) as usize;
                while sent < due {
                    let p = (sent % PARTITIONS as usize) as i32;
                    let rec = record(&templates, sent, &bench_id(p, sent, now_micros()));
                    let r = FutureRecord::<(), _>::to(&topic)
                        .partition(p)
                        .payload(rec.as_bytes());
                    if producer.send_result(r).is_err() {
                        producer.poll(Duration::from_millis(1));
                        continue;
                    }
                    sent += 1;
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            let _ = producer.flush(Duration::from_secs(10));
            sent
        })
    };
    let reader = output_reader(broker, "bench-latency-reader", "5", &t.output);
    let start = Instant::now();
    let warmup = Duration::from_secs(3);
    let mut samples: Vec<u64> = Vec::new();
    while start.elapsed() < Duration::from_secs(secs) {
        if let Some(Ok(m)) = reader.poll(Duration::from_millis(50)) {
            if start.elapsed() < warmup {
                continue;
            }
            if let Some(sent) = m.payload().and_then(sent_micros) {
                samples.push(now_micros().saturating_sub(sent));
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
    let sent = feeder.join().expect("feeder");
    let (rss_kib, _) = child.usage();
    child.stop();
    drop(reader);
    samples.sort_unstable();
    let q = |f: f64| {
        samples
            .get(((samples.len() as f64 * f) as usize).min(samples.len().saturating_sub(1)))
            .map_or(f64::NAN, |v| *v as f64 / 1000.0)
    };
    Latency {
        p50_ms: q(0.50),
        p99_ms: q(0.99),
        max_ms: samples.last().map_or(f64::NAN, |v| *v as f64 / 1000.0),
        samples: samples.len(),
        rate: sent as f64 / start.elapsed().as_secs_f64(),
        rss_kib,
    }
}

fn produce_backlog(broker: &str, topic: &str, records: usize) {
    let templates = small_templates(templates());
    let producer = kc::producer(broker);
    let per = records / PARTITIONS as usize;
    for p in 0..PARTITIONS {
        let recs: Vec<String> = (0..per)
            .map(|i| record(&templates, i, &bench_id(p, i, 0)))
            .collect();
        for chunk in recs.chunks(50_000) {
            kc::produce(&producer, topic, p, chunk);
        }
    }
}

fn bench(broker: &str, secs: u64, records: usize) {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("kafka-bench");
    std::fs::create_dir_all(&dir).expect("dir");
    let records = records / PARTITIONS as usize * PARTITIONS as usize;
    let small = small_templates(templates());
    let bytes: usize = small.iter().map(String::len).sum::<usize>() / small.len();
    eprintln!(
        "kafka bench: broker {broker}, {records} records of ~{bytes} B over {PARTITIONS} partitions, {secs}s run, load average {}",
        loadavg()
    );
    let run_start = Instant::now();
    // A child reads its config from a file: written to `dir`, next to the child's log.
    let start = |child: fn(&Path, &Path) -> Child, t: &Topics, log: &str| {
        child(&write_config(&dir, broker, t), &dir.join(log))
    };

    // 1. Throughput: one backlog, read by both (each with its own group and output topic).
    let backlog = new_topics(broker, "tp");
    let t0 = Instant::now();
    produce_backlog(broker, &backlog.input, records);
    eprintln!("backlog produced in {:.1}s", t0.elapsed().as_secs_f64());
    let pt_topics = Topics {
        input: backlog.input.clone(),
        output: backlog.output.clone(),
        dead: backlog.dead.clone(),
        group: kc::unique("bench-pt-group"),
    };
    let only = std::env::var("AUDITNORM_BENCH_ONLY").unwrap_or_default();
    let pt = if only == "auditnorm" {
        Throughput {
            rate: f64::NAN,
            rss_kib: 0,
            cpu_secs: f64::NAN,
            records,
        }
    } else {
        let child = start(Child::passthrough, &pt_topics, "passthrough.log");
        drain(child, broker, &pt_topics, records)
    };
    eprintln!(
        "passthrough drained {} records: {:.0}/s",
        pt.records, pt.rate
    );
    let an_topics = Topics {
        input: backlog.input.clone(),
        ..new_topics(broker, "an")
    };
    let child = start(Child::auditnorm, &an_topics, "auditnorm.log");
    let an = drain(child, broker, &an_topics, records);
    eprintln!("auditnorm drained {} records: {:.0}/s", an.records, an.rate);

    // 2. Latency at a fifth of the slower rate (AUDITNORM_BENCH_LATENCY_RATE to choose), for
    //    the rest of the run, half each. The feeder, the reader and the broker share the
    //    machine with the pipeline, so near saturation this would measure queueing only.
    let rest = secs.saturating_sub(run_start.elapsed().as_secs()).max(20) / 2;
    let rate = std::env::var("AUDITNORM_BENCH_LATENCY_RATE")
        .ok()
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or((pt.rate.min(an.rate) / 5.0).max(100.0));
    let measure_latency = |child, tag, log| {
        let t = new_topics(broker, tag);
        latency(start(child, &t, log), broker, &t, rate, rest)
    };
    let lat_pt = measure_latency(Child::passthrough, "lpt", "passthrough-latency.log");
    let lat_an = measure_latency(Child::auditnorm, "lan", "auditnorm-latency.log");

    println!();
    println!("kafka_throughput ({records} records of ~{bytes} B, {PARTITIONS} partitions, broker {broker}; run {:.0}s; load average at end {})", run_start.elapsed().as_secs_f64(), loadavg());
    for (name, t) in [("passthrough:", &pt), ("auditnorm:", &an)] {
        println!(
            "  {name:<13}{:>9.0} events/s   {:>7.0} events per CPU-second   peak RSS {:>6.1} MiB",
            t.rate,
            t.records as f64 / t.cpu_secs.max(1e-3),
            t.rss_kib as f64 / 1024.0
        );
    }
    println!(
        "  ratio auditnorm / passthrough: {:.0}% (target >= 50%)",
        100.0 * an.rate / pt.rate
    );
    for (name, l) in [("passthrough", &lat_pt), ("auditnorm", &lat_an)] {
        println!(
            "  latency {name:<11} at {:.0} records/s over {rest}s: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms ({} samples), peak RSS {:.1} MiB",
            l.rate,
            l.p50_ms,
            l.p99_ms,
            l.max_ms,
            l.samples,
            l.rss_kib as f64 / 1024.0
        );
    }
}

// ---------------------------------------------------------------------------------------------
// The passthrough child
// ---------------------------------------------------------------------------------------------

struct PtContext {
    consumer: std::sync::OnceLock<std::sync::Weak<PtConsumer>>,
    producer: Arc<FutureProducer>,
    out: String,
    handle: tokio::runtime::Handle,
}

impl ClientContext for PtContext {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, message: &str) {
        auditnorm::sink::kafka::log_line("passthrough consumer", level, fac, message);
    }
}

impl ConsumerContext for PtContext {
    /// Split each partition before librdkafka assigns it, as auditnorm does.
    fn pre_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = rebalance {
            let Some(consumer) = self.consumer.get().and_then(|w| w.upgrade()) else {
                return;
            };
            for e in tpl.elements() {
                let q = consumer
                    .split_partition_queue(e.topic(), e.partition())
                    .expect("split");
                self.handle.spawn(forward(
                    q,
                    consumer.clone(),
                    self.producer.clone(),
                    self.out.clone(),
                    e.topic().to_string(),
                    e.partition(),
                ));
            }
        }
    }
}

type PtConsumer = StreamConsumer<PtContext>;

/// Consume, produce the same bytes to the same partition number, store the offset once
/// delivered, in order: the least any at-least-once forwarder does.
fn passthrough_child() {
    let path = std::env::var("AUDITNORM_BENCH_CONFIG").expect("AUDITNORM_BENCH_CONFIG");
    let plan = config::load(Path::new(&path)).expect("config");
    let InputPlan::Kafka(input) = plan.input else {
        panic!("the bench config has a Kafka input")
    };
    let DestinationPlan::Kafka(output) = plan.output else {
        panic!("kafka output")
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    // On a worker, as auditnorm's input driver runs (`pipeline::run` spawns it).
    let main = runtime.spawn(async move {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("sig");
        let producer: FutureProducer = output.client.to_client_config().create().expect("producer");
        let consumer: Arc<PtConsumer> = Arc::new(
            input
                .client
                .to_client_config()
                .create_with_context(PtContext {
                    consumer: std::sync::OnceLock::new(),
                    producer: Arc::new(producer),
                    out: output.topic.clone(),
                    handle: tokio::runtime::Handle::current(),
                })
                .expect("consumer"),
        );
        let _ = consumer.context().consumer.set(Arc::downgrade(&consumer));
        let topics: Vec<&str> = input.topics.iter().map(|(t, _)| t.as_str()).collect();
        consumer.subscribe(&topics).expect("subscribe");
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        loop {
            tokio::select! {
                _ = term.recv() => break,
                m = consumer.recv() => {
                    if let Ok(m) = m {
                        panic!("message of {}/{} on the main queue", m.topic(), m.partition());
                    }
                }
                _ = tick.tick() => {}
            }
        }
        let _ = consumer.commit_consumer_state(rdkafka::consumer::CommitMode::Sync);
        std::process::exit(0);
    });
    let _ = runtime.block_on(main);
}

async fn forward(
    queue: StreamPartitionQueue<PtContext>,
    consumer: Arc<PtConsumer>,
    producer: Arc<FutureProducer>,
    out: String,
    topic: String,
    partition: i32,
) {
    let mut fifo: VecDeque<(i64, rdkafka::producer::DeliveryFuture)> = VecDeque::new();
    let mut last_store = Instant::now();
    let mut stored = -1;
    enum Step {
        Delivered(bool),
        Read(Vec<u8>, i64),
        Tick,
    }
    // Like an auditnorm lane, a 100 ms tick (offsets are stored on it).
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    loop {
        let has = !fifo.is_empty();
        let room = fifo.len() < 2000;
        let front = fifo.front_mut().map(|(_, f)| f);
        let step = tokio::select! {
            biased;
            r = async { match front { Some(f) => f.await, None => std::future::pending().await } }, if has => {
                Step::Delivered(matches!(r, Ok(Ok(_))))
            }
            _ = tick.tick() => Step::Tick,
            m = queue.recv(), if room => {
                let m = m.expect("message");
                Step::Read(m.payload().unwrap_or_default().to_vec(), m.offset())
            }
        };
        match step {
            Step::Delivered(ok) => {
                let (offset, _) = fifo.pop_front().expect("front");
                assert!(ok, "delivery failed");
                stored = offset;
            }
            Step::Read(payload, offset) => {
                loop {
                    match producer.send_result(
                        FutureRecord::<(), _>::to(&out)
                            .partition(partition)
                            .payload(&payload),
                    ) {
                        Ok(f) => {
                            fifo.push_back((offset, f));
                            break;
                        }
                        Err(_) => tokio::time::sleep(Duration::from_millis(1)).await,
                    }
                }
                tokio::task::coop::consume_budget().await;
            }
            Step::Tick => {}
        }
        if stored >= 0 && last_store.elapsed() > Duration::from_millis(100) {
            let _ = consumer.store_offset(&topic, partition, stored);
            last_store = Instant::now();
        }
    }
}
