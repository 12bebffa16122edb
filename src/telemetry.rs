//! Telemetry: every metric name and every log-line event name, in one place; the Prometheus
//! recorder; `/metrics`, `/healthz` and `/readyz` (hyper); the `tracing` subscriber.
//!
//! After Vector's `internal_events`: each thing worth counting or saying is one function here
//! that updates its metric and writes its log line together, so that a name is never spelled
//! twice. Names follow Prometheus conventions: `auditnorm_` prefix, counters end in `_total`,
//! durations in `_seconds`; label values come from closed sets (lane names are bounded by the
//! number of partitions or shards, rule names by the rule set); never a record field or an
//! error message.
//!
//! Per-record work in a lane goes through [`LaneMetrics`], which holds registered handles (an
//! atomic add per counter, no label lookup); gauges and redaction counts are published on the
//! lane's checkpoint tick ([`crate::pipeline::CHECKPOINT_EVERY`]), not per record.
//!
//! # For inputs (Kafka here, Kinesis next)
//! - readiness: [`Health::set_connected`] when the input reaches (or loses) its brokers or
//!   stream; lanes count as assigned while they run (the pipeline registers them); an input that
//!   holds no lanes on purpose and should still be ready calls [`Health::set_idle_ok`]. The
//!   input gets the pipeline's [`Health`] from [`crate::pipeline::Lanes::health`].
//! - lag: [`lane_lag`] with the lane's name, whenever the input learns it (off the hot path).

use crate::error::{ErrorCode, Stage};
use crate::record::{Position, SourceKind};
use crate::redact::RedactionCounts;
use metrics::{Counter, Gauge, Histogram};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------------------------
// Names
// ---------------------------------------------------------------------------------------------

/// Metric names.
pub mod metric {
    pub const BUILD_INFO: &str = "auditnorm_build_info";
    pub const RECORDS_RECEIVED: &str = "auditnorm_records_received_total";
    pub const RECORDS_ACKNOWLEDGED: &str = "auditnorm_records_acknowledged_total";
    pub const UNITS_SKIPPED: &str = "auditnorm_units_skipped_total";
    pub const EVENTS_EMITTED: &str = "auditnorm_events_emitted_total";
    pub const DEAD_LETTERS: &str = "auditnorm_dead_letters_total";
    pub const REDACTIONS: &str = "auditnorm_redactions_total";
    pub const DELIVERY_ERRORS: &str = "auditnorm_delivery_errors_total";
    pub const DELIVERY_RETRIES: &str = "auditnorm_delivery_retries_total";
    pub const COMMIT_ERRORS: &str = "auditnorm_commit_errors_total";
    pub const LANES_STARTED: &str = "auditnorm_lanes_started_total";
    pub const LANES_STOPPED: &str = "auditnorm_lanes_stopped_total";
    pub const LANES_RUNNING: &str = "auditnorm_lanes_running";
    pub const READY: &str = "auditnorm_ready";
    pub const INPUT_CONNECTED: &str = "auditnorm_input_connected";
    pub const LANE_IN_FLIGHT: &str = "auditnorm_lane_in_flight_records";
    pub const LANE_CHECKPOINT_POSITION: &str = "auditnorm_lane_checkpoint_position";
    pub const LANE_LAG: &str = "auditnorm_lane_lag_records";
    pub const NORMALIZE_DURATION: &str = "auditnorm_normalize_duration_seconds";
    pub const CHECKPOINT_LATENCY: &str = "auditnorm_checkpoint_latency_seconds";
    pub const LANE_BEHIND: &str = "auditnorm_lane_behind_seconds";
    pub const KINESIS_READ_RETRIES: &str = "auditnorm_kinesis_read_retries_total";
    pub const KINESIS_LEASES_HELD: &str = "auditnorm_kinesis_leases_held";
    pub const KINESIS_LEASES_TAKEN: &str = "auditnorm_kinesis_leases_taken_total";
    pub const KINESIS_LEASES_LOST: &str = "auditnorm_kinesis_leases_lost_total";
    pub const KINESIS_SHARDS_ENDED: &str = "auditnorm_kinesis_shards_ended_total";
    pub const KINESIS_LEASE_ERRORS: &str = "auditnorm_kinesis_lease_errors_total";
}

/// Label keys. Each has a bounded set of values.
pub mod label {
    /// A lane's name (`<topic>/<partition>`, a shard id): bounded by partitions or shards.
    pub const LANE: &str = "lane";
    /// A source kind (`cloudtrail`, ...): [`crate::record::SourceKind`].
    pub const SOURCE: &str = "source";
    /// An OCSF class name (`api_activity`, ...): [`crate::ocsf::CLASSES`].
    pub const CLASS: &str = "class";
    /// [`crate::error::Stage`].
    pub const STAGE: &str = "stage";
    /// [`crate::error::ErrorCode`].
    pub const ERROR_CODE: &str = "error_code";
    /// A redaction rule's name: the compiled rule set.
    pub const RULE: &str = "rule";
    /// `output` or `dead_letter`.
    pub const DESTINATION: &str = "destination";
    /// How a lane ended: `drained`, `abandoned`, `finished`, `failed`, `panicked`.
    pub const REASON: &str = "reason";
    /// The crate version.
    pub const VERSION: &str = "version";
}

/// Every label key a metric may carry.
pub const LABELS: &[&str] = &[
    label::LANE,
    label::SOURCE,
    label::CLASS,
    label::STAGE,
    label::ERROR_CODE,
    label::RULE,
    label::DESTINATION,
    label::REASON,
    label::VERSION,
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricKind {
    Counter,
    Gauge,
    Histogram,
}

/// One metric: its name, kind, label keys and help text.
#[derive(Debug)]
pub struct MetricDef {
    pub name: &'static str,
    pub kind: MetricKind,
    pub labels: &'static [&'static str],
    pub help: &'static str,
}

const fn def(
    name: &'static str,
    kind: MetricKind,
    labels: &'static [&'static str],
    help: &'static str,
) -> MetricDef {
    MetricDef {
        name,
        kind,
        labels,
        help,
    }
}

use MetricKind::{Counter as C, Gauge as G, Histogram as H};

