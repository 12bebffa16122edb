//! Kinesis as an input: one lane per shard, leases shared with other replicas, resharding in
//! order.
//!
//! - **Leases** ([`crate::kinesis::lease`]): every `lease_duration / 3` the driver lists the
//!   lease table, renews (or checkpoints) the leases it holds, and takes its fair share of
//!   expired or unowned ones, stealing one at a time from a replica that holds more than its
//!   share. A lease it finds changed under it (taken over) has its lane stopped at once.
//! - **Lanes**: a taken lease starts a lane whose [`ShardSource`] is fed by a reader task
//!   (GetShardIterator, then GetRecords in a loop): the task fetches ahead while the lane
//!   normalizes, and the lane's `next` is a channel receive, so a lane that wakes up for a
//!   checkpoint tick never cancels a GetRecords call under way.
//! - **Retries**: throttling (ProvisionedThroughputExceeded, LimitExceeded), expired
//!   iterators and transient errors are retried with backoff from the last record handed to
//!   the lane: nothing is skipped.
//! - **Checkpoints**: the lane's commit point ([`KinesisCheckpoint`]) is written to the lease
//!   every `pipeline.commit_interval`, and once more when the lane stops.
//! - **Resharding**: a closed shard's reader ends after its last record; once every record up
//!   to it is acknowledged, the lease is checkpointed `SHARD_END` and the stream's shard list
//!   is read again, creating the children's leases. A child is taken only when all its parents
//!   are at `SHARD_END` (the KCL rule), so records of one partition key stay in order across a
//!   split or a merge.
//! - **Payloads**: each Kinesis record is one unit; KPL aggregates and CloudWatch Logs
//!   subscription payloads are unpacked by the normalizer (`kinesis::kpl`, `envelope`).

use crate::config::{KinesisInputPlan, LeasePlan, StartPlan};
use crate::kinesis::aws;
use crate::kinesis::lease::{self, Checkpoint, DynamoLeases, FileLeases, Lease, LeaseStore};
use crate::pipeline::{Checkpointer, LaneError, LaneSource, LaneSpec, Lanes, PipelineError, Unit};
use crate::record::Position;
use crate::telemetry;
use aws_sdk_kinesis::types::{
    ConsumerStatus, ShardIteratorType, StartingPosition, SubscribeToShardEventStream,
};
use aws_sdk_kinesis::Client;
use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};

/// What a lane's reader, its checkpointer and the driver share about one shard.
#[derive(Debug, Default)]
struct ShardProgress {
    /// The newest sequence number handed to the lane's queue.
    read: Option<Arc<str>>,
    /// The reader reached the end of a closed shard.
    ended: bool,
    /// The lane's commit point.
    acked: Option<Arc<str>>,
    /// How far behind the tip the last GetRecords was (for the lag metric).
    behind_ms: Option<i64>,
}

type Progress = Arc<Mutex<ShardProgress>>;

fn lock(p: &Progress) -> std::sync::MutexGuard<'_, ShardProgress> {
    p.lock().unwrap_or_else(|e| e.into_inner())
}

/// A lane's records, fed by its reader task.
pub struct ShardSource {
    rx: mpsc::Receiver<Vec<Unit>>,
    buf: VecDeque<Unit>,
    reader: tokio::task::JoinHandle<()>,
}

impl LaneSource for ShardSource {
    async fn next(&mut self) -> Option<Unit> {
        loop {
            if let Some(u) = self.buf.pop_front() {
                return Some(u);
            }
            // Cancel-safe: a batch is either received whole or left in the channel.
            let batch = self.rx.recv().await?;
            self.buf.extend(batch);
        }
    }
}

