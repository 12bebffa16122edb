//! `auditnorm run`: the always-on pipeline. Lanes, their in-flight queues and commit points,
//! retries, shutdown and rebalance. Nothing here knows Kafka: an input (`source/kafka.rs`;
//! Kinesis next) starts and stops lanes through [`Lanes`], hands each a [`LaneSource`] and a
//! [`Checkpointer`], and the destinations are a closed set ([`Destination`]).
//!
//! # Guarantees
//!
//! 1. **Order.** Within one lane (one input partition), events reach the output in input
//!    order: a lane is one task that normalizes its records one after the other and places all
//!    of them on one output partition, through an idempotent producer
//!    (`enable.idempotence=true`, which keeps order across librdkafka's own retries). With
//!    `partitioning: auto` (the default) input partition p goes to output partition p when the
//!    output topic has at least as many partitions as the input topic; otherwise the partition
//!    is the one Kafka's murmur2 partitioner picks for the key `<topic>/<partition>`, which is
//!    also every event's key. Dead letters are placed the same way on their topic. After a
//!    failed delivery the lane sends again everything from its commit point (guarantee 3), so
//!    a run of records can appear twice; the second copy is again in order.
//! 2. **Commit.** A position is committed only when every record at or before it has been
//!    acknowledged by the output or by the dead-letter destination. Each lane keeps a FIFO of
//!    its in-flight records; its commit point is the newest record whose every delivery, and
//!    every earlier record's, is acknowledged. A failed record holds the commit point where
//!    it is whatever succeeds after it (unlike vectordotdev/vector#24215). For Kafka the lane
//!    stores offsets itself (`enable.auto.offset.store=false`, after rust-rdkafka's
//!    `examples/at_least_once.rs`) and librdkafka commits stored offsets every
//!    `pipeline.commit_interval`. One lane per partition, each its own tokio task with its own
//!    commit point, so a slow partition never holds back the commits of another.
//! 3. **Nothing is dropped.** The dead-letter destination is for bad data only. When the
//!    output or the dead-letter destination cannot take a write, the lane stops reading,
//!    lets its in-flight deliveries settle, waits (exponential backoff) and sends again from
//!    its commit point; it commits nothing past the failure. After `pipeline.retry.budget`
//!    failed attempts in a row, the pipeline drains the other lanes, commits what they have
//!    acknowledged and exits non-zero so that its supervisor restarts it.
//! 4. **Duplicates are identical.** Delivery is at-least-once: after a crash or a retry,
//!    records after the last commit are sent again. The normalizer is deterministic (no time
//!    of processing in events), so a duplicate has the same bytes and the same `metadata.uid`.
//! 5. **Rebalance and shutdown.** On SIGTERM, Ctrl-C, or partitions revoked by a rebalance:
//!    the affected lanes stop reading, wait up to `pipeline.drain_timeout` for their in-flight
//!    records, store their commit points, the consumer commits synchronously, and only then
//!    are the partitions let go (the revoke callback blocks until this is done).

use crate::config::{DestinationPlan, LaneSettings, Plan};
use crate::dlq::DeadLetter;
use crate::error::{ErrorCode, RecordError, Stage};
use crate::mapping::Mappings;
use crate::normalize::{Emit, EventInfo, Normalizer};
use crate::record::{Position, SourceKind};
use crate::sink::file::Target;
use crate::sink::kafka::{self as ksink, KafkaTopic, Placement};
use crate::sink::kinesis::{self as kinesis_sink, KinesisStream};
use crate::telemetry::{self, DestinationKind, Health, LaneMetrics, LaneStop};
use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::io::Write;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot, watch};

/// One unit read from a lane: where it is, and its bytes (kept until acknowledged, so that a
/// retry can normalize it again).
#[derive(Debug, Clone)]
pub struct Unit {
    pub position: Position,
    pub bytes: Vec<u8>,
}

/// A lane's identity.
#[derive(Debug, Clone)]
pub struct LaneSpec {
    /// `<topic>/<partition>` for Kafka; unique among running lanes; the output key.
    pub name: Arc<str>,
    /// The source kind to force on its records (`None`: detect per record).
    pub source: Option<SourceKind>,
    /// The lane's partition and its topic's partition count, when it has them.
    pub ordinal: Option<(i32, i32)>,
}

/// The records of one lane, in order. Cancel-safe: dropping the future returned by `next`
/// loses nothing.
pub trait LaneSource: Send + 'static {
    /// The next unit; `None` when the lane has ended (a closed shard, a file read to its end).
    fn next(&mut self) -> impl Future<Output = Option<Unit>> + Send;
}

/// Makes a lane's commit point durable: the input resumes after it.
pub trait Checkpointer: Send + 'static {
    /// Every record at or before `upto` has been acknowledged. Called from the lane's task,
    /// at most every [`CHECKPOINT_EVERY`] and once when the lane stops.
    fn checkpoint(&mut self, upto: &Position) -> Result<(), String>;
}

/// How often a lane hands its commit point to its [`Checkpointer`]. (Kafka: the offset is
/// stored in memory; librdkafka commits stored offsets every `pipeline.commit_interval`.)
pub const CHECKPOINT_EVERY: Duration = Duration::from_millis(100);