/// The catalogue: every metric auditnorm emits.
pub const METRICS: &[MetricDef] = &[
    def(metric::BUILD_INFO, G, &[label::VERSION], "Always 1; the version in a label."),
    def(metric::RECORDS_RECEIVED, C, &[label::LANE],
        "Units (Kafka messages, Kinesis records, lines) read from a lane. Re-sends after a retry are not counted again."),
    def(metric::RECORDS_ACKNOWLEDGED, C, &[label::LANE],
        "Units whose every event and dead letter was acknowledged: the commit point moved past them."),
    def(metric::UNITS_SKIPPED, C, &[],
        "Units that hold no records on purpose (digest files, control messages)."),
    def(metric::EVENTS_EMITTED, C, &[label::SOURCE, label::CLASS],
        "OCSF events acknowledged by the output (events sent again after a retry included)."),
    def(metric::DEAD_LETTERS, C, &[label::STAGE, label::ERROR_CODE],
        "Dead letters acknowledged by the dead-letter destination (again after a retry included)."),
    def(metric::REDACTIONS, C, &[label::RULE],
        "Secrets replaced, by redaction rule (events and dead letters; again when a record is normalized again after a retry)."),
    def(metric::DELIVERY_ERRORS, C, &[label::DESTINATION],
        "Writes to the output or the dead-letter destination that failed (each leads to a lane retry)."),
    def(metric::DELIVERY_RETRIES, C, &[label::DESTINATION],
        "Retries after a failed write or a failed connection: a lane sending again from its commit point, or opening a destination again."),
    def(metric::COMMIT_ERRORS, C, &[],
        "Commit points that could not be made durable: a lane checkpoint (offset store, file flush) or a Kafka consumer commit."),
    def(metric::LANES_STARTED, C, &[], "Lanes started (partitions or shards assigned)."),
    def(metric::LANES_STOPPED, C, &[label::REASON],
        "Lanes stopped, by how: drained, abandoned (in-flight records left for the next owner), finished, failed, panicked."),
    def(metric::LANES_RUNNING, G, &[], "Lanes running now."),
    def(metric::READY, G, &[], "1 when /readyz answers 200."),
    def(metric::INPUT_CONNECTED, G, &[], "1 when the input reports a connection to its brokers or stream."),
    def(metric::LANE_IN_FLIGHT, G, &[label::LANE],
        "Records read from the lane and not yet acknowledged (0 once the lane stopped)."),
    def(metric::LANE_CHECKPOINT_POSITION, G, &[label::LANE],
        "Position of the newest record handed to the input's checkpointer (Kafka: its offset, stored and then committed by librdkafka within pipeline.commit_interval; files: the line). Not set for Kinesis sequence numbers."),
    def(metric::LANE_LAG, G, &[label::LANE],
        "Records in the lane after its committed position, as the input reports it (Kafka: librdkafka's consumer_lag; 0 once the lane stopped)."),
    def(metric::NORMALIZE_DURATION, H, &[],
        "Time to normalize one unit (parse, unwrap, map, validate, redact, encode)."),
    def(metric::CHECKPOINT_LATENCY, H, &[],
        "Time from reading a record to handing its position to the input's checkpointer, for the newest record of each checkpoint."),
    def(metric::LANE_BEHIND, G, &[label::LANE],
        "How far behind the newest record of its shard the lane's last read was (Kinesis MillisBehindLatest, in seconds)."),
    def(metric::KINESIS_READ_RETRIES, C, &[label::REASON],
        "GetRecords / GetShardIterator / SubscribeToShard calls retried, by reason: throttled, error. Nothing is skipped."),
    def(metric::KINESIS_LEASES_HELD, G, &[], "Shard leases this replica holds."),
    def(metric::KINESIS_LEASES_TAKEN, C, &[label::REASON],
        "Shard leases taken, by reason: expired (unowned, or its owner stopped renewing), stolen (to balance the load)."),
    def(metric::KINESIS_LEASES_LOST, C, &[],
        "Shard leases this replica found taken by another (its lane is stopped; the new owner reads again from the checkpoint)."),
    def(metric::KINESIS_SHARDS_ENDED, C, &[],
        "Closed shards read to their end and checkpointed SHARD_END (their children may be read now)."),
    def(metric::KINESIS_LEASE_ERRORS, C, &[],
        "Lease-table rounds or shard listings that failed (leases not renewed past lease_duration are given up)."),
];

/// Log-line event names: the `event` field of every line.
pub mod event {
    pub const STARTING: &str = "starting";
    pub const STOPPING: &str = "stopping";
    pub const STOPPED: &str = "stopped";
    pub const FAILED: &str = "failed";
    pub const CONFIG_NOTICE: &str = "config_notice";
    pub const CONFIG_INVALID: &str = "config_invalid";
    pub const METRICS_LISTENING: &str = "metrics_listening";
    pub const METRICS_ERROR: &str = "metrics_error";
    pub const DESTINATION_CONNECT_RETRY: &str = "destination_connect_retry";
    pub const DESTINATION_ERROR: &str = "destination_error";
    pub const UNIT_SKIPPED: &str = "unit_skipped";
    pub const CHECKPOINT_FAILED: &str = "checkpoint_failed";
    pub const LANE_RETRY: &str = "lane_retry";
    pub const LANE_STARTED: &str = "lane_started";
    pub const LANE_STOPPED: &str = "lane_stopped";
    pub const LANE_FAILED: &str = "lane_failed";
    pub const KAFKA_CLIENT_LOG: &str = "kafka_client_log";
    pub const KAFKA_CLIENT_ERROR: &str = "kafka_client_error";
    pub const KAFKA_REBALANCE_FAILED: &str = "kafka_rebalance_failed";
    pub const KAFKA_COMMIT_FAILED: &str = "kafka_commit_failed";
    pub const KAFKA_CONSUMER_ERROR: &str = "kafka_consumer_error";
    pub const KAFKA_FETCH_ERROR: &str = "kafka_fetch_error";
    pub const KAFKA_PARTITION_COUNT_UNKNOWN: &str = "kafka_partition_count_unknown";
    pub const KINESIS_STARTED: &str = "kinesis_started";
    pub const KINESIS_LEASE_TAKEN: &str = "kinesis_lease_taken";
    pub const KINESIS_LEASE_LOST: &str = "kinesis_lease_lost";
    pub const KINESIS_SHARD_ENDED: &str = "kinesis_shard_ended";
    pub const KINESIS_READ_RETRY: &str = "kinesis_read_retry";
    pub const KINESIS_LEASE_ERROR: &str = "kinesis_lease_error";
    pub const KINESIS_NOTICE: &str = "kinesis_notice";
}

/// Histogram buckets (seconds).
const NORMALIZE_BUCKETS: &[f64] = &[
    0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025,
    0.1, 1.0,
];
const CHECKPOINT_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];

// ---------------------------------------------------------------------------------------------
// Recorder
// ---------------------------------------------------------------------------------------------

static RECORDER: OnceLock<Result<metrics_exporter_prometheus::PrometheusHandle, String>> =
    OnceLock::new();

fn builder() -> metrics_exporter_prometheus::PrometheusRecorder {
    use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
    let b = PrometheusBuilder::new();
    let b = b
        .set_buckets_for_metric(
            Matcher::Full(metric::NORMALIZE_DURATION.into()),
            NORMALIZE_BUCKETS,
        )
        .and_then(|b| {
            b.set_buckets_for_metric(
                Matcher::Full(metric::CHECKPOINT_LATENCY.into()),
                CHECKPOINT_BUCKETS,
            )
        })
        .expect("bucket lists are not empty");
    b.build_recorder()
}