impl Drop for ShardSource {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

/// Hands a lane's commit point to the driver, which writes it to the lease.
pub struct KinesisCheckpoint {
    progress: Progress,
}

impl Checkpointer for KinesisCheckpoint {
    fn checkpoint(&mut self, upto: &Position) -> Result<(), String> {
        match upto {
            Position::Kinesis { sequence, .. } => {
                lock(&self.progress).acked = Some(sequence.clone());
                Ok(())
            }
            other => Err(format!("internal: not a Kinesis position: {other}")),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The reader of one shard
// ---------------------------------------------------------------------------------------------

struct Reader {
    client: Client,
    stream: Arc<str>,
    shard: Arc<str>,
    /// Resume after this sequence number; `None`: from `start`.
    after: Option<Arc<str>>,
    start: StartPlan,
    limit: i32,
    interval: Duration,
    /// Enhanced fan-out: the registered consumer's ARN (`None`: polling).
    consumer: Option<Arc<str>>,
    progress: Progress,
    lane: Arc<str>,
}

/// Errors worth waiting out; anything else is retried too, but said louder.
fn is_throttle(code: Option<&str>) -> bool {
    matches!(
        code,
        Some(
            "ProvisionedThroughputExceededException"
                | "LimitExceededException"
                | "KMSThrottlingException"
                | "ThrottlingException"
        )
    )
}

impl Reader {
    async fn iterator(&self) -> Result<String, (Option<String>, String)> {
        let mut req = self
            .client
            .get_shard_iterator()
            .stream_name(self.stream.as_ref())
            .shard_id(self.shard.as_ref());
        req = match (&self.after, &self.start) {
            (Some(seq), _) => req
                .shard_iterator_type(ShardIteratorType::AfterSequenceNumber)
                .starting_sequence_number(seq.as_ref()),
            (None, StartPlan::TrimHorizon) => {
                req.shard_iterator_type(ShardIteratorType::TrimHorizon)
            }
            (None, StartPlan::Latest) => req.shard_iterator_type(ShardIteratorType::Latest),
            (None, StartPlan::AtTimestamp(ms)) => req
                .shard_iterator_type(ShardIteratorType::AtTimestamp)
                .timestamp(aws_sdk_kinesis::primitives::DateTime::from_millis(*ms)),
        };
        match req.send().await {
            Ok(o) => o
                .shard_iterator()
                .map(str::to_string)
                .ok_or((None, "GetShardIterator returned no iterator".into())),
            Err(e) => Err((
                aws_sdk_kinesis::error::ProvideErrorMetadata::code(&e).map(str::to_string),
                aws::describe(&e),
            )),
        }
    }

    async fn run(self, tx: mpsc::Sender<Vec<Unit>>) {
        match self.consumer.clone() {
            Some(arn) => self.subscribe(&arn, tx).await,
            None => self.poll(tx).await,
        }
    }

    /// Turns records into units; `after` moves to the last one.
    fn units(&mut self, records: Vec<aws_sdk_kinesis::types::Record>) -> Vec<Unit> {
        let mut units = Vec::with_capacity(records.len());
        for r in records {
            let seq: Arc<str> = Arc::from(r.sequence_number.as_str());
            units.push(Unit {
                position: Position::Kinesis {
                    stream: self.stream.clone(),
                    shard: self.shard.clone(),
                    sequence: seq.clone(),
                    index: None,
                },
                bytes: r.data.into_inner(),
            });
            self.after = Some(seq);
        }
        units
    }

    /// Enhanced fan-out: SubscribeToShard, each subscription pushing events for up to five
    /// minutes, then subscribing again after the last record handed to the lane (or the
    /// last event's continuation sequence number, when no record came: a quiet shard must
    /// not fall back to LATEST and miss what arrives in between).
    async fn subscribe(mut self, consumer: &str, tx: mpsc::Sender<Vec<Unit>>) {
        let mut backoff = Backoff::new();
        let mut continuation: Option<String> = None;
        let mut quiet_since = Instant::now();
        let mut checked = Instant::now();
        loop {
            let position = match (&self.after, &continuation, &self.start) {
                (Some(seq), _, _) => StartingPosition::builder()
                    .r#type(ShardIteratorType::AfterSequenceNumber)
                    .sequence_number(seq.as_ref()),
                (None, Some(c), _) => StartingPosition::builder()
                    .r#type(ShardIteratorType::AfterSequenceNumber)
                    .sequence_number(c),
                (None, None, StartPlan::TrimHorizon) => {
                    StartingPosition::builder().r#type(ShardIteratorType::TrimHorizon)
                }
                (None, None, StartPlan::Latest) => {
                    StartingPosition::builder().r#type(ShardIteratorType::Latest)
                }
                (None, None, StartPlan::AtTimestamp(ms)) => StartingPosition::builder()
                    .r#type(ShardIteratorType::AtTimestamp)
                    .timestamp(aws_sdk_kinesis::primitives::DateTime::from_millis(*ms)),
            };
            let position = match position.build() {
                Ok(p) => p,
                Err(e) => {
                    self.wait(&mut backoff, None, "SubscribeToShard", &e.to_string())
                        .await;
                    continue;
                }
            };
            let sub = self
                .client
                .subscribe_to_shard()
                .consumer_arn(consumer)
                .shard_id(self.shard.as_ref())
                .starting_position(position)
                .send()
                .await;
            let mut out = match sub {
                Ok(o) => o,
                Err(e) => {
                    let code =
                        aws_sdk_kinesis::error::ProvideErrorMetadata::code(&e).map(str::to_string);
                    self.wait(
                        &mut backoff,
                        code.as_deref(),
                        "SubscribeToShard",
                        &aws::describe(&e),
                    )
                    .await;
                    continue;
                }
            };
            loop {
                match out.event_stream.recv().await {
                    Ok(Some(SubscribeToShardEventStream::SubscribeToShardEvent(ev))) => {
                        backoff.reset();
                        let ended = !ev.child_shards.as_ref().is_none_or(|c| c.is_empty())
                            || ev.continuation_sequence_number.is_empty();
                        if !ev.continuation_sequence_number.is_empty() {
                            continuation = Some(ev.continuation_sequence_number.clone());
                        }
                        let behind = ev.millis_behind_latest;
                        let units = self.units(ev.records);
                        {
                            let mut p = lock(&self.progress);
                            p.behind_ms = Some(behind);
                            if !units.is_empty() {
                                p.read = self.after.clone();
                            }
                        }
                        let got = !units.is_empty();
                        if got && tx.send(units).await.is_err() {
                            return;
                        }
                        if ended {
                            lock(&self.progress).ended = true;
                            return;
                        }
                        // A quiet shard may have been closed without the event saying so
                        // (kinesis-local never sends ChildShards): then read the rest of it
                        // by polling, which ends where the shard ends.
                        if got {
                            quiet_since = Instant::now();
                        } else if quiet_since.elapsed() >= QUIET_CHECK
                            && checked.elapsed() >= QUIET_CHECK
                        {
                            checked = Instant::now();
                            if self.closed().await {
                                telemetry::kinesis_notice(
                                    &self.lane,
                                    "the shard is closed; reading its end by polling",
                                );
                                return self.poll(tx).await;
                            }
                        }
                    }
                    // The subscription's five minutes are over.
                    Ok(None) => break,
                    Ok(Some(other)) => {
                        telemetry::kinesis_notice(
                            &self.lane,
                            &format!("ignored an unknown event stream message: {other:?}"),
                        );
                    }
                    Err(e) => {
                        let why = format!("{e}");
                        self.wait(&mut backoff, None, "SubscribeToShard event stream", &why)
                            .await;
                        break;
                    }
                }
            }
        }
    }

    /// The shard has an ending sequence number (split or merged away).
    async fn closed(&self) -> bool {
        list_shards(&self.client, &self.stream)
            .await
            .ok()
            .and_then(|shards| shards.into_iter().find(|s| s.shard_id() == &*self.shard))
            .is_some_and(|s| {
                s.sequence_number_range()
                    .is_some_and(|r| r.ending_sequence_number().is_some())
            })
    }

    /// Polling: GetShardIterator, then GetRecords in a loop.
    async fn poll(mut self, tx: mpsc::Sender<Vec<Unit>>) {
        let mut backoff = Backoff::new();
        let mut iterator: Option<String> = None;
        let mut next_call = tokio::time::Instant::now();
        loop {
            let it = match iterator.take() {
                Some(it) => it,
                None => match self.iterator().await {
                    Ok(it) => {
                        backoff.reset();
                        it
                    }
                    Err((code, why)) => {
                        self.wait(&mut backoff, code.as_deref(), "GetShardIterator", &why)
                            .await;
                        continue;
                    }
                },
            };
            tokio::time::sleep_until(next_call).await;
            next_call = tokio::time::Instant::now() + self.interval;
            let r = self
                .client
                .get_records()
                .shard_iterator(&it)
                .limit(self.limit)
                .send()
                .await;
            let out = match r {
                Ok(o) => o,
                Err(e) => {
                    let code =
                        aws_sdk_kinesis::error::ProvideErrorMetadata::code(&e).map(str::to_string);
                    if code.as_deref() == Some("ExpiredIteratorException") {
                        // A new iterator after the last record handed over: nothing skipped.
                        continue;
                    }
                    self.wait(
                        &mut backoff,
                        code.as_deref(),
                        "GetRecords",
                        &aws::describe(&e),
                    )
                    .await;
                    iterator = Some(it);
                    continue;
                }
            };
            backoff.reset();
            let units = self.units(out.records);
            let caught_up = units.is_empty() || out.millis_behind_latest == Some(0);
            {
                let mut p = lock(&self.progress);
                p.behind_ms = out.millis_behind_latest;
                if !units.is_empty() {
                    p.read = self.after.clone();
                }
            }
            if !units.is_empty() && tx.send(units).await.is_err() {
                return; // the lane stopped
            }
            match out.next_shard_iterator {
                Some(next) => iterator = Some(next),
                None => {
                    // A closed shard, read to its end.
                    lock(&self.progress).ended = true;
                    return;
                }
            }
            if !caught_up {
                // Behind the tip: the next call right away (still at most one per interval).
                next_call = tokio::time::Instant::now();
            }
        }
    }

    async fn wait(&self, backoff: &mut Backoff, code: Option<&str>, op: &str, why: &str) {
        let d = backoff.next();
        telemetry::kinesis_read_retry(
            &self.lane,
            op,
            is_throttle(code),
            d,
            self.after.as_deref().unwrap_or("the lease's checkpoint"),
            why,
        );
        tokio::time::sleep(d).await;
    }
}

/// Every shard of the stream (closed ones too), over ListShards' pages.
async fn list_shards(
    client: &Client,
    stream: &str,
) -> Result<Vec<aws_sdk_kinesis::types::Shard>, String> {
    let mut shards = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let mut req = client.list_shards();
        req = match &token {
            Some(t) => req.next_token(t),
            None => req.stream_name(stream),
        };
        let out = req
            .send()
            .await
            .map_err(|e| format!("ListShards on stream {stream}: {}", aws::describe(&e)))?;
        token = out
            .next_token()
            .filter(|t| !t.is_empty())
            .map(str::to_string);
        shards.extend(out.shards.unwrap_or_default());
        if token.is_none() {
            return Ok(shards);
        }
    }
}

/// How long an enhanced fan-out subscription may bring nothing before the reader checks
/// whether its shard was closed.
const QUIET_CHECK: Duration = Duration::from_secs(3);

/// Exponential backoff from 100 ms to 10 s.
struct Backoff(u32);

impl Backoff {
    fn new() -> Backoff {
        Backoff(0)
    }
    fn reset(&mut self) {
        self.0 = 0;
    }
    fn next(&mut self) -> Duration {
        self.0 = (self.0 + 1).min(8);
        Duration::from_millis(100u64 << (self.0 - 1)).min(Duration::from_secs(10))
    }
}

// ---------------------------------------------------------------------------------------------
// The driver: shards, leases, lanes
// ---------------------------------------------------------------------------------------------

struct Held {
    lease: Lease,
    name: Arc<str>,
    progress: Progress,
    /// The checkpoint last written.
    written: Option<Arc<str>>,
    last_write: Instant,
}

impl Held {
    /// The checkpoint the lease is behind on: `SHARD_END` once a closed shard's every record
    /// is acknowledged, else the lane's commit point when it moved since the last write.
    fn due(&self) -> Option<Checkpoint> {
        let p = lock(&self.progress);
        if p.ended && p.read == p.acked {
            Some(Checkpoint::End)
        } else if p.acked.is_some() && p.acked != self.written {
            p.acked.as_deref().map(|a| Checkpoint::After(a.to_string()))
        } else {
            None
        }
    }
}

struct Driver {
    plan: KinesisInputPlan,
    client: Client,
    store: LeaseStore,
    lanes: Arc<Lanes>,
    stream: Arc<str>,
    held: BTreeMap<String, Held>,
    observed: lease::Observed,
    /// Enhanced fan-out: the registered consumer's ARN.
    consumer: Option<Arc<str>>,
}

fn input_err(e: impl std::fmt::Display) -> PipelineError {
    PipelineError::Input(e.to_string())
}

impl Driver {
    /// Creates a lease for every shard of the stream that has none.
    async fn sync_shards(&self) -> Result<usize, String> {
        let mut created = 0;
        for s in list_shards(&self.client, &self.stream).await? {
            let mut parents: Vec<String> = [s.parent_shard_id(), s.adjacent_parent_shard_id()]
                .into_iter()
                .flatten()
                .map(str::to_string)
                .collect();
            parents.sort();
            if self
                .store
                .create(s.shard_id(), &parents)
                .await
                .map_err(|e| e.to_string())?
            {
                created += 1;
            }
        }
        Ok(created)
    }

    fn start_lane(&mut self, lease: Lease, stolen_from: Option<&str>) {
        let name: Arc<str> = Arc::from(format!("{}/{}", self.stream, lease.shard));
        let progress: Progress = Arc::default();
        let after = match &lease.checkpoint {
            Checkpoint::After(s) => Some(Arc::from(s.as_str())),
            _ => None,
        };
        let written = after.clone();
        let reader = Reader {
            client: self.client.clone(),
            stream: self.stream.clone(),
            shard: Arc::from(lease.shard.as_str()),
            after,
            start: self.plan.start,
            limit: self.plan.limit,
            interval: self.plan.interval,
            consumer: self.consumer.clone(),
            progress: progress.clone(),
            lane: name.clone(),
        };
        // Two batches ahead: the next GetRecords overlaps normalizing the current one.
        let (tx, rx) = mpsc::channel(2);
        let task = tokio::spawn(reader.run(tx));
        let source = ShardSource {
            rx,
            buf: VecDeque::new(),
            reader: task,
        };
        let spec = LaneSpec {
            name: name.clone(),
            source: self.plan.source,
            ordinal: None,
        };
        let from = match &lease.checkpoint {
            Checkpoint::After(s) => format!("after {s}"),
            _ => format!("from {}", self.plan.start),
        };
        telemetry::kinesis_lease_taken(&name, lease.counter, &from, stolen_from);
        self.lanes.start(
            spec,
            source,
            KinesisCheckpoint {
                progress: progress.clone(),
            },
        );
        self.held.insert(
            lease.shard.clone(),
            Held {
                lease,
                name,
                progress,
                written,
                last_write: Instant::now(),
            },
        );
    }

    /// Stops a lane whose lease is gone (taken over): no checkpoint is written.
    /// The lane drains in the background: waiting here (up to the drain timeout) would hold
    /// up the renewal of every other lease this replica has.
    fn drop_lane(&mut self, shard: &str, why: &str) {
        if let Some(h) = self.held.remove(shard) {
            telemetry::kinesis_lease_lost(&h.name, why);
            let lanes = self.lanes.clone();
            tokio::spawn(async move { lanes.stop(&[h.name]).await });
        }
    }

    /// One round: renew, checkpoint, finish ended shards, take leases.
    async fn round(&mut self) -> Result<(), String> {
        let leases = self.store.list().await.map_err(|e| e.to_string())?;
        let now = Instant::now();
        self.observed.update(&leases, now);
        // Leases changed under us were taken over.
        let lost: Vec<String> = self
            .held
            .iter()
            .filter(|(shard, h)| {
                !leases.iter().any(|l| {
                    l.shard == **shard && l.counter == h.lease.counter && l.owner == h.lease.owner
                })
            })
            .map(|(s, _)| s.clone())
            .collect();
        for s in lost {
            self.drop_lane(&s, "its lease was taken by another replica");
        }
        let renew_every = self.plan.lease_duration / 3;
        let mut ended_any = false;
        let shards: Vec<String> = self.held.keys().cloned().collect();
        for shard in shards {
            let Some(h) = self.held.get(&shard) else {
                continue;
            };
            if let Some(ms) = lock(&h.progress).behind_ms {
                telemetry::lane_behind(&h.name, ms);
            }
            let since = h.last_write.elapsed();
            let write = match h.due() {
                Some(Checkpoint::After(_))
                    if since < self.plan.commit_interval.min(renew_every) =>
                {
                    None
                }
                due => due,
            };
            let done = write == Some(Checkpoint::End);
            let r = match &write {
                Some(cp) => self.store.checkpoint(&h.lease, cp).await,
                None if since >= renew_every => self.store.renew(&h.lease).await,
                None => continue,
            };
            match r.map_err(|e| e.to_string())? {
                Some(l) => {
                    let h = self.held.get_mut(&shard).expect("held");
                    h.lease = l;
                    h.last_write = Instant::now();
                    if let Some(Checkpoint::After(a)) = &write {
                        h.written = Some(Arc::from(a.as_str()));
                    }
                    if done {
                        let h = self.held.remove(&shard).expect("held");
                        telemetry::kinesis_shard_ended(&h.name);
                        self.lanes.stop(&[h.name]).await;
                        ended_any = true;
                    }
                }
                None => self.drop_lane(&shard, "its lease was taken by another replica"),
            }
        }
        let leases = if ended_any {
            // The children of a finished shard may read now; make sure they have leases.
            self.sync_shards().await?;
            let l = self.store.list().await.map_err(|e| e.to_string())?;
            self.observed.update(&l, Instant::now());
            l
        } else {
            leases
        };
        // Our own view of what we hold wins over the listing (it may predate our writes).
        let view: Vec<Lease> = leases
            .into_iter()
            .map(|l| match self.held.get(&l.shard) {
                Some(h) => h.lease.clone(),
                None => l,
            })
            .collect();
        let me = self.plan.worker_id.clone();
        for l in lease::to_take(
            &view,
            &me,
            &self.observed,
            Instant::now(),
            self.plan.lease_duration,
        ) {
            if self.held.contains_key(&l.shard) {
                continue;
            }
            // Taken from a live owner (balance), not from one that stopped renewing.
            let stolen = l.owner.as_deref().is_some_and(|o| o != me)
                && !self
                    .observed
                    .expired(&l, Instant::now(), self.plan.lease_duration);
            // None: another replica was faster.
            if let Some(taken) = self.store.take(&l, &me).await.map_err(|e| e.to_string())? {
                let from = l.owner.clone().filter(|_| stolen);
                self.start_lane(taken, from.as_deref())
            }
        }
        Ok(())
    }

    /// Stops every lane, writes its last checkpoint and lets its lease go.
    async fn shutdown(&mut self) {
        self.lanes.stop_all().await;
        let held = std::mem::take(&mut self.held);
        for (_, h) in held {
            let cp = h.due();
            let mut lease = h.lease.clone();
            if let Some(cp) = &cp {
                match self.store.checkpoint(&lease, cp).await {
                    Ok(Some(l)) => lease = l,
                    Ok(None) => {
                        telemetry::kinesis_lease_lost(
                            &h.name,
                            "taken before the last checkpoint was written",
                        );
                        continue;
                    }
                    Err(e) => {
                        telemetry::kinesis_lease_error("last checkpoint", &e.to_string());
                        continue;
                    }
                }
            }
            if let Err(e) = self.store.release(&lease).await {
                telemetry::kinesis_lease_error("release", &e.to_string());
            }
        }
    }
}

/// Registers the enhanced fan-out consumer (or finds it, registered by another replica) and
/// waits until it is ACTIVE. Returns its ARN.
async fn register(client: &Client, stream_arn: &str, name: &str) -> Result<String, PipelineError> {
    let fail = |what: String| {
        input_err(format!(
            "enhanced fan-out consumer {name} on {stream_arn}: {what}; check that the credentials may call kinesis:RegisterStreamConsumer, DescribeStreamConsumer and SubscribeToShard (at most 20 consumers per stream)"
        ))
    };
    let registered = client
        .register_stream_consumer()
        .stream_arn(stream_arn)
        .consumer_name(name)
        .send()
        .await;
    if let Err(e) = registered {
        let in_use = e
            .as_service_error()
            .is_some_and(|s| s.is_resource_in_use_exception());
        if !in_use {
            return Err(fail(aws::describe(&e)));
        }
    }
    for _ in 0..120 {
        let d = client
            .describe_stream_consumer()
            .stream_arn(stream_arn)
            .consumer_name(name)
            .send()
            .await
            .map_err(|e| fail(aws::describe(&e)))?;
        if let Some(c) = d.consumer_description() {
            if c.consumer_status() == &ConsumerStatus::Active {
                return Ok(c.consumer_arn().to_string());
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Err(fail("did not become ACTIVE within 60s".into()))
}

/// Runs the Kinesis input until `stop` or a lane fails for good.
pub async fn drive(
    plan: KinesisInputPlan,
    lanes: Arc<Lanes>,
    mut lane_failures: mpsc::UnboundedReceiver<LaneError>,
    mut stop: watch::Receiver<bool>,
) -> Result<(), PipelineError> {
    let config = aws::sdk_config(&plan.aws).await;
    let client = aws::kinesis(&config, plan.aws.endpoint.as_deref());
    let store = match &plan.leases {
        LeasePlan::Dynamo { table, aws: a } => {
            let config = aws::sdk_config(a).await;
            LeaseStore::Dynamo(DynamoLeases {
                client: aws::dynamodb(&config, a.endpoint.as_deref()),
                table: table.clone(),
            })
        }
        LeasePlan::File(p) => LeaseStore::File(FileLeases::new(Some(p.clone()))),
    };
    let summary = client
        .describe_stream_summary()
        .stream_name(&plan.stream)
        .send()
        .await
        .map_err(|e| {
            input_err(format!(
                "cannot read Kinesis stream {}: {}; check the stream name, the region and endpoint, and that the credentials may call kinesis:DescribeStreamSummary, ListShards, GetShardIterator and GetRecords",
                plan.stream,
                aws::describe(&e)
            ))
        })?;
    let consumer = match &plan.fan_out {
        Some(name) => {
            let arn = summary
                .stream_description_summary()
                .map(|d| d.stream_arn().to_string())
                .unwrap_or_default();
            Some(Arc::from(register(&client, &arn, name).await?.as_str()))
        }
        None => None,
    };
    store.prepare().await.map_err(input_err)?;
    let mode = if consumer.is_some() {
        "enhanced fan-out"
    } else {
        "polling"
    };
    telemetry::kinesis_started(&plan.stream, &plan.worker_id, &store.name(), mode);
    // Replicas beyond the shard count hold nothing and wait to take over: still ready.
    lanes.health().set_idle_ok(true);
    lanes.health().set_connected(true);
    let mut d = Driver {
        stream: Arc::from(plan.stream.as_str()),
        plan,
        client,
        store,
        lanes,
        held: BTreeMap::new(),
        observed: lease::Observed::default(),
        consumer,
    };
    d.sync_shards().await.map_err(input_err)?;
    let every = (d.plan.lease_duration / 3)
        .min(d.plan.commit_interval)
        .max(Duration::from_millis(100));
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut sync = tokio::time::interval(d.plan.shard_sync_interval);
    sync.tick().await;
    let mut failures = 0u32;
    let result = loop {
        tokio::select! {
            // (The watch guard is dropped inside: it is not Send.)
            _ = async { let _ = stop.wait_for(|s| *s).await; } => break Ok(()),
            Some(e) = lane_failures.recv() => break Err(PipelineError::Lane(e)),
            _ = sync.tick() => {
                if let Err(e) = d.sync_shards().await {
                    telemetry::kinesis_lease_error("shard listing", &e);
                }
            }
            _ = tick.tick() => match d.round().await {
                Ok(()) => {
                    failures = 0;
                    d.lanes.health().set_connected(true);
                    telemetry::kinesis_leases_held(d.held.len());
                }
                Err(e) => {
                    failures += 1;
                    d.lanes.health().set_connected(false);
                    telemetry::kinesis_lease_error("lease round", &e);
                    // Past the lease duration our leases are someone else's: stop reading.
                    if every * failures >= d.plan.lease_duration {
                        let shards: Vec<String> = d.held.keys().cloned().collect();
                        for s in shards {
                            d.drop_lane(&s, "its lease could not be renewed");
                        }
                    }
                }
            },
        }
    };
    d.shutdown().await;
    result
}