// ---------------------------------------------------------------------------------------------
// Destinations
// ---------------------------------------------------------------------------------------------

/// Where events or dead letters go: a closed set.
pub enum Destination {
    Kafka(KafkaTopic),
    /// Acknowledged when PutRecords accepted the record; each lane's records share one
    /// partition key (the lane's name), so they keep their order on the stream.
    Kinesis(KinesisStream),
    /// One JSON document per line (local use). A write is acknowledged once buffered; the
    /// buffer is flushed before any commit point that covers it is checkpointed.
    Lines(Mutex<Lines>),
}

/// A line file opened for appending: a restarted pipeline resumes after its commit point, so
/// it must keep what earlier runs wrote (`sink::file::LineSink` truncates, as a replay wants).
pub struct Lines {
    name: String,
    w: std::io::BufWriter<Box<dyn Write + Send>>,
}

impl Lines {
    pub fn open(target: &Target) -> std::io::Result<Lines> {
        let w: Box<dyn Write + Send> = match target {
            Target::Stdout => Box::new(std::io::stdout()),
            Target::Stderr => Box::new(std::io::stderr()),
            Target::File(p) => Box::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)?,
            ),
        };
        Ok(Lines {
            name: target.name(),
            w: std::io::BufWriter::with_capacity(1 << 20, w),
        })
    }

    fn write_line(&mut self, line: &[u8]) -> Result<(), String> {
        self.w
            .write_all(line)
            .and_then(|()| self.w.write_all(b"\n"))
            .map_err(|e| format!("cannot write {}: {e}", self.name))
    }

    fn flush(&mut self) -> Result<(), String> {
        self.w
            .flush()
            .map_err(|e| format!("cannot write {}: {e}", self.name))
    }
}

/// Where one lane's records go on a destination.
#[derive(Debug, Clone)]
pub enum Route {
    Kafka(Placement),
    /// The partition key.
    Kinesis(Arc<str>),
    Lines,
}

impl Destination {
    async fn open(
        plan: &DestinationPlan,
        kind: DestinationKind,
        settings: &LaneSettings,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<Destination, PipelineError> {
        match plan {
            DestinationPlan::File(t) => Lines::open(t)
                .map(|s| Destination::Lines(Mutex::new(s)))
                .map_err(|e| PipelineError::Destination(format!("{}: {e}", t.name()))),
            DestinationPlan::Kinesis(k) => {
                let t = connect_with_retries(kind, settings, shutdown, || async {
                    KinesisStream::connect(k).await.map_err(|e| e.to_string())
                })
                .await?;
                Ok(Destination::Kinesis(t))
            }
            DestinationPlan::Kafka(k) => {
                let timeout = settings.delivery_timeout.min(Duration::from_secs(10));
                let what = match kind {
                    DestinationKind::Output => "output",
                    DestinationKind::DeadLetter => "dead-letter",
                };
                let t = connect_with_retries(kind, settings, shutdown, || async {
                    let k2 = k.clone();
                    tokio::task::spawn_blocking(move || KafkaTopic::connect(&k2, what, timeout))
                        .await
                        .unwrap_or_else(|e| Err(e.to_string()))
                })
                .await?;
                Ok(Destination::Kafka(t))
            }
        }
    }

    fn route(&self, lane: &LaneSpec) -> Result<Route, String> {
        match self {
            Destination::Kafka(t) => t.placement(&lane.name, lane.ordinal).map(Route::Kafka),
            Destination::Kinesis(_) => Ok(Route::Kinesis(lane.name.clone())),
            Destination::Lines(_) => Ok(Route::Lines),
        }
    }

    fn send_event(&self, route: &Route, json: &[u8]) -> Result<Ack, Refused> {
        match (self, route) {
            (Destination::Kafka(t), Route::Kafka(p)) => match t.send(p, json, None) {
                Ok(d) => Ok(Ack::Kafka(d)),
                Err(ksink::SendError::Full) => Err(Refused::Full),
                Err(ksink::SendError::TooLarge(e)) => Err(Refused::TooLarge(e)),
                Err(ksink::SendError::Failed(e)) => Ok(Ack::Done(Err(e))),
            },
            (Destination::Kinesis(t), Route::Kinesis(key)) => kinesis_ack(t.send(key, json)),
            (Destination::Lines(s), _) => Ok(Ack::Done(write_line(s, json))),
            (Destination::Kafka(_) | Destination::Kinesis(_), _) => unreachable_route(),
        }
    }

    /// A dead letter the destination cannot take whatever its size is a delivery failure:
    /// the lane retries and, past its budget, stops without committing past it.
    fn send_dead_letter(&self, route: &Route, dl: &DeadLetter) -> Result<Ack, Refused> {
        let r = match (self, route) {
            (Destination::Kafka(t), Route::Kafka(p)) => {
                let headers = ksink::dead_letter_headers(dl);
                match t.send(p, &dl.original_bytes(), Some(headers)) {
                    Ok(d) => Ok(Ack::Kafka(d)),
                    Err(ksink::SendError::Full) => Err(Refused::Full),
                    Err(ksink::SendError::TooLarge(e) | ksink::SendError::Failed(e)) => {
                        Ok(Ack::Done(Err(e)))
                    }
                }
            }
            (Destination::Kinesis(t), Route::Kinesis(key)) => {
                kinesis_ack(t.send(key, &dl.to_json()))
            }
            (Destination::Lines(s), _) => Ok(Ack::Done(write_line(s, &dl.to_json()))),
            (Destination::Kafka(_) | Destination::Kinesis(_), _) => unreachable_route(),
        };
        match r {
            Err(Refused::TooLarge(e)) => Ok(Ack::Done(Err(format!(
                "{e} (a dead letter; raise the dead-letter destination's size limit)"
            )))),
            other => other,
        }
    }

    /// Makes acknowledged writes durable before a checkpoint covers them.
    fn sync(&self) -> Result<(), String> {
        match self {
            Destination::Kafka(_) | Destination::Kinesis(_) => Ok(()),
            Destination::Lines(s) => lock(s).flush(),
        }
    }

    fn close(&self, kind: DestinationKind) {
        match self {
            Destination::Kafka(t) => t.flush(Duration::from_secs(5)),
            Destination::Kinesis(t) => {
                if let Err(e) = t.flush_blocking(Duration::from_secs(5)) {
                    telemetry::destination_error(kind, &e);
                }
            }
            Destination::Lines(s) => {
                if let Err(e) = lock(s).flush() {
                    telemetry::destination_error(kind, &e);
                }
            }
        }
    }
}

/// Calls `connect` until it succeeds, waiting (the retry policy's backoff) between attempts;
/// gives up after the retry budget, or when shutdown is asked for meanwhile.
async fn connect_with_retries<T, F, Fut>(
    kind: DestinationKind,
    settings: &LaneSettings,
    shutdown: &mut watch::Receiver<bool>,
    mut connect: F,
) -> Result<T, PipelineError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let mut attempt = 0;
    loop {
        match connect().await {
            Ok(t) => return Ok(t),
            Err(e) if attempt >= settings.retry.budget => {
                return Err(PipelineError::Destination(e))
            }
            Err(e) => {
                attempt += 1;
                let wait = settings.retry.delay(attempt);
                telemetry::destination_connect_retry(
                    kind,
                    attempt,
                    settings.retry.budget,
                    wait,
                    &e,
                );
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = shutdown.wait_for(|s| *s) => {
                        return Err(PipelineError::Destination(format!("{e}; stopped while retrying")));
                    }
                }
            }
        }
    }
}