/// Installs the process-wide Prometheus recorder (once; later calls return the same handle).
pub fn install_recorder() -> Result<metrics_exporter_prometheus::PrometheusHandle, String> {
    RECORDER
        .get_or_init(|| {
            let recorder = builder();
            let handle = recorder.handle();
            metrics::set_global_recorder(recorder)
                .map_err(|e| format!("cannot install the metrics recorder: {e}"))?;
            describe();
            metrics::gauge!(metric::BUILD_INFO, label::VERSION => env!("CARGO_PKG_VERSION"))
                .set(1.0);
            Ok(handle)
        })
        .clone()
}

/// Registers the help text of every metric with the current recorder.
pub fn describe() {
    for m in METRICS {
        match m.kind {
            MetricKind::Counter => metrics::describe_counter!(m.name, m.help),
            MetricKind::Gauge => metrics::describe_gauge!(m.name, m.help),
            MetricKind::Histogram => {
                metrics::describe_histogram!(m.name, metrics::Unit::Seconds, m.help)
            }
        }
    }
}

fn class_name(uid: i64) -> &'static str {
    crate::ocsf::CLASSES
        .iter()
        .find(|c| c.uid == uid)
        .map_or("other", |c| c.name)
}

// ---------------------------------------------------------------------------------------------
// Health
// ---------------------------------------------------------------------------------------------

/// What `/healthz` and `/readyz` answer from: one per pipeline run.
pub struct Health {
    epoch: Instant,
    stall_timeout: Duration,
    connected: AtomicBool,
    idle_ok: AtomicBool,
    mappings_loaded: AtomicBool,
    stopping: AtomicBool,
    lanes: Mutex<HashMap<Arc<str>, Arc<LaneHealth>>>,
    /// A lane task that panicked.
    died: Mutex<Option<Arc<str>>>,
}

/// One lane's liveness, written by its task on each checkpoint tick.
#[derive(Debug)]
pub struct LaneHealth {
    in_flight: AtomicU64,
    /// Milliseconds since [`Health`]'s epoch.
    last_progress: AtomicU64,
    last_tick: AtomicU64,
}

