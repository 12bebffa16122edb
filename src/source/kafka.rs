//! Kafka as an input: a consumer group whose every assigned partition becomes a lane.
//!
//! - Assignment (`pre_rebalance`, before librdkafka applies it): for each new partition, split
//!   its messages into a queue of their own (`split_partition_queue`) and start a lane on it
//!   ([`crate::pipeline::Lanes::start`]). Splitting before the assignment leaves no moment in
//!   which a fetched message could reach the main queue instead of its lane.
//! - Revocation (`pre_rebalance`, before librdkafka lets the partitions go): stop those lanes,
//!   wait until they have drained and stored their offsets, then commit synchronously.
//! - Offsets: `enable.auto.offset.store=false`; a lane stores the offset of its commit point
//!   ([`KafkaCheckpoint`]); librdkafka commits stored offsets every `commit_interval`, and
//!   [`drive`] commits once more when it stops.
//! - The main consumer queue carries only events (rebalances, errors, statistics); it is polled
//!   at least twice a second so that a rebalance is served even when every lane is busy.
//! - Telemetry: librdkafka's statistics (`statistics.interval.ms`, 5 s unless set) give each
//!   lane's consumer lag ([`telemetry::lane_lag`]) and the broker connection state; with the
//!   "all brokers down" error they drive [`crate::telemetry::Health::set_connected`] (/readyz).

use crate::config::KafkaInputPlan;
use crate::pipeline::{Checkpointer, LaneError, LaneSource, LaneSpec, Lanes, PipelineError, Unit};
use crate::record::{Position, SourceKind};
use crate::sink::kafka::{error_line, log_line};
use crate::telemetry;
use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::stream_consumer::StreamPartitionQueue;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::{Message, TopicPartitionList};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;
use tokio::sync::{mpsc, watch};

pub type KafkaConsumer = StreamConsumer<KafkaContext>;

/// The consumer's context: it turns rebalances into lanes started and stopped.
pub struct KafkaContext {
    /// Set once the consumer exists; a weak link, so that the consumer can be dropped.
    consumer: OnceLock<Weak<KafkaConsumer>>,
    lanes: Arc<Lanes>,
    topics: HashMap<String, (Arc<str>, Option<SourceKind>)>,
    partition_counts: Mutex<HashMap<String, i32>>,
    /// Problems that must stop the pipeline (a queue that could not be split).
    fatal: mpsc::UnboundedSender<String>,
}

impl ClientContext for KafkaContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        log_line("consumer", level, fac, message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        if error.rdkafka_error_code() == Some(RDKafkaErrorCode::AllBrokersDown) {
            self.lanes.health().set_connected(false);
        }
        error_line("consumer", &error, reason);
    }

    /// Every `statistics.interval.ms`: connected when a broker is up; lag of running lanes.
    fn stats(&self, stats: rdkafka::Statistics) {
        let up = stats.brokers.values().any(|b| b.state == "UP");
        self.lanes.health().set_connected(up);
        for (topic, t) in &stats.topics {
            for (partition, p) in &t.partitions {
                if *partition < 0 || p.consumer_lag < 0 {
                    continue;
                }
                let lane = lane_name(topic, *partition);
                if self.lanes.health().has_lane(&lane) {
                    telemetry::lane_lag(&lane, p.consumer_lag);
                }
            }
        }
    }
}

impl ConsumerContext for KafkaContext {
    /// Runs before librdkafka applies the rebalance.
    fn pre_rebalance(&self, base: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(tpl) => {
                // Before the assignment, so that no fetch can start first: librdkafka (2.x)
                // keeps a queue forwarding made by the application (RD_KAFKA_Q_F_FWD_APP)
                // when the partition's fetcher starts, so every message of the partition goes
                // to its lane and none to the main queue.
                // An assignment came from the group coordinator: connected.
                self.lanes.health().set_connected(true);
                for e in tpl.elements() {
                    self.start_lane(base, e.topic(), e.partition());
                }
            }
            Rebalance::Revoke(tpl) => {
                let names: Vec<Arc<str>> = tpl
                    .elements()
                    .iter()
                    .map(|e| lane_name(e.topic(), e.partition()))
                    .collect();
                // Stop reading, drain, store offsets (guarantee 5) ...
                self.lanes.stop_blocking(&names);
                // ... and commit before the partitions go to another member.
                commit(base);
            }
            Rebalance::Error(e) => telemetry::kafka_rebalance_failed(&e.to_string()),
        }
    }

    fn commit_callback(&self, result: KafkaResult<()>, _offsets: &TopicPartitionList) {
        match result {
            Ok(()) | Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
            Err(e) => telemetry::kafka_commit_failed(&e.to_string()),
        }
    }
}

fn lane_name(topic: &str, partition: i32) -> Arc<str> {
    format!("{topic}/{partition}").into()
}

fn commit<C: ConsumerContext, K: Consumer<C>>(consumer: &K) {
    match consumer.commit_consumer_state(CommitMode::Sync) {
        Ok(()) | Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
        Err(e) => telemetry::kafka_commit_failed(&e.to_string()),
    }
}