fn kinesis_ack(r: Result<kinesis_sink::Delivery, kinesis_sink::SendError>) -> Result<Ack, Refused> {
    match r {
        Ok(d) => Ok(Ack::Kinesis(d)),
        Err(kinesis_sink::SendError::Full) => Err(Refused::Full),
        Err(kinesis_sink::SendError::TooLarge(e)) => Err(Refused::TooLarge(e)),
        Err(kinesis_sink::SendError::Failed(e)) => Ok(Ack::Done(Err(e))),
    }
}

fn unreachable_route() -> Result<Ack, Refused> {
    Ok(Ack::Done(Err(
        "internal: a route computed for another destination".into(),
    )))
}

fn lock(s: &Mutex<Lines>) -> std::sync::MutexGuard<'_, Lines> {
    s.lock().unwrap_or_else(|p| p.into_inner())
}

fn write_line(s: &Mutex<Lines>, line: &[u8]) -> Result<(), String> {
    lock(s).write_line(line)
}

/// A write the destination did not take.
enum Refused {
    /// Its queue is full: wait for acknowledgements and send again.
    Full,
    /// This record can never be written (over the destination's size limit).
    TooLarge(String),
}

/// The acknowledgement of one write.
enum Ack {
    Done(Result<(), String>),
    Kafka(ksink::Delivery),
    Kinesis(kinesis_sink::Delivery),
}

impl Future for Ack {
    type Output = Result<(), String>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match &mut *self {
            Ack::Done(r) => Poll::Ready(std::mem::replace(r, Ok(()))),
            Ack::Kafka(d) => Pin::new(d).poll(cx),
            Ack::Kinesis(d) => Pin::new(d).poll(cx),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Counters for the summary (the metrics are in `telemetry.rs`, emitted next to these)
// ---------------------------------------------------------------------------------------------

/// Pipeline counters, for the summary printed when `run` stops.
#[derive(Debug, Default)]
pub struct Stats {
    /// Input records (units) whose every output was acknowledged.
    pub records: AtomicU64,
    /// Events acknowledged by the output (duplicates from retries included).
    pub events: AtomicU64,
    /// Dead letters acknowledged by the dead-letter destination.
    pub dead_letters: AtomicU64,
    /// Units that hold no records on purpose (digest files, control messages).
    pub skipped: AtomicU64,
    /// Deliveries that failed (each leads to a lane retry).
    pub failed_deliveries: AtomicU64,
    /// Lane retries (sending again from the commit point).
    pub retries: AtomicU64,
    pub lanes_started: AtomicU64,
}

#[derive(Debug, Clone, Default)]
pub struct Summary {
    pub records: u64,
    pub events: u64,
    pub dead_letters: u64,
    pub skipped: u64,
    pub retries: u64,
    pub lanes: u64,
    pub elapsed: Duration,
}

impl Stats {
    fn summary(&self, elapsed: Duration) -> Summary {
        Summary {
            records: self.records.load(Relaxed),
            events: self.events.load(Relaxed),
            dead_letters: self.dead_letters.load(Relaxed),
            skipped: self.skipped.load(Relaxed),
            retries: self.retries.load(Relaxed),
            lanes: self.lanes_started.load(Relaxed),
            elapsed,
        }
    }
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "stopped after {:.1}s: {} records acknowledged -> {} events, {} dead letters, {} skipped units; {} lanes started, {} retries",
            self.elapsed.as_secs_f64(),
            self.records,
            self.events,
            self.dead_letters,
            self.skipped,
            self.lanes,
            self.retries
        )
    }
}

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error("cannot open destination: {0}")]
    Destination(String),
    #[error("input: {0}")]
    Input(String),
    #[error("metrics: {0}")]
    Metrics(String),
    #[error(transparent)]
    Lane(#[from] LaneError),
}