impl Health {
    /// `stall_timeout`: a lane with records in flight whose commit point has not moved (or
    /// that has not ticked at all) for this long fails `/healthz`.
    pub fn new(stall_timeout: Duration) -> Health {
        Health {
            epoch: Instant::now(),
            stall_timeout,
            connected: AtomicBool::new(false),
            idle_ok: AtomicBool::new(false),
            mappings_loaded: AtomicBool::new(false),
            stopping: AtomicBool::new(false),
            lanes: Mutex::new(HashMap::new()),
            died: Mutex::new(None),
        }
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// The input reached (`true`) or lost (`false`) its brokers or stream.
    pub fn set_connected(&self, connected: bool) {
        self.connected.store(connected, Relaxed);
    }

    pub fn connected(&self) -> bool {
        self.connected.load(Relaxed)
    }

    /// The input holds no lanes on purpose and is still ready (legitimately idle).
    pub fn set_idle_ok(&self, idle_ok: bool) {
        self.idle_ok.store(idle_ok, Relaxed);
    }

    pub fn set_mappings_loaded(&self, loaded: bool) {
        self.mappings_loaded.store(loaded, Relaxed);
    }

    /// Shutdown began: not ready any more (still live while draining).
    pub fn set_stopping(&self) {
        self.stopping.store(true, Relaxed);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Arc<str>, Arc<LaneHealth>>> {
        self.lanes.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A lane started: it counts as assigned until [`Health::deregister`].
    pub fn register(&self, lane: &Arc<str>) -> Arc<LaneHealth> {
        let now = self.now_ms();
        let h = Arc::new(LaneHealth {
            in_flight: AtomicU64::new(0),
            last_progress: AtomicU64::new(now),
            last_tick: AtomicU64::new(now),
        });
        self.lock().insert(lane.clone(), h.clone());
        h
    }

    /// A lane ended (only this registration: a lane of the same name may have started since).
    pub fn deregister(&self, lane: &Arc<str>, h: &Arc<LaneHealth>) {
        let mut lanes = self.lock();
        if lanes.get(lane).is_some_and(|x| Arc::ptr_eq(x, h)) {
            lanes.remove(lane);
        }
    }

    /// A lane's task panicked: `/healthz` fails from now on.
    pub fn lane_died(&self, lane: &Arc<str>) {
        *self.died.lock().unwrap_or_else(|p| p.into_inner()) = Some(lane.clone());
    }

    pub fn lanes_running(&self) -> usize {
        self.lock().len()
    }

    pub fn has_lane(&self, lane: &str) -> bool {
        self.lock().contains_key(lane)
    }

    /// The milliseconds-since-epoch clock lanes write into their [`LaneHealth`].
    pub fn clock(&self) -> HealthClock {
        HealthClock(self.epoch)
    }

    /// `Ok(text)` when live, `Err(reason)` otherwise.
    pub fn liveness(&self) -> Result<String, String> {
        if let Some(l) = self.died.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
            return Err(format!("lane {l}: its task died"));
        }
        let now = self.now_ms();
        let limit = self.stall_timeout.as_millis() as u64;
        let lanes = self.lock();
        let mut stalled: Vec<String> = Vec::new();
        for (name, h) in lanes.iter() {
            let since_tick = now.saturating_sub(h.last_tick.load(Relaxed));
            let since_progress = now.saturating_sub(h.last_progress.load(Relaxed));
            if since_tick > limit {
                stalled.push(format!("lane {name}: no tick for {}s", since_tick / 1000));
            } else if h.in_flight.load(Relaxed) > 0 && since_progress > limit {
                stalled.push(format!(
                    "lane {name}: {} records in flight, no progress for {}s",
                    h.in_flight.load(Relaxed),
                    since_progress / 1000
                ));
            }
        }
        if stalled.is_empty() {
            Ok(format!("ok: {} lanes\n", lanes.len()))
        } else {
            stalled.sort();
            Err(stalled.join("\n") + "\n")
        }
    }

    /// `Ok(text)` when ready, `Err(reason)` otherwise.
    pub fn readiness(&self) -> Result<String, String> {
        if self.stopping.load(Relaxed) {
            return Err("stopping\n".into());
        }
        if !self.mappings_loaded.load(Relaxed) {
            return Err("mapping tables not loaded\n".into());
        }
        if !self.connected() {
            return Err("input not connected\n".into());
        }
        let n = self.lanes_running();
        if n == 0 && !self.idle_ok.load(Relaxed) {
            return Err("connected, no lanes assigned\n".into());
        }
        Ok(format!("ok: {n} lanes\n"))
    }

    /// Gauges computed at scrape time.
    fn publish(&self) {
        metrics::gauge!(metric::LANES_RUNNING).set(self.lanes_running() as f64);
        metrics::gauge!(metric::READY).set(if self.readiness().is_ok() { 1.0 } else { 0.0 });
        metrics::gauge!(metric::INPUT_CONNECTED).set(if self.connected() { 1.0 } else { 0.0 });
    }
}

/// Milliseconds since a [`Health`]'s epoch.
#[derive(Debug, Clone, Copy)]
pub struct HealthClock(Instant);

impl HealthClock {
    fn now_ms(&self) -> u64 {
        self.0.elapsed().as_millis() as u64
    }
}

// ---------------------------------------------------------------------------------------------
// Per-lane metrics
// ---------------------------------------------------------------------------------------------

/// A lane's metric handles and health record; owned by the lane's task.
pub struct LaneMetrics {
    lane: Arc<str>,
    received: Counter,
    acknowledged: Counter,
    in_flight: Gauge,
    /// Registered at the first checkpoint (a series of 0 before would be a false position).
    position: Option<Gauge>,
    normalize: Histogram,
    checkpoint_latency: Histogram,
    /// (source, class_uid) -> counter; a handful per lane.
    events: Vec<((SourceKind, i64), Counter)>,
    dead_letters: Vec<((Stage, ErrorCode), Counter)>,
    /// Redactions published so far, by rule.
    redactions: Vec<(String, u64, Counter)>,
    health: Arc<LaneHealth>,
    clock: HealthClock,
    progressed: bool,
}

impl LaneMetrics {
    pub fn new(lane: &Arc<str>, health: Arc<LaneHealth>, clock: HealthClock) -> LaneMetrics {
        let l = lane.to_string();
        LaneMetrics {
            lane: lane.clone(),
            received: metrics::counter!(metric::RECORDS_RECEIVED, label::LANE => l.clone()),
            acknowledged: metrics::counter!(metric::RECORDS_ACKNOWLEDGED, label::LANE => l.clone()),
            in_flight: metrics::gauge!(metric::LANE_IN_FLIGHT, label::LANE => l),
            position: None,
            normalize: metrics::histogram!(metric::NORMALIZE_DURATION),
            checkpoint_latency: metrics::histogram!(metric::CHECKPOINT_LATENCY),
            events: Vec::new(),
            dead_letters: Vec::new(),
            redactions: Vec::new(),
            health,
            clock,
            progressed: false,
        }
    }

    pub fn lane(&self) -> &Arc<str> {
        &self.lane
    }

    #[inline]
    pub fn received(&self) {
        self.received.increment(1);
    }

    #[inline]
    pub fn normalized(&self, took: Duration) {
        self.normalize.record(took.as_secs_f64());
    }

    /// One record's outputs were all acknowledged: the commit point moved.
    #[inline]
    pub fn acknowledged(&mut self) {
        self.acknowledged.increment(1);
        self.progressed = true;
    }

    /// The index of an event's counter (kept in the acknowledgement queue).
    pub fn event_label(&mut self, source: SourceKind, class_uid: i64) -> u16 {
        label_index(&mut self.events, (source, class_uid), || {
            metrics::counter!(
                metric::EVENTS_EMITTED,
                label::SOURCE => source.as_str(),
                label::CLASS => class_name(class_uid)
            )
        })
    }

    pub fn dead_letter_label(&mut self, stage: Stage, code: ErrorCode) -> u16 {
        label_index(&mut self.dead_letters, (stage, code), || {
            metrics::counter!(
                metric::DEAD_LETTERS,
                label::STAGE => stage.as_str(),
                label::ERROR_CODE => code.as_str()
            )
        })
    }

    #[inline]
    pub fn event_acknowledged(&self, label: u16) {
        if let Some((_, c)) = self.events.get(label as usize) {
            c.increment(1);
        }
    }

    #[inline]
    pub fn dead_letter_acknowledged(&self, label: u16) {
        if let Some((_, c)) = self.dead_letters.get(label as usize) {
            c.increment(1);
        }
    }

    /// A checkpoint succeeded: `upto` and when that record was read.
    pub fn checkpointed(&mut self, upto: &Position, read_at: Option<Instant>) {
        let at = match upto {
            Position::Kafka { offset, .. } => Some(*offset as f64),
            Position::File { line, offset, .. } => Some(line.unwrap_or(*offset) as f64),
            // A sequence number of up to 129 digits is no float.
            Position::Kinesis { .. } => None,
        };
        if let Some(at) = at {
            let lane = &self.lane;
            self.position
                .get_or_insert_with(|| {
                    metrics::gauge!(metric::LANE_CHECKPOINT_POSITION, label::LANE => lane.to_string())
                })
                .set(at);
        }
        if let Some(t) = read_at {
            self.checkpoint_latency.record(t.elapsed().as_secs_f64());
        }
    }

    /// The lane's checkpoint tick: in-flight gauge, liveness, redaction counts.
    pub fn tick(&mut self, in_flight: usize, redactions: &RedactionCounts) {
        self.in_flight.set(in_flight as f64);
        let now = self.clock.now_ms();
        let h = &self.health;
        h.in_flight.store(in_flight as u64, Relaxed);
        h.last_tick.store(now, Relaxed);
        if self.progressed || in_flight == 0 {
            h.last_progress.store(now, Relaxed);
            self.progressed = false;
        }
        for (rule, total) in redactions.iter() {
            match self.redactions.iter_mut().find(|(r, _, _)| r == rule) {
                Some((_, seen, c)) => {
                    if total > *seen {
                        c.increment(total - *seen);
                        *seen = total;
                    }
                }
                None => {
                    let c = metrics::counter!(metric::REDACTIONS, label::RULE => rule.to_string());
                    c.increment(total);
                    self.redactions.push((rule.to_string(), total, c));
                }
            }
        }
    }

    /// The lane stopped: its gauges go to 0 (another member may own it now).
    pub fn stopped(&self) {
        self.in_flight.set(0.0);
        lane_lag(&self.lane, 0);
    }
}

/// The index of `key`'s counter in `counters`, registered with `register` on first use: a
/// lane registers each label set once, not per record.
fn label_index<K: PartialEq>(
    counters: &mut Vec<(K, Counter)>,
    key: K,
    register: impl FnOnce() -> Counter,
) -> u16 {
    if let Some(i) = counters.iter().position(|(k, _)| *k == key) {
        return i as u16;
    }
    counters.push((key, register()));
    (counters.len() - 1) as u16
}

// ---------------------------------------------------------------------------------------------
// Internal events: a metric and a log line each
// ---------------------------------------------------------------------------------------------

/// A log line at a level chosen at run time. `tracing` fixes a line's level where its macro is
/// written, so a line whose level depends on the case would otherwise be written once per level.
macro_rules! event_at {
    ($level:expr, $($line:tt)+) => {
        match $level {
            tracing::Level::ERROR => tracing::error!($($line)+),
            tracing::Level::WARN => tracing::warn!($($line)+),
            tracing::Level::INFO => tracing::info!($($line)+),
            tracing::Level::DEBUG => tracing::debug!($($line)+),
            _ => tracing::trace!($($line)+),
        }
    };
}

/// Where a delivery went: the `destination` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DestinationKind {
    Output,
    DeadLetter,
}

impl DestinationKind {
    pub fn as_str(self) -> &'static str {
        match self {
            DestinationKind::Output => "output",
            DestinationKind::DeadLetter => "dead_letter",
        }
    }
}