impl KafkaContext {
    fn start_lane(&self, base: &BaseConsumer<Self>, topic: &str, partition: i32) {
        let Some(consumer) = self.consumer.get().and_then(Weak::upgrade) else {
            return;
        };
        let Some((topic_name, source)) = self.topics.get(topic).cloned() else {
            let _ = self.fatal.send(format!(
                "assigned partition {topic}/{partition} of a topic not subscribed"
            ));
            return;
        };
        let Some(queue) = consumer.split_partition_queue(topic, partition) else {
            let _ = self.fatal.send(format!(
                "cannot open a queue for partition {topic}/{partition}"
            ));
            return;
        };
        let count = self.partition_count(base, topic);
        let spec = LaneSpec {
            name: lane_name(topic, partition),
            source,
            ordinal: count.map(|n| (partition, n)),
        };
        let lane_source = KafkaLane {
            queue,
            topic: topic_name.clone(),
            lane: spec.name.clone(),
        };
        let ckpt = KafkaCheckpoint {
            consumer,
            topic: topic_name,
            partition,
        };
        self.lanes.start(spec, lane_source, ckpt);
    }

    /// The input topic's partition count (for `partitioning: auto`), read once per topic.
    fn partition_count(&self, base: &BaseConsumer<Self>, topic: &str) -> Option<i32> {
        let mut counts = self
            .partition_counts
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(n) = counts.get(topic) {
            return Some(*n);
        }
        match base.fetch_metadata(Some(topic), Duration::from_secs(10)) {
            Ok(md) => {
                let n = md
                    .topics()
                    .iter()
                    .find(|t| t.name() == topic)
                    .map(|t| t.partitions().len() as i32)
                    .filter(|n| *n > 0)?;
                counts.insert(topic.to_string(), n);
                Some(n)
            }
            Err(e) => {
                telemetry::kafka_partition_count_unknown(topic, &e.to_string());
                None
            }
        }
    }
}

/// One partition's messages, in offset order.
pub struct KafkaLane {
    queue: StreamPartitionQueue<KafkaContext>,
    topic: Arc<str>,
    lane: Arc<str>,
}

impl LaneSource for KafkaLane {
    async fn next(&mut self) -> Option<Unit> {
        {
            loop {
                match self.queue.recv().await {
                    Ok(m) => {
                        return Some(Unit {
                            position: Position::Kafka {
                                topic: self.topic.clone(),
                                partition: m.partition(),
                                offset: m.offset(),
                                index: None,
                            },
                            bytes: m.payload().unwrap_or_default().to_vec(),
                        })
                    }
                    // Fetch errors are reported here and retried by librdkafka itself.
                    Err(e) => telemetry::kafka_fetch_error(&self.lane, &e.to_string()),
                }
            }
        }
    }
}

/// Stores a lane's commit point as its partition's next offset; librdkafka commits it.
pub struct KafkaCheckpoint {
    consumer: Arc<KafkaConsumer>,
    topic: Arc<str>,
    partition: i32,
}

impl Checkpointer for KafkaCheckpoint {
    fn checkpoint(&mut self, upto: &Position) -> Result<(), String> {
        match upto {
            // librdkafka stores offset + 1: the next record to read.
            Position::Kafka { offset, .. } => self
                .consumer
                .store_offset(&self.topic, self.partition, *offset)
                .map_err(|e| e.to_string()),
            other => Err(format!("not a Kafka position: {other}")),
        }
    }
}

/// Runs the consumer until `stop` turns true or a lane fails for good; then stops every lane
/// (drain, store offsets), commits and leaves the group.
pub async fn drive(
    plan: KafkaInputPlan,
    lanes: Arc<Lanes>,
    mut lane_failures: mpsc::UnboundedReceiver<LaneError>,
    mut stop: watch::Receiver<bool>,
) -> Result<(), PipelineError> {
    let (fatal_tx, mut fatal_rx) = mpsc::unbounded_channel();
    let topics = plan
        .topics
        .iter()
        .map(|(t, kind)| (t.clone(), (Arc::<str>::from(t.as_str()), *kind)))
        .collect();
    let context = KafkaContext {
        consumer: OnceLock::new(),
        lanes: lanes.clone(),
        topics,
        partition_counts: Mutex::new(HashMap::new()),
        fatal: fatal_tx,
    };
    let consumer: KafkaConsumer = plan
        .client
        .to_client_config()
        .create_with_context(context)
        .map_err(|e| PipelineError::Input(format!("cannot create the Kafka consumer: {e}")))?;
    let consumer = Arc::new(consumer);
    let _ = consumer.context().consumer.set(Arc::downgrade(&consumer));
    let names: Vec<&str> = plan.topics.iter().map(|(t, _)| t.as_str()).collect();
    consumer
        .subscribe(&names)
        .map_err(|e| PipelineError::Input(format!("cannot subscribe to {names:?}: {e}")))?;
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    let result = loop {
        tokio::select! {
            _ = stop.wait_for(|s| *s) => break Ok(()),
            Some(e) = lane_failures.recv() => break Err(PipelineError::Lane(e)),
            Some(e) = fatal_rx.recv() => break Err(PipelineError::Input(e)),
            m = consumer.recv() => match m {
                Ok(m) => {
                    break Err(PipelineError::Input(format!(
                        "a message of {}/{} arrived outside its lane's queue",
                        m.topic(),
                        m.partition()
                    )))
                }
                Err(e) => {
                    if let Some((code, reason)) = consumer.client().fatal_error() {
                        break Err(PipelineError::Input(format!("fatal consumer error: {code}: {reason}")));
                    }
                    telemetry::kafka_consumer_error(&e.to_string());
                }
            },
            // Serve the main queue (rebalances) even when nothing arrives on it.
            _ = tick.tick() => {}
        }
    };
    // Guarantee 5: stop reading, drain, store offsets, commit, leave.
    lanes.stop_all().await;
    let _ = tokio::task::spawn_blocking(move || {
        commit(&*consumer);
        consumer.unsubscribe();
        // Dropping the last handle closes the consumer (it leaves the group).
        drop(consumer);
    })
    .await;
    result
}