#[derive(Debug, thiserror::Error)]
pub enum LaneError {
    #[error("lane {lane}: deliveries kept failing ({attempts} attempts, retry budget {budget}); last error: {last}; nothing was committed past it")]
    RetryBudget {
        lane: Arc<str>,
        attempts: u32,
        budget: u32,
        last: String,
    },
    #[error("lane {lane}: {reason}")]
    Route { lane: Arc<str>, reason: String },
}

// ---------------------------------------------------------------------------------------------
// One lane
// ---------------------------------------------------------------------------------------------

/// What every lane shares: destinations, settings, tables, counters.
pub struct Shared {
    pub events: Destination,
    pub dead_letters: Destination,
    pub settings: LaneSettings,
    pub mappings: Arc<Mappings>,
    pub stats: Stats,
    pub redactor: Option<crate::redact::Redactor>,
    pub keep_raw_dead_letters: bool,
    pub health: Arc<Health>,
}

struct Entry {
    position: Position,
    bytes: Vec<u8>,
    /// When the lane read it (for the checkpoint latency).
    read_at: Instant,
    /// Deliveries not yet acknowledged.
    pending: u32,
    /// Every delivery of this record has been handed to its destination.
    sent: bool,
    failed: bool,
}

/// What a delivery was, with the index of its counter in the lane's [`LaneMetrics`].
#[derive(Clone, Copy)]
enum Kind {
    Event(u16),
    DeadLetter(u16),
}

impl Kind {
    fn destination(self) -> DestinationKind {
        match self {
            Kind::Event(_) => DestinationKind::Output,
            Kind::DeadLetter(_) => DestinationKind::DeadLetter,
        }
    }
}

enum Outgoing {
    /// The event, its metrics label, and where its record was (for a dead letter if the
    /// output refuses it).
    Event(Vec<u8>, u16, Position, SourceKind),
    DeadLetter(DeadLetter, u16),
}

struct Collect<'a> {
    out: &'a mut Vec<Outgoing>,
    stats: &'a Stats,
    metrics: &'a mut LaneMetrics,
}

impl Emit for Collect<'_> {
    fn event(&mut self, json: &[u8], info: EventInfo<'_>) {
        let label = self.metrics.event_label(info.source, info.class_uid);
        self.out.push(Outgoing::Event(
            json.to_vec(),
            label,
            info.position.clone(),
            info.source,
        ));
    }

    fn dead_letter(&mut self, dl: DeadLetter) {
        // Already redacted: the normalizer redacts every dead letter it emits.
        let label = self.metrics.dead_letter_label(dl.stage, dl.error_code);
        self.out.push(Outgoing::DeadLetter(dl, label));
    }

    fn skipped(&mut self, position: &Position, reason: &str) {
        self.stats.skipped.fetch_add(1, Relaxed);
        telemetry::unit_skipped(self.metrics.lane(), position, reason);
    }
}

struct Lane {
    shared: Arc<Shared>,
    name: Arc<str>,
    events_route: Route,
    dead_route: Route,
    normalizer: Normalizer,
    /// Records read and not yet acknowledged, in lane order; `entries[0]` has number `first`.
    entries: VecDeque<Entry>,
    first: u64,
    /// Deliveries in the order they were sent: (record number, kind, acknowledgement).
    acks: VecDeque<(u64, Kind, Ack)>,
    /// The commit point: the newest record whose every delivery, and every earlier
    /// record's, is acknowledged; and when it was read.
    acked: Option<Position>,
    acked_read_at: Option<Instant>,
    /// `acked` moved since the last checkpoint.
    dirty: bool,
    /// The first delivery failure since the last retry, and where it went.
    failure: Option<String>,
    failure_dest: DestinationKind,
    /// Retries in a row without the commit point moving.
    attempts: u32,
    out: Vec<Outgoing>,
    metrics: LaneMetrics,
}

/// How a lane ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LaneEnd {
    /// Stopped, and every record read was acknowledged and checkpointed.
    Drained,
    /// Stopped at the drain deadline (or after a failed delivery) with this many records
    /// unacknowledged; they are read again by whoever owns the lane next.
    Abandoned(usize),
    /// The source ended and everything was acknowledged.
    Finished,
}

enum Step {
    Stop,
    Deadline,
    Acked(Result<(), String>),
    Read(Option<Unit>),
    Tick,
}