/// The input's lag for a lane (records after its committed position). Call it off the hot
/// path, whenever the input learns it.
pub fn lane_lag(lane: &str, records: i64) {
    metrics::gauge!(metric::LANE_LAG, label::LANE => lane.to_string()).set(records.max(0) as f64);
}

pub fn destination_connect_retry(
    dest: DestinationKind,
    attempt: u32,
    budget: u32,
    wait: Duration,
    error: &str,
) {
    metrics::counter!(metric::DELIVERY_RETRIES, label::DESTINATION => dest.as_str()).increment(1);
    tracing::warn!(
        event = event::DESTINATION_CONNECT_RETRY,
        destination = dest.as_str(),
        attempt,
        budget,
        wait_seconds = wait.as_secs_f64(),
        error,
        "cannot open the {} destination; trying again",
        dest.as_str()
    );
}

pub fn destination_error(dest: DestinationKind, error: &str) {
    metrics::counter!(metric::DELIVERY_ERRORS, label::DESTINATION => dest.as_str()).increment(1);
    tracing::error!(
        event = event::DESTINATION_ERROR,
        destination = dest.as_str(),
        error,
        "{} destination failed",
        dest.as_str()
    );
}

/// One failed write (the lane retries; [`lane_retry`] says so).
pub fn delivery_failed(dest: DestinationKind) {
    metrics::counter!(metric::DELIVERY_ERRORS, label::DESTINATION => dest.as_str()).increment(1);
}

pub fn unit_skipped(lane: &str, position: &Position, reason: &str) {
    metrics::counter!(metric::UNITS_SKIPPED).increment(1);
    tracing::info!(
        event = event::UNIT_SKIPPED,
        lane,
        position = %position,
        reason,
        "unit skipped: it holds no records"
    );
}

pub fn checkpoint_failed(lane: &str, position: &Position, error: &str) {
    metrics::counter!(metric::COMMIT_ERRORS).increment(1);
    tracing::warn!(
        event = event::CHECKPOINT_FAILED,
        lane,
        position = %position,
        error,
        "cannot store the commit point; trying again at the next tick"
    );
}

pub fn lane_retry(
    lane: &str,
    dest: DestinationKind,
    attempt: u32,
    budget: u32,
    wait: Duration,
    records: usize,
    error: &str,
) {
    metrics::counter!(metric::DELIVERY_RETRIES, label::DESTINATION => dest.as_str()).increment(1);
    tracing::warn!(
        event = event::LANE_RETRY,
        lane,
        destination = dest.as_str(),
        attempt,
        budget,
        wait_seconds = wait.as_secs_f64(),
        records,
        error,
        "delivery failed; sending again from the commit point"
    );
}

pub fn lane_started(lane: &str) {
    metrics::counter!(metric::LANES_STARTED).increment(1);
    tracing::info!(event = event::LANE_STARTED, lane, "lane started");
}

/// How a lane ended, for [`lane_stopped`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LaneStop {
    Drained,
    Abandoned(usize),
    Finished,
    Failed,
    Panicked,
}

pub fn lane_stopped(lane: &str, how: LaneStop) {
    let reason = match how {
        LaneStop::Drained => "drained",
        LaneStop::Abandoned(_) => "abandoned",
        LaneStop::Finished => "finished",
        LaneStop::Failed => "failed",
        LaneStop::Panicked => "panicked",
    };
    metrics::counter!(metric::LANES_STOPPED, label::REASON => reason).increment(1);
    match how {
        LaneStop::Abandoned(n) if n > 0 => tracing::warn!(
            event = event::LANE_STOPPED,
            lane,
            reason,
            unacknowledged = n,
            "lane stopped with records unacknowledged; they will be read again"
        ),
        LaneStop::Panicked => tracing::error!(
            event = event::LANE_STOPPED,
            lane,
            reason,
            "lane task panicked"
        ),
        _ => tracing::info!(event = event::LANE_STOPPED, lane, reason, "lane stopped"),
    }
}

pub fn lane_failed(lane: &str, error: &str) {
    tracing::error!(
        event = event::LANE_FAILED,
        lane,
        error,
        "lane failed for good"
    );
}

/// A librdkafka log line (warnings and worse; debug only when its `debug` property asks).
pub fn kafka_client_log(
    client: &str,
    level: rdkafka::config::RDKafkaLogLevel,
    fac: &str,
    message: &str,
) {
    use rdkafka::config::RDKafkaLogLevel as L;
    let level = match level {
        L::Debug => tracing::Level::DEBUG,
        L::Info | L::Notice => tracing::Level::INFO,
        L::Warning => tracing::Level::WARN,
        _ => tracing::Level::ERROR,
    };
    event_at!(
        level,
        event = event::KAFKA_CLIENT_LOG,
        client,
        facility = fac,
        "{message}"
    );
}

/// A librdkafka error; `repeated > 0`: this line came that many more times (held back).
pub fn kafka_client_error(client: &str, error: &str, repeated: u64) {
    if repeated > 0 {
        tracing::warn!(
            event = event::KAFKA_CLIENT_ERROR,
            client,
            error,
            repeated,
            "kafka client error: repeated {repeated} more times"
        );
    } else {
        tracing::warn!(
            event = event::KAFKA_CLIENT_ERROR,
            client,
            error,
            "kafka client error"
        );
    }
}

pub fn kafka_rebalance_failed(error: &str) {
    tracing::warn!(
        event = event::KAFKA_REBALANCE_FAILED,
        error,
        "kafka consumer: rebalance failed"
    );
}

pub fn kafka_commit_failed(error: &str) {
    metrics::counter!(metric::COMMIT_ERRORS).increment(1);
    tracing::warn!(
        event = event::KAFKA_COMMIT_FAILED,
        error,
        "kafka consumer: commit failed"
    );
}

pub fn kafka_consumer_error(error: &str) {
    tracing::warn!(
        event = event::KAFKA_CONSUMER_ERROR,
        error,
        "kafka consumer error"
    );
}

pub fn kafka_fetch_error(lane: &str, error: &str) {
    tracing::warn!(
        event = event::KAFKA_FETCH_ERROR,
        lane,
        error,
        "fetch error (librdkafka retries)"
    );
}

pub fn kafka_partition_count_unknown(topic: &str, error: &str) {
    tracing::warn!(
        event = event::KAFKA_PARTITION_COUNT_UNKNOWN,
        topic,
        error,
        "cannot read the topic's partition count; its lanes are placed by hash"
    );
}

pub fn kinesis_started(stream: &str, worker: &str, store: &str, mode: &str) {
    tracing::info!(
        event = event::KINESIS_STARTED,
        stream,
        worker,
        store,
        mode,
        "reading the Kinesis stream; shards shared through the lease store"
    );
}

pub fn kinesis_leases_held(n: usize) {
    metrics::gauge!(metric::KINESIS_LEASES_HELD).set(n as f64);
}

/// `stolen_from`: the owner it was taken from to balance the load.
pub fn kinesis_lease_taken(lane: &str, counter: u64, from: &str, stolen_from: Option<&str>) {
    let reason = if stolen_from.is_some() {
        "stolen"
    } else {
        "expired"
    };
    metrics::counter!(metric::KINESIS_LEASES_TAKEN, label::REASON => reason).increment(1);
    tracing::info!(
        event = event::KINESIS_LEASE_TAKEN,
        lane,
        counter,
        from,
        stolen_from,
        "took the shard's lease"
    );
}

pub fn kinesis_lease_lost(lane: &str, why: &str) {
    metrics::counter!(metric::KINESIS_LEASES_LOST).increment(1);
    tracing::warn!(
        event = event::KINESIS_LEASE_LOST,
        lane,
        why,
        "lease lost; stopping the lane (the new owner reads again from the last checkpoint)"
    );
}

pub fn kinesis_shard_ended(lane: &str) {
    metrics::counter!(metric::KINESIS_SHARDS_ENDED).increment(1);
    tracing::info!(
        event = event::KINESIS_SHARD_ENDED,
        lane,
        "closed shard read to its end (SHARD_END)"
    );
}

/// A read call failed and is retried after `wait`, from after `after`.
pub fn kinesis_read_retry(
    lane: &str,
    op: &str,
    throttled: bool,
    wait: Duration,
    after: &str,
    error: &str,
) {
    let (reason, level, what) = if throttled {
        ("throttled", tracing::Level::INFO, "read throttled")
    } else {
        ("error", tracing::Level::WARN, "read failed")
    };
    metrics::counter!(metric::KINESIS_READ_RETRIES, label::REASON => reason).increment(1);
    event_at!(
        level,
        event = event::KINESIS_READ_RETRY,
        lane,
        op,
        reason,
        wait_seconds = wait.as_secs_f64(),
        after,
        error,
        "{what}; retrying"
    );
}

pub fn kinesis_lease_error(what: &str, error: &str) {
    metrics::counter!(metric::KINESIS_LEASE_ERRORS).increment(1);
    tracing::warn!(
        event = event::KINESIS_LEASE_ERROR,
        what,
        error,
        "lease store or shard listing failed"
    );
}

/// Something an operator may want to know about a lane (no metric).
pub fn kinesis_notice(lane: &str, message: &str) {
    tracing::info!(event = event::KINESIS_NOTICE, lane, "{message}");
}

/// How far behind the tip a lane's last read was.
pub fn lane_behind(lane: &str, millis: i64) {
    metrics::gauge!(metric::LANE_BEHIND, label::LANE => lane.to_string())
        .set(millis.max(0) as f64 / 1000.0);
}

// ---------------------------------------------------------------------------------------------
// HTTP: /metrics, /healthz, /readyz
// ---------------------------------------------------------------------------------------------

/// What the metrics port serves.
pub struct Endpoints {
    pub handle: metrics_exporter_prometheus::PrometheusHandle,
    pub health: Arc<Health>,
    pub metrics_path: String,
}

type Body = http_body_util::Full<hyper::body::Bytes>;

fn respond(status: u16, content_type: &str, body: String) -> hyper::Response<Body> {
    hyper::Response::builder()
        .status(status)
        .header("content-type", content_type)
        .body(Body::new(body.into()))
        .unwrap_or_else(|_| hyper::Response::new(Body::default()))
}

fn answer(ep: &Endpoints, method: &hyper::Method, path: &str) -> hyper::Response<Body> {
    const TEXT: &str = "text/plain; charset=utf-8";
    if method != hyper::Method::GET && method != hyper::Method::HEAD {
        return respond(405, TEXT, "only GET\n".into());
    }
    match path {
        "/healthz" => match ep.health.liveness() {
            Ok(t) => respond(200, TEXT, t),
            Err(t) => respond(503, TEXT, t),
        },
        "/readyz" => match ep.health.readiness() {
            Ok(t) => respond(200, TEXT, t),
            Err(t) => respond(503, TEXT, t),
        },
        p if p == ep.metrics_path => {
            ep.health.publish();
            respond(
                200,
                "text/plain; version=0.0.4; charset=utf-8",
                ep.handle.render(),
            )
        }
        _ => respond(
            404,
            TEXT,
            "not found: try /metrics, /healthz, /readyz\n".into(),
        ),
    }
}

/// Serves the endpoints on `listener` until the task is aborted; runs the recorder's upkeep.
pub async fn serve(listener: tokio::net::TcpListener, ep: Arc<Endpoints>) {
    let upkeep = {
        let handle = ep.handle.clone();
        tokio::spawn(async move {
            let mut t = tokio::time::interval(Duration::from_secs(5));
            loop {
                t.tick().await;
                handle.run_upkeep();
            }
        })
    };
    struct AbortOnDrop(tokio::task::JoinHandle<()>);
    impl Drop for AbortOnDrop {
        fn drop(&mut self) {
            self.0.abort();
        }
    }
    let _upkeep = AbortOnDrop(upkeep);
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(event = event::METRICS_ERROR, error = %e, "metrics port: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let ep = ep.clone();
        tokio::spawn(async move {
            let service =
                hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let r = answer(&ep, req.method(), req.uri().path());
                    async move { Ok::<_, std::convert::Infallible>(r) }
                });
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            // Probes and scrapes are short; a client that stalls is dropped.
            let _ = tokio::time::timeout(Duration::from_secs(30), conn).await;
        });
    }
}

/// Binds `addr` and serves the endpoints in a task of its own.
pub async fn start_server(
    addr: std::net::SocketAddr,
    metrics_path: String,
    health: Arc<Health>,
) -> Result<tokio::task::JoinHandle<()>, String> {
    let handle = install_recorder()?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| format!("cannot listen on {addr} for metrics: {e}"))?;
    let local = listener.local_addr().unwrap_or(addr);
    tracing::info!(
        event = event::METRICS_LISTENING,
        address = %local,
        metrics_path = %metrics_path,
        "serving {metrics_path}, /healthz and /readyz"
    );
    let ep = Arc::new(Endpoints {
        handle,
        health,
        metrics_path,
    });
    Ok(tokio::spawn(serve(listener, ep)))
}

// ---------------------------------------------------------------------------------------------
// Logs
// ---------------------------------------------------------------------------------------------

/// How `run` writes its log lines (to standard error).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// One JSON object per line.
    Json,
    /// Human-readable lines.
    Text,
    /// Text on a terminal, JSON otherwise.
    Auto,
}