impl Lane {
    fn new(shared: Arc<Shared>, spec: &LaneSpec, metrics: LaneMetrics) -> Result<Lane, LaneError> {
        let route = |d: &Destination| {
            d.route(spec).map_err(|reason| LaneError::Route {
                lane: spec.name.clone(),
                reason,
            })
        };
        let events_route = route(&shared.events)?;
        let dead_route = route(&shared.dead_letters)?;
        Ok(Lane {
            normalizer: Normalizer::new(shared.mappings.clone(), spec.source)
                .with_redactor(shared.redactor.clone())
                .keep_raw_dead_letters(shared.keep_raw_dead_letters),
            shared,
            name: spec.name.clone(),
            events_route,
            dead_route,
            entries: VecDeque::new(),
            first: 0,
            acks: VecDeque::new(),
            acked: None,
            acked_read_at: None,
            dirty: false,
            failure: None,
            failure_dest: DestinationKind::Output,
            attempts: 0,
            out: Vec::new(),
            metrics,
        })
    }

    /// Normalizes record number `n` and hands its events and dead letters to their
    /// destinations, in order. `now`: the time, read by the caller.
    async fn send(&mut self, n: u64, now: Instant) {
        let i = (n - self.first) as usize;
        self.out.clear();
        {
            let e = &self.entries[i];
            let mut c = Collect {
                out: &mut self.out,
                stats: &self.shared.stats,
                metrics: &mut self.metrics,
            };
            self.normalizer.normalize(&e.bytes, &e.position, &mut c);
        }
        self.metrics.normalized(now.elapsed());
        self.entries[i].pending = self.out.len() as u32;
        let out = std::mem::take(&mut self.out);
        for o in &out {
            // An event the output can never take becomes a dead letter in its place.
            let mut instead: Option<Outgoing> = None;
            loop {
                let cur = instead.as_ref().unwrap_or(o);
                let r = match cur {
                    Outgoing::Event(json, label, ..) => self
                        .shared
                        .events
                        .send_event(&self.events_route, json)
                        .map(|a| (Kind::Event(*label), a)),
                    Outgoing::DeadLetter(dl, label) => self
                        .shared
                        .dead_letters
                        .send_dead_letter(&self.dead_route, dl)
                        .map(|a| (Kind::DeadLetter(*label), a)),
                };
                match r {
                    Ok((kind, ack)) => {
                        self.acks.push_back((n, kind, ack));
                        break;
                    }
                    Err(Refused::Full) => self.wait_for_room().await,
                    Err(Refused::TooLarge(why)) => {
                        let dl = match cur {
                            Outgoing::Event(json, _, position, source) => DeadLetter::new(
                                RecordError::new(
                                    ErrorCode::EventTooLarge,
                                    Stage::Encode,
                                    format!(
                                        "{why}; the OCSF event ({} bytes, already redacted) is kept here as `original`",
                                        json.len()
                                    ),
                                ),
                                position.clone(),
                                Some(*source),
                                json,
                            ),
                            // send_dead_letter never says TooLarge.
                            Outgoing::DeadLetter(dl, _) => dl.clone(),
                        };
                        let label = self.metrics.dead_letter_label(dl.stage, dl.error_code);
                        instead = Some(Outgoing::DeadLetter(dl, label));
                    }
                }
            }
        }
        self.out = out;
        // The record may have been popped meanwhile only if it is complete, which needs
        // `sent`; so it is still here.
        let i = (n - self.first) as usize;
        self.entries[i].sent = true;
        self.advance();
    }