/// Installs the `tracing` subscriber: level from `AUDITNORM_LOG` (else `RUST_LOG`, else
/// `info`), e.g. `AUDITNORM_LOG=auditnorm=debug`.
pub fn init_logging(format: LogFormat) {
    use std::io::IsTerminal;
    use tracing_subscriber::EnvFilter;
    let filter = std::env::var("AUDITNORM_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .ok()
        .and_then(|f| EnvFilter::try_new(f).ok())
        .unwrap_or_else(|| EnvFilter::new("info"));
    let terminal = std::io::stderr().is_terminal();
    let json = match format {
        LogFormat::Json => true,
        LogFormat::Text => false,
        LogFormat::Auto => !terminal,
    };
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let r = if json {
        b.json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .try_init()
    } else {
        b.with_ansi(terminal).try_init()
    };
    if let Err(e) = r {
        eprintln!("warning: cannot install the log subscriber: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_prometheus_conventions() {
        let mut seen = std::collections::HashSet::new();
        for m in METRICS {
            assert!(seen.insert(m.name), "{} listed twice", m.name);
            assert!(m.name.starts_with("auditnorm_"), "{}", m.name);
            assert!(
                m.name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'),
                "{}",
                m.name
            );
            match m.kind {
                MetricKind::Counter => assert!(m.name.ends_with("_total"), "{}", m.name),
                _ => assert!(!m.name.ends_with("_total"), "{}", m.name),
            }
            if m.kind == MetricKind::Histogram {
                assert!(m.name.ends_with("_seconds"), "{}: base units", m.name);
            }
            for unit in ["_milliseconds", "_ms", "_kb", "_mb", "_minutes"] {
                assert!(!m.name.contains(unit), "{}: not a base unit", m.name);
            }
            for l in m.labels {
                assert!(LABELS.contains(l), "{}: label {l} is not bounded", m.name);
            }
            assert!(!m.help.is_empty(), "{}", m.name);
        }
        let events: Vec<&str> = vec![event::STARTING, event::LANE_RETRY, event::KAFKA_FETCH_ERROR];
        for e in events {
            assert!(
                e.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
                "{e}"
            );
        }
    }

    /// Runs every internal event and every lane hook against a private recorder and checks
    /// that what is rendered is in the catalogue, of the kind and with the labels it says.
    #[test]
    fn everything_emitted_is_in_the_catalogue() {
        let recorder = builder();
        let handle = recorder.handle();
        let mut kinesis_lines = Vec::new();
        metrics::with_local_recorder(&recorder, || {
            describe();
            let health = Arc::new(Health::new(Duration::from_secs(60)));
            let lane: Arc<str> = "topic/0".into();
            let lh = health.register(&lane);
            let mut m = LaneMetrics::new(&lane, lh.clone(), health.clock());
            m.received();
            m.normalized(Duration::from_micros(30));
            let e = m.event_label(SourceKind::CloudTrail, 6003);
            m.event_acknowledged(e);
            let d = m.dead_letter_label(Stage::Decode, ErrorCode::InvalidJson);
            m.dead_letter_acknowledged(d);
            m.acknowledged();
            let pos = Position::Kafka {
                topic: "topic".into(),
                partition: 0,
                offset: 41,
                index: None,
            };
            m.checkpointed(&pos, Some(Instant::now()));
            let r = crate::redact::Redactor::builtin();
            let mut counts = RedactionCounts::default();
            let _ = r.redact_text("password=hunter2hunter2 AKIAIOSFODNN7EXAMPLE", &mut counts);
            assert!(!counts.is_empty());
            m.tick(3, &counts);
            m.tick(0, &counts);
            m.stopped();
            lane_lag("topic/0", 12);
            destination_connect_retry(DestinationKind::Output, 1, 5, Duration::ZERO, "x");
            destination_error(DestinationKind::DeadLetter, "x");
            delivery_failed(DestinationKind::Output);
            unit_skipped("topic/0", &pos, "digest");
            checkpoint_failed("topic/0", &pos, "x");
            lane_retry(
                "topic/0",
                DestinationKind::Output,
                1,
                5,
                Duration::ZERO,
                3,
                "x",
            );
            lane_started("topic/0");
            lane_stopped("topic/0", LaneStop::Abandoned(2));
            kafka_commit_failed("x");
            health.set_connected(true);
            health.publish();
            metrics::gauge!(metric::BUILD_INFO, label::VERSION => "0").set(1.0);
            kinesis_lines = log_lines(|| {
                kinesis_started("stream", "worker-1", "dynamodb", "polling");
                kinesis_leases_held(2);
                // Both reasons: each is its own series.
                kinesis_lease_taken("shard-1", 3, "worker-2", None);
                kinesis_lease_taken("shard-2", 4, "worker-3", Some("worker-3"));
                kinesis_lease_lost("shard-1", "x");
                kinesis_shard_ended("shard-2");
                for throttled in [true, false] {
                    kinesis_read_retry(
                        "shard-1",
                        "GetRecords",
                        throttled,
                        Duration::ZERO,
                        "1",
                        "x",
                    );
                }
                kinesis_lease_error("renew", "x");
                kinesis_notice("shard-1", "x");
                lane_behind("shard-1", 1500);
            });
        });
        let text = handle.render();
        let mut types = 0;
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').expect("type line");
                let def = METRICS
                    .iter()
                    .find(|m| m.name == name)
                    .unwrap_or_else(|| panic!("{name} is not in METRICS"));
                let want = match def.kind {
                    MetricKind::Counter => "counter",
                    MetricKind::Gauge => "gauge",
                    MetricKind::Histogram => "histogram",
                };
                assert_eq!(kind, want, "{name}");
                types += 1;
                continue;
            }
            if line.starts_with('#') || line.is_empty() {
                continue;
            }
            let series = line.split(' ').next().unwrap_or_default();
            let (name, labels) = match series.split_once('{') {
                Some((n, l)) => (n, l.trim_end_matches('}')),
                None => (series, ""),
            };
            let base = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| {
                    name.strip_suffix(s)
                        .filter(|b| METRICS.iter().any(|m| m.name == *b))
                })
                .unwrap_or(name);
            let def = METRICS
                .iter()
                .find(|m| m.name == base)
                .unwrap_or_else(|| panic!("{name} is not in METRICS"));
            for pair in labels.split(',').filter(|p| !p.is_empty()) {
                let key = pair.split('=').next().unwrap_or_default();
                if key == "le" && def.kind == MetricKind::Histogram {
                    continue;
                }
                assert!(
                    def.labels.contains(&key),
                    "{name}: label {key} not declared"
                );
            }
        }
        assert!(types >= 15, "only {types} metrics rendered:\n{text}");
        // The loop above only sees what was rendered: a Kinesis metric no call reached would
        // pass unchecked.
        for name in [
            metric::KINESIS_READ_RETRIES,
            metric::KINESIS_LEASES_HELD,
            metric::KINESIS_LEASES_TAKEN,
            metric::KINESIS_LEASES_LOST,
            metric::KINESIS_SHARDS_ENDED,
            metric::KINESIS_LEASE_ERRORS,
            metric::LANE_BEHIND,
        ] {
            assert!(
                text.contains(&format!("# TYPE {name} ")),
                "{name} not rendered:\n{text}"
            );
        }
        let logged: Vec<&str> = kinesis_lines
            .iter()
            .map(|l| l["event"].as_str().expect("event"))
            .collect();
        assert_eq!(
            logged,
            [
                event::KINESIS_STARTED,
                event::KINESIS_LEASE_TAKEN,
                event::KINESIS_LEASE_TAKEN,
                event::KINESIS_LEASE_LOST,
                event::KINESIS_SHARD_ENDED,
                event::KINESIS_READ_RETRY,
                event::KINESIS_READ_RETRY,
                event::KINESIS_LEASE_ERROR,
                event::KINESIS_NOTICE,
            ]
        );
        assert!(
            text.contains(
                "auditnorm_events_emitted_total{source=\"cloudtrail\",class=\"api_activity\"} 1"
            ),
            "{text}"
        );
        assert!(
            text.contains("auditnorm_normalize_duration_seconds_bucket"),
            "a histogram, not a summary:\n{text}"
        );
    }

    #[test]
    fn a_lane_registers_each_label_set_once() {
        let recorder = builder();
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, || {
            let health = Arc::new(Health::new(Duration::from_secs(60)));
            let lane: Arc<str> = "topic/0".into();
            let mut m = LaneMetrics::new(&lane, health.register(&lane), health.clock());
            let ct = m.event_label(SourceKind::CloudTrail, 6003);
            let k8s = m.event_label(SourceKind::K8sAudit, 6003);
            assert_ne!(ct, k8s);
            assert_eq!(m.event_label(SourceKind::CloudTrail, 6003), ct);
            m.event_acknowledged(ct);
            m.event_acknowledged(ct);
            m.event_acknowledged(k8s);
            let d = m.dead_letter_label(Stage::Decode, ErrorCode::InvalidJson);
            assert_eq!(
                m.dead_letter_label(Stage::Decode, ErrorCode::InvalidJson),
                d
            );
            assert_ne!(m.dead_letter_label(Stage::Map, ErrorCode::InvalidJson), d);
            m.dead_letter_acknowledged(d);
        });
        let text = handle.render();
        for want in [
            format!(
                "auditnorm_events_emitted_total{{source=\"{}\",class=\"api_activity\"}} 2",
                SourceKind::CloudTrail.as_str()
            ),
            format!(
                "auditnorm_events_emitted_total{{source=\"{}\",class=\"api_activity\"}} 1",
                SourceKind::K8sAudit.as_str()
            ),
            format!(
                "auditnorm_dead_letters_total{{stage=\"{}\",error_code=\"{}\"}} 1",
                Stage::Decode.as_str(),
                ErrorCode::InvalidJson.as_str()
            ),
        ] {
            assert!(text.contains(&want), "{want} missing from:\n{text}");
        }
    }

    /// The JSON lines (as `init_logging` writes them) of the events `f` logs on this thread.
    fn log_lines(f: impl FnOnce()) -> Vec<serde_json::Value> {
        #[derive(Clone, Default)]
        struct Buf(Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Buf {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let buf = Buf::default();
        let writer = buf.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_writer(move || writer.clone())
            .json()
            .flatten_event(true)
            .finish();
        tracing::subscriber::with_default(subscriber, f);
        let text = String::from_utf8(buf.0.lock().unwrap().clone()).expect("UTF-8");
        text.lines()
            .map(|l| serde_json::from_str(l).expect("a JSON line"))
            .collect()
    }

    /// Events whose level depends on the case: each case's level, message and fields.
    #[test]
    fn leveled_events_keep_their_level_message_and_fields() {
        use rdkafka::config::RDKafkaLogLevel as L;
        let lines = log_lines(|| {
            for throttled in [true, false] {
                kinesis_read_retry(
                    "shard-1",
                    "GetRecords",
                    throttled,
                    Duration::from_millis(250),
                    "4960",
                    "slow down",
                );
            }
            for level in [
                L::Debug,
                L::Info,
                L::Notice,
                L::Warning,
                L::Error,
                L::Critical,
            ] {
                kafka_client_log("consumer", level, "FETCH", "broker said so");
            }
        });
        let got: Vec<(&str, &str)> = lines
            .iter()
            .map(|l| {
                (
                    l["level"].as_str().expect("level"),
                    l["message"].as_str().expect("message"),
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                ("INFO", "read throttled; retrying"),
                ("WARN", "read failed; retrying"),
                ("DEBUG", "broker said so"),
                ("INFO", "broker said so"),
                ("INFO", "broker said so"),
                ("WARN", "broker said so"),
                ("ERROR", "broker said so"),
                ("ERROR", "broker said so"),
            ]
        );
        for (l, reason) in lines[..2].iter().zip(["throttled", "error"]) {
            assert_eq!(l["event"], event::KINESIS_READ_RETRY, "{l}");
            assert_eq!(l["lane"], "shard-1", "{l}");
            assert_eq!(l["op"], "GetRecords", "{l}");
            assert_eq!(l["reason"], reason, "{l}");
            assert_eq!(l["wait_seconds"], 0.25, "{l}");
            assert_eq!(l["after"], "4960", "{l}");
            assert_eq!(l["error"], "slow down", "{l}");
        }
        for l in &lines[2..] {
            assert_eq!(l["event"], event::KAFKA_CLIENT_LOG, "{l}");
            assert_eq!(l["client"], "consumer", "{l}");
            assert_eq!(l["facility"], "FETCH", "{l}");
        }
    }

    #[test]
    fn a_lane_with_records_in_flight_and_no_progress_fails_liveness() {
        let health = Health::new(Duration::from_millis(50));
        let lane: Arc<str> = "t/0".into();
        let lh = health.register(&lane);
        let mut m = LaneMetrics::new(&lane, lh.clone(), health.clock());
        m.tick(0, &RedactionCounts::default());
        std::thread::sleep(Duration::from_millis(80));
        // Idle and ticking: live.
        m.tick(0, &RedactionCounts::default());
        assert!(health.liveness().is_ok());
        m.tick(5, &RedactionCounts::default());
        std::thread::sleep(Duration::from_millis(80));
        m.tick(5, &RedactionCounts::default());
        let err = health.liveness().unwrap_err();
        assert!(err.contains("t/0") && err.contains("in flight"), "{err}");
        // Progress heals it.
        m.acknowledged();
        m.tick(4, &RedactionCounts::default());
        assert!(health.liveness().is_ok());
        // A lane that stops ticking is wedged too.
        std::thread::sleep(Duration::from_millis(80));
        assert!(health.liveness().unwrap_err().contains("no tick"));
        health.deregister(&lane, &lh);
        assert!(health.liveness().is_ok());
        health.lane_died(&lane);
        assert!(health.liveness().unwrap_err().contains("died"));
    }

    #[test]
    fn readiness_needs_connection_and_a_lane() {
        let health = Health::new(Duration::from_secs(60));
        assert!(health.readiness().is_err());
        health.set_mappings_loaded(true);
        assert!(health.readiness().unwrap_err().contains("not connected"));
        health.set_connected(true);
        assert!(health.readiness().unwrap_err().contains("no lanes"));
        let lane: Arc<str> = "t/0".into();
        let lh = health.register(&lane);
        assert!(health.readiness().is_ok());
        health.deregister(&lane, &lh);
        health.set_idle_ok(true);
        assert!(health.readiness().is_ok());
        health.set_stopping();
        assert!(health.readiness().is_err());
    }
}