    /// The destination's queue is full: let an acknowledgement arrive, or wait a little when
    /// this lane has none outstanding (other lanes fill the queue).
    async fn wait_for_room(&mut self) {
        if let Some((_, _, ack)) = self.acks.front_mut() {
            let r = ack.await;
            self.on_ack(r);
        } else {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    /// The front delivery resolved with `r`.
    fn on_ack(&mut self, r: Result<(), String>) {
        let Some((n, kind, _)) = self.acks.pop_front() else {
            return;
        };
        let stats = &self.shared.stats;
        let e = &mut self.entries[(n - self.first) as usize];
        e.pending -= 1;
        match r {
            Ok(()) => match kind {
                Kind::Event(label) => {
                    stats.events.fetch_add(1, Relaxed);
                    self.metrics.event_acknowledged(label);
                }
                Kind::DeadLetter(label) => {
                    stats.dead_letters.fetch_add(1, Relaxed);
                    self.metrics.dead_letter_acknowledged(label);
                }
            },
            Err(err) => {
                stats.failed_deliveries.fetch_add(1, Relaxed);
                telemetry::delivery_failed(kind.destination());
                e.failed = true;
                if self.failure.is_none() {
                    let what = match kind {
                        Kind::Event(_) => "output",
                        Kind::DeadLetter(_) => "dead-letter destination",
                    };
                    self.failure = Some(format!("{what}: {err}"));
                    self.failure_dest = kind.destination();
                }
            }
        }
        self.advance();
    }

    /// Takes every already-resolved acknowledgement without waiting.
    fn take_ready_acks(&mut self) {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        while let Some((_, _, ack)) = self.acks.front_mut() {
            match Pin::new(ack).poll(&mut cx) {
                Poll::Ready(r) => self.on_ack(r),
                Poll::Pending => break,
            }
        }
    }

    /// Moves the commit point past every complete record at the front.
    fn advance(&mut self) {
        while let Some(e) = self.entries.front() {
            if !(e.sent && e.pending == 0 && !e.failed) {
                break;
            }
            let e = self.entries.pop_front().expect("front exists");
            self.first += 1;
            self.acked = Some(e.position);
            self.acked_read_at = Some(e.read_at);
            self.dirty = true;
            self.attempts = 0;
            self.shared.stats.records.fetch_add(1, Relaxed);
            self.metrics.acknowledged();
        }
    }

    fn checkpoint(&mut self, ckpt: &mut impl Checkpointer) {
        if !self.dirty {
            return;
        }
        let Some(upto) = &self.acked else { return };
        for d in [&self.shared.events, &self.shared.dead_letters] {
            if let Err(e) = d.sync() {
                // Not durable yet: keep the commit point where it was, try again next tick.
                telemetry::checkpoint_failed(&self.name, upto, &e);
                return;
            }
        }
        match ckpt.checkpoint(upto) {
            Ok(()) => {
                self.dirty = false;
                self.metrics.checkpointed(upto, self.acked_read_at.take());
            }
            Err(e) => telemetry::checkpoint_failed(&self.name, upto, &e),
        }
    }

    /// The checkpoint tick's metrics: in-flight records, liveness, redaction counts.
    fn publish(&mut self) {
        self.metrics
            .tick(self.entries.len(), self.normalizer.redaction_counts());
    }

    /// Every delivery has settled and one failed: wait, then send again everything not yet
    /// acknowledged, in order. `Err` once the retry budget is spent; `Ok(false)` when a stop
    /// arrived during the wait.
    async fn retry(&mut self, stop: &mut oneshot::Receiver<()>) -> Result<bool, LaneError> {
        let budget = self.shared.settings.retry.budget;
        let last = self.failure.take().unwrap_or_default();
        self.attempts += 1;
        if self.attempts > budget {
            return Err(LaneError::RetryBudget {
                lane: self.name.clone(),
                attempts: self.attempts,
                budget,
                last,
            });
        }
        self.shared.stats.retries.fetch_add(1, Relaxed);
        let wait = self.shared.settings.retry.delay(self.attempts);
        telemetry::lane_retry(
            &self.name,
            self.failure_dest,
            self.attempts,
            budget,
            wait,
            self.entries.len(),
            &last,
        );
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop => return Ok(false),
        }
        for e in &mut self.entries {
            e.pending = 0;
            e.sent = false;
            e.failed = false;
        }
        let end = self.first + self.entries.len() as u64;
        let mut n = self.first;
        while n < end && self.failure.is_none() {
            self.send(n, Instant::now()).await;
            n += 1;
        }
        Ok(true)
    }

    /// The lane's loop. See the guarantees at the top of this file.
    async fn run<S: LaneSource, C: Checkpointer>(
        mut self,
        mut source: S,
        mut ckpt: C,
        mut stop: oneshot::Receiver<()>,
    ) -> Result<LaneEnd, LaneError> {
        let settings = self.shared.settings.clone();
        let mut tick = tokio::time::interval(CHECKPOINT_EVERY.min(settings.commit_interval));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut draining = false;
        let mut ended = false;
        let deadline = tokio::time::sleep(Duration::from_secs(86400 * 365));
        tokio::pin!(deadline);
        let every = CHECKPOINT_EVERY.min(settings.commit_interval);
        let mut last_checkpoint = Instant::now();
        let end = loop {
            // Time-based, not only on the tick: a lane whose input is always ready must still
            // checkpoint (and see `stop`), see the yield below.
            if last_checkpoint.elapsed() >= every {
                self.checkpoint(&mut ckpt);
                self.publish();
                last_checkpoint = Instant::now();
            }
            if self.failure.is_some() && self.acks.is_empty() {
                if draining {
                    break LaneEnd::Abandoned(self.entries.len());
                }
                match self.retry(&mut stop).await {
                    Ok(true) => continue,
                    Ok(false) => break LaneEnd::Abandoned(self.entries.len()),
                    Err(e) => {
                        self.checkpoint(&mut ckpt);
                        self.publish();
                        self.metrics.stopped();
                        return Err(e);
                    }
                }
            }
            if draining && self.acks.is_empty() && self.entries.is_empty() {
                break if ended {
                    LaneEnd::Finished
                } else {
                    LaneEnd::Drained
                };
            }
            let can_read =
                !draining && self.failure.is_none() && self.entries.len() < settings.in_flight;
            let has_acks = !self.acks.is_empty();
            let front = self.acks.front_mut().map(|(_, _, a)| a);
            let step = tokio::select! {
                biased;
                _ = &mut stop, if !draining => Step::Stop,
                _ = &mut deadline, if draining => Step::Deadline,
                r = async { match front { Some(a) => a.await, None => std::future::pending().await } },
                    if has_acks => Step::Acked(r),
                _ = tick.tick() => Step::Tick,
                u = source.next(), if can_read => Step::Read(u),
            };
            match step {
                Step::Stop => {
                    draining = true;
                    deadline
                        .as_mut()
                        .reset(tokio::time::Instant::now() + settings.drain_timeout);
                }
                Step::Deadline => break LaneEnd::Abandoned(self.entries.len()),
                Step::Acked(r) => {
                    self.on_ack(r);
                    self.take_ready_acks();
                }
                Step::Tick => {}
                Step::Read(Some(unit)) => {
                    let n = self.first + self.entries.len() as u64;
                    let now = Instant::now();
                    self.metrics.received();
                    self.entries.push_back(Entry {
                        position: unit.position,
                        bytes: unit.bytes,
                        read_at: now,
                        pending: 0,
                        sent: false,
                        failed: false,
                    });
                    self.send(n, now).await;
                    self.take_ready_acks();
                    // librdkafka's queue is not a tokio resource and is always ready under
                    // load, so without this the task would never yield: tokio's own timers and
                    // channels (the tick, `stop`) would stay pending once the task's
                    // cooperative budget is spent, and other tasks on this worker would starve.
                    tokio::task::coop::consume_budget().await;
                }
                Step::Read(None) => {
                    ended = true;
                    draining = true;
                    deadline
                        .as_mut()
                        .reset(tokio::time::Instant::now() + settings.drain_timeout);
                }
            }
        };
        self.checkpoint(&mut ckpt);
        self.publish();
        self.metrics.stopped();
        Ok(end)
    }
}

// ---------------------------------------------------------------------------------------------
// The set of running lanes
// ---------------------------------------------------------------------------------------------

struct Running {
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

/// Deregisters a lane from [`Health`] when its task ends, and reports a task that panicked
/// (the lane's state is dropped while unwinding).
struct LaneGuard {
    name: Arc<str>,
    health: Arc<Health>,
    lane: Arc<telemetry::LaneHealth>,
}

impl Drop for LaneGuard {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.health.lane_died(&self.name);
            telemetry::lane_stopped(&self.name, LaneStop::Panicked);
        }
        self.health.deregister(&self.name, &self.lane);
    }
}

/// The running lanes of one pipeline. An input starts a lane when it gets a partition (or
/// shard) and stops it when it loses it; a lane that fails for good reports on the fatal
/// channel, and the input driver then shuts the pipeline down.
pub struct Lanes {
    shared: Arc<Shared>,
    handle: tokio::runtime::Handle,
    running: Mutex<HashMap<Arc<str>, Running>>,
    fatal: mpsc::UnboundedSender<LaneError>,
}

impl Lanes {
    /// Starts a lane on the runtime. A lane of the same name still running is stopped first.
    pub fn start<S: LaneSource, C: Checkpointer>(&self, spec: LaneSpec, source: S, ckpt: C) {
        self.stop_blocking(std::slice::from_ref(&spec.name));
        let health = &self.shared.health;
        let lane_health = health.register(&spec.name);
        let metrics = LaneMetrics::new(&spec.name, lane_health.clone(), health.clock());
        let lane = match Lane::new(self.shared.clone(), &spec, metrics) {
            Ok(l) => l,
            Err(e) => {
                health.deregister(&spec.name, &lane_health);
                let _ = self.fatal.send(e);
                return;
            }
        };
        self.shared.stats.lanes_started.fetch_add(1, Relaxed);
        telemetry::lane_started(&spec.name);
        let (stop_tx, stop_rx) = oneshot::channel();
        let fatal = self.fatal.clone();
        let guard = LaneGuard {
            name: spec.name.clone(),
            health: health.clone(),
            lane: lane_health,
        };
        let task = self.handle.spawn(async move {
            let guard = guard;
            let how = match lane.run(source, ckpt, stop_rx).await {
                Ok(LaneEnd::Abandoned(n)) => LaneStop::Abandoned(n),
                Ok(LaneEnd::Drained) => LaneStop::Drained,
                Ok(LaneEnd::Finished) => LaneStop::Finished,
                Err(e) => {
                    telemetry::lane_failed(&guard.name, &e.to_string());
                    let _ = fatal.send(e);
                    LaneStop::Failed
                }
            };
            telemetry::lane_stopped(&guard.name, how);
        });
        self.lock().insert(
            spec.name,
            Running {
                stop: stop_tx,
                task,
            },
        );
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Arc<str>, Running>> {
        self.running.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The names of the running lanes.
    pub fn names(&self) -> Vec<Arc<str>> {
        let mut v: Vec<_> = self.lock().keys().cloned().collect();
        v.sort();
        v
    }

    fn take(&self, names: &[Arc<str>]) -> Vec<Running> {
        let mut running = self.lock();
        names.iter().filter_map(|n| running.remove(n)).collect()
    }

    /// Asks lanes to stop and waits until each has drained (or hit the drain timeout) and
    /// checkpointed.
    async fn finish(taken: Vec<Running>, drain: Duration) {
        let mut tasks = Vec::with_capacity(taken.len());
        for r in taken {
            let _ = r.stop.send(());
            tasks.push(r.task);
        }
        // Each lane enforces the drain deadline itself; this is the backstop.
        let deadline = tokio::time::Instant::now() + drain + Duration::from_secs(5);
        for mut t in tasks {
            if tokio::time::timeout_at(deadline, &mut t).await.is_err() {
                t.abort();
            }
        }
    }

    /// Stops the named lanes (drain, checkpoint) and waits for them.
    pub async fn stop(&self, names: &[Arc<str>]) {
        let taken = self.take(names);
        Self::finish(taken, self.shared.settings.drain_timeout).await
    }

    /// The same, from a thread that may not await: a Kafka rebalance callback. Blocks until
    /// the lanes are done. Needs the multi-threaded runtime when called from inside it.
    pub fn stop_blocking(&self, names: &[Arc<str>]) {
        let taken = self.take(names);
        if taken.is_empty() {
            return;
        }
        let fut = Self::finish(taken, self.shared.settings.drain_timeout);
        match tokio::runtime::Handle::try_current() {
            Ok(h) => tokio::task::block_in_place(|| h.block_on(fut)),
            Err(_) => self.handle.block_on(fut),
        }
    }

    pub async fn stop_all(&self) {
        let names = self.names();
        self.stop(&names).await
    }

    pub fn stats(&self) -> &Stats {
        &self.shared.stats
    }

    /// Readiness and liveness: inputs report their connection here (see `telemetry.rs`).
    pub fn health(&self) -> &Arc<Health> {
        &self.shared.health
    }
}

// ---------------------------------------------------------------------------------------------
// The pipeline
// ---------------------------------------------------------------------------------------------

/// Runs the pipeline of `plan` until `shutdown` resolves (Ok) or a lane fails for good
/// (Err). Must be called inside a multi-threaded tokio runtime: lanes are tasks on it, and a
/// rebalance callback blocks its thread while lanes drain.
pub async fn run(
    plan: &Plan,
    mappings: Arc<Mappings>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<Summary, PipelineError> {
    let start = Instant::now();
    let stall_timeout = plan
        .metrics
        .as_ref()
        .map_or(crate::config::DEFAULT_STALL_TIMEOUT, |m| m.stall_timeout);
    let health = Arc::new(Health::new(stall_timeout));
    // The tables were loaded before `run` was called.
    health.set_mappings_loaded(true);
    // First, so that probes are answered while destinations are being opened.
    let server = match &plan.metrics {
        Some(m) => Some(
            telemetry::start_server(m.listen, m.path.clone(), health.clone())
                .await
                .map_err(PipelineError::Metrics)?,
        ),
        None => None,
    };
    struct AbortOnDrop(Option<tokio::task::JoinHandle<()>>);
    impl Drop for AbortOnDrop {
        fn drop(&mut self) {
            if let Some(t) = &self.0 {
                t.abort();
            }
        }
    }
    let _server = AbortOnDrop(server);
    let (stop_tx, mut stop_rx) = watch::channel(false);
    let h = health.clone();
    let signal = tokio::spawn(async move {
        shutdown.await;
        h.set_stopping();
        let _ = stop_tx.send(true);
    });
    let settings = plan.lanes.clone();
    let events = Destination::open(
        &plan.output,
        DestinationKind::Output,
        &settings,
        &mut stop_rx,
    )
    .await?;
    let dead_letters = Destination::open(
        &plan.dead_letter,
        DestinationKind::DeadLetter,
        &settings,
        &mut stop_rx,
    )
    .await?;
    let shared = Arc::new(Shared {
        events,
        dead_letters,
        settings,
        mappings,
        stats: Stats::default(),
        redactor: plan.redactor.clone(),
        keep_raw_dead_letters: plan.keep_raw_dead_letters,
        health: health.clone(),
    });
    let (fatal_tx, fatal_rx) = mpsc::unbounded_channel();
    let lanes = Arc::new(Lanes {
        shared: shared.clone(),
        handle: tokio::runtime::Handle::current(),
        running: Mutex::new(HashMap::new()),
        fatal: fatal_tx,
    });
    // The input driver runs as a task of its own: a rebalance callback inside it may block
    // its worker thread (block_in_place), which the caller's thread could not allow.
    let driver = match &plan.input {
        crate::config::InputPlan::Kafka(k) => tokio::spawn(crate::source::kafka::drive(
            k.clone(),
            lanes.clone(),
            fatal_rx,
            stop_rx,
        )),
        crate::config::InputPlan::Kinesis(k) => tokio::spawn(crate::source::kinesis::drive(
            (**k).clone(),
            lanes.clone(),
            fatal_rx,
            stop_rx,
        )),
    };
    let result = driver.await.unwrap_or_else(|e| {
        Err(PipelineError::Input(format!(
            "the input driver failed: {e}"
        )))
    });
    signal.abort();
    health.set_stopping();
    lanes.stop_all().await;
    drop(lanes);
    let s = shared.clone();
    let _ = tokio::task::spawn_blocking(move || {
        s.events.close(DestinationKind::Output);
        s.dead_letters.close(DestinationKind::DeadLetter);
    })
    .await;
    result.map(|()| shared.stats.summary(start.elapsed()))
}

/// For local runs: a file destination's target, as named in messages.
pub fn describe(plan: &DestinationPlan) -> String {
    match plan {
        DestinationPlan::Kafka(k) => format!(
            "Kafka topic {} on {}",
            k.topic,
            k.client.get("bootstrap.servers").unwrap_or("?")
        ),
        DestinationPlan::Kinesis(k) => format!("Kinesis stream {}", k.stream),
        DestinationPlan::File(Target::Stdout) => "standard output".into(),
        DestinationPlan::File(Target::Stderr) => "standard error".into(),
        DestinationPlan::File(Target::File(p)) => p.display().to_string(),
    }
}
