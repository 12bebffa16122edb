//! A Kinesis data stream as a destination of events or dead letters: records are queued,
//! batched into `PutRecords` calls by a background task, and each [`Delivery`] resolves when
//! the stream has its record.
//!
//! Sending never blocks: [`KinesisStream::send`] queues the record (or says [`SendError::Full`]
//! when `max_in_flight` records are already waiting or in flight; the lane then waits for one
//! of its acknowledgements and sends again). The background task sends a batch when it holds
//! 500 records or 5 MiB, or when its oldest record has waited `linger`.
//!
//! # Order per partition key
//!
//! Kinesis keeps the order of the records of one shard as they arrive, and within one
//! `PutRecords` call the records that succeed get sequence numbers in request order; but a call
//! can fail for some of its records only (`FailedRecordCount`, entries with an `ErrorCode`), so
//! the records after a failed one may land before its retry. This sink keeps the order of each
//! partition key (the lane's name, so guarantee 1 of `pipeline.rs` holds) this way:
//!
//! - No two calls in flight hold the same partition key: a batch takes a record only when no
//!   call in flight, and no earlier record still waiting, has its key.
//! - When entry i of key K failed with a retryable code (`ProvisionedThroughputExceededException`,
//!   `InternalFailure`), entry i **and every later entry of K in that batch** are sent again,
//!   in order, after a backoff, before any other record of K (see [`settle`]). The later
//!   entries that had succeeded are therefore on the stream twice: **a run of records can
//!   appear twice; the second copy is in order**, the same guarantee the Kafka output gives
//!   after a retry. A record's [`Delivery`] resolves `Ok` only once it was accepted after every
//!   earlier record of its key.
//! - Whole-call errors (throttling, network, timeouts) send the same batch again after a backoff
//!   while its keys stay reserved, up to `retry.budget` attempts. Entry-level failures count
//!   against the same budget per record.
//! - When a record fails for good (budget spent, or a permanent error such as a record over the
//!   stream's size limit), its delivery resolves `Err`, and so does every later record of its
//!   key that is waiting or in the same batch ("an earlier record with the same partition key
//!   was not delivered"): the lane sends them again from its commit point (guarantee 3), so
//!   nothing after the gap is acknowledged. Records of that key queued after the lane saw the
//!   error are sent normally.
//!
//! A record that cannot fit (data + partition key over the stream's maximum record size, 1 MiB
//! unless the stream was configured larger; a partition key outside 1..=256 characters) is
//! refused at [`KinesisStream::send`] with [`SendError::TooLarge`] (the pipeline makes the event a
//! dead letter) or [`SendError::Failed`].

use crate::config::RetryPolicy;
use crate::kinesis::aws::{self, AwsSettings};
use std::collections::{HashMap, HashSet, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};

/// Records per `PutRecords` call (the API's limit).
pub const MAX_BATCH_RECORDS: usize = 500;
/// Bytes per `PutRecords` call, data and partition keys (the API's limit).
pub const MAX_BATCH_BYTES: usize = 5 * 1024 * 1024;
/// A record's data and partition key, unless the stream was configured larger.
pub const DEFAULT_MAX_RECORD_BYTES: usize = 1024 * 1024;
/// Characters in a partition key (the API's limit).
pub const MAX_PARTITION_KEY_CHARS: usize = 256;

/// The output settings; the pipeline builds them from the YAML config.
#[derive(Debug, Clone)]
pub struct KinesisOutputSettings {
    /// The stream's name or ARN (`arn:...`).
    pub stream: String,
    pub aws: AwsSettings,
    /// How long a record may wait for more to fill its batch.
    pub linger: Duration,
    /// Records queued or in flight (not yet acknowledged) before `send` says `Full`.
    pub max_in_flight: usize,
    /// `PutRecords` calls in flight at once (they never share a partition key).
    pub max_concurrent_requests: usize,
    /// Attempts per call (whole-call errors) and per record (entry errors), and the backoff.
    pub retry: RetryPolicy,
    /// The longest a `PutRecords` call may take before it counts as failed.
    pub request_timeout: Duration,
    /// Largest record (data + partition key). `None`: the stream's own maximum
    /// (`MaxRecordSizeInKiB`, 1 MiB unless the stream was configured larger).
    pub max_record_bytes: Option<usize>,
}

impl KinesisOutputSettings {
    /// Defaults for everything but the stream and the AWS settings.
    pub fn new(stream: impl Into<String>, aws: AwsSettings) -> KinesisOutputSettings {
        KinesisOutputSettings {
            stream: stream.into(),
            aws,
            linger: Duration::from_millis(20),
            max_in_flight: 10_000,
            max_concurrent_requests: 4,
            retry: RetryPolicy {
                budget: 10,
                backoff: Duration::from_millis(100),
                max_backoff: Duration::from_secs(5),
            },
            request_timeout: Duration::from_secs(30),
            max_record_bytes: None,
        }
    }
}

/// Why the output cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum KinesisSinkError {
    #[error(
        "Kinesis stream `{stream}` does not exist ({where_}): create it (aws kinesis create-stream \
         --stream-name {stream} --shard-count N) or fix `output.kinesis.stream`; {detail}"
    )]
    NotFound {
        stream: String,
        where_: String,
        detail: String,
    },
    #[error("Kinesis stream `{stream}` is {status} ({where_}); it must be ACTIVE or UPDATING")]
    NotActive {
        stream: String,
        where_: String,
        status: String,
    },
    #[error(
        "cannot describe Kinesis stream `{stream}` ({where_}): {detail} (check the credentials, \
         the region, the endpoint and kinesis:DescribeStreamSummary / kinesis:PutRecords \
         permissions)"
    )]
    Unavailable {
        stream: String,
        where_: String,
        detail: String,
    },
    #[error("Kinesis output settings: {0}")]
    Settings(String),
}

#[derive(Debug, PartialEq, Eq)]
pub enum SendError {
    /// `max_in_flight` records are queued or in flight: wait for deliveries and send again.
    Full,
    /// This record is larger than the stream takes (data + partition key).
    TooLarge(String),
    /// This record cannot be sent at all (a bad partition key, the sink stopped).
    Failed(String),
}

/// The acknowledgement of one record: `Ok` once `PutRecords` accepted it after every earlier
/// record of its partition key; `Err` when it failed for good.
pub struct Delivery(oneshot::Receiver<Result<(), String>>);

impl Future for Delivery {
    type Output = Result<(), String>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.0)
            .poll(cx)
            .map(|r| r.unwrap_or_else(|_| Err("the Kinesis sink stopped before delivery".into())))
    }
}

/// Counters of the sink (the lead wires them to metrics).
#[derive(Debug, Default)]
pub struct SinkStats {
    /// `PutRecords` calls made (retries included).
    pub calls: AtomicU64,
    /// Calls that failed as a whole (throttled, network, timeout).
    pub call_errors: AtomicU64,
    /// Records acknowledged.
    pub delivered: AtomicU64,
    /// Records sent again: failed entries and the later entries of their keys.
    pub resent: AtomicU64,
    /// Records whose delivery resolved `Err`.
    pub failed: AtomicU64,
}

/// A Kinesis stream to send records to. Dropping it lets the background task send what is
/// queued and stop; [`KinesisStream::close`] waits for that.
pub struct KinesisStream {
    tx: mpsc::UnboundedSender<Msg>,
    shared: Arc<Shared>,
    stream: String,
    shards: i32,
    max_record_bytes: usize,
    max_in_flight: usize,
    task: Option<tokio::task::JoinHandle<()>>,
}

struct Shared {
    /// Records accepted by `send` and not yet resolved.
    outstanding: AtomicUsize,
    /// The background task has ended.
    stopped: AtomicBool,
    stats: SinkStats,
}

enum Msg {
    Record(Entry),
    /// Send what is queued without waiting for `linger`.
    Flush,
}

struct Entry {
    key: Arc<str>,
    data: Vec<u8>,
    tx: oneshot::Sender<Result<(), String>>,
    queued: Instant,
    /// Entry-level failures so far.
    attempts: u32,
    /// Not to be sent before this (backoff after an entry failure).
    not_before: Option<Instant>,
}

impl Entry {
    fn size(&self) -> usize {
        self.key.len() + self.data.len()
    }
}

impl KinesisStream {
    /// Builds a client from `settings.aws` and checks that the stream exists.
    pub async fn connect(
        settings: &KinesisOutputSettings,
    ) -> Result<KinesisStream, KinesisSinkError> {
        let config = aws::sdk_config(&settings.aws).await;
        let client = aws::kinesis(&config, settings.aws.endpoint.as_deref());
        KinesisStream::connect_with(client, settings).await
    }

    /// As [`KinesisStream::connect`], with a client of the caller's.
    pub async fn connect_with(
        client: aws_sdk_kinesis::Client,
        settings: &KinesisOutputSettings,
    ) -> Result<KinesisStream, KinesisSinkError> {
        if settings.stream.is_empty() {
            return Err(KinesisSinkError::Settings(
                "the stream name is empty".into(),
            ));
        }
        if settings.max_in_flight == 0 || settings.max_concurrent_requests == 0 {
            return Err(KinesisSinkError::Settings(
                "max_in_flight and max_concurrent_requests must be at least 1".into(),
            ));
        }
        let stream = settings.stream.clone();
        let where_ = describe_where(&client, &settings.aws);
        let mut req = client.describe_stream_summary();
        req = if is_arn(&stream) {
            req.stream_arn(&stream)
        } else {
            req.stream_name(&stream)
        };
        let summary = match tokio::time::timeout(settings.request_timeout, req.send()).await {
            Err(_) => {
                return Err(KinesisSinkError::Unavailable {
                    stream,
                    where_,
                    detail: format!("no answer within {:?}", settings.request_timeout),
                })
            }
            Ok(Err(e)) => {
                let detail = aws::describe(&e);
                let not_found = e
                    .as_service_error()
                    .is_some_and(|s| s.is_resource_not_found_exception());
                return Err(if not_found {
                    KinesisSinkError::NotFound {
                        stream,
                        where_,
                        detail,
                    }
                } else {
                    KinesisSinkError::Unavailable {
                        stream,
                        where_,
                        detail,
                    }
                });
            }
            Ok(Ok(out)) => out,
        };
        let Some(d) = summary.stream_description_summary() else {
            return Err(KinesisSinkError::Unavailable {
                stream,
                where_,
                detail: "DescribeStreamSummary returned no summary".into(),
            });
        };
        use aws_sdk_kinesis::types::StreamStatus;
        match d.stream_status() {
            StreamStatus::Active | StreamStatus::Updating => {}
            other => {
                return Err(KinesisSinkError::NotActive {
                    stream,
                    where_,
                    status: other.as_str().to_string(),
                })
            }
        }
        let max_record_bytes = settings.max_record_bytes.unwrap_or_else(|| {
            d.max_record_size_in_kib()
                .filter(|k| *k > 0)
                .map(|k| k as usize * 1024)
                .unwrap_or(DEFAULT_MAX_RECORD_BYTES)
        });
        let shared = Arc::new(Shared {
            outstanding: AtomicUsize::new(0),
            stopped: AtomicBool::new(false),
            stats: SinkStats::default(),
        });
        let (tx, rx) = mpsc::unbounded_channel();
        let target = if is_arn(&stream) {
            Target::Arn(stream.clone())
        } else {
            Target::Name(stream.clone())
        };
        let worker = Worker {
            client,
            target,
            linger: settings.linger,
            max_concurrent: settings.max_concurrent_requests,
            retry: settings.retry,
            request_timeout: settings.request_timeout,
            shared: shared.clone(),
            pending: VecDeque::new(),
            busy: HashSet::new(),
            retry_waiting: 0,
        };
        let task = tokio::spawn(worker.run(rx));
        Ok(KinesisStream {
            tx,
            shared,
            stream,
            shards: d.open_shard_count(),
            max_record_bytes,
            max_in_flight: settings.max_in_flight,
            task: Some(task),
        })
    }

    /// The stream's name or ARN, as configured.
    pub fn stream(&self) -> &str {
        &self.stream
    }

    /// Open shards when the sink connected.
    pub fn shards(&self) -> i32 {
        self.shards
    }

    /// The largest record (data + partition key) `send` accepts.
    pub fn max_record_bytes(&self) -> usize {
        self.max_record_bytes
    }

    pub fn stats(&self) -> &SinkStats {
        &self.shared.stats
    }

    /// Records queued or in flight.
    pub fn outstanding(&self) -> usize {
        self.shared.outstanding.load(Relaxed)
    }

    /// Queues one record. Records of one partition key reach the stream in `send` order (see
    /// the module doc for what a retry does).
    pub fn send(&self, partition_key: &Arc<str>, data: &[u8]) -> Result<Delivery, SendError> {
        check_record(
            partition_key,
            data.len(),
            self.max_record_bytes,
            &self.stream,
        )
        .map_err(|e| {
            if partition_key.len() + data.len() > self.max_record_bytes {
                SendError::TooLarge(e)
            } else {
                SendError::Failed(e)
            }
        })?;
        if self.shared.stopped.load(Relaxed) {
            return Err(SendError::Failed(format!(
                "the Kinesis sink for `{}` has stopped",
                self.stream
            )));
        }
        // Reserve a place; give it back when the queue is at its bound.
        if self.shared.outstanding.fetch_add(1, Relaxed) >= self.max_in_flight {
            self.shared.outstanding.fetch_sub(1, Relaxed);
            return Err(SendError::Full);
        }
        let (tx, rx) = oneshot::channel();
        let entry = Entry {
            key: partition_key.clone(),
            data: data.to_vec(),
            tx,
            queued: Instant::now(),
            attempts: 0,
            not_before: None,
        };
        if self.tx.send(Msg::Record(entry)).is_err() {
            self.shared.outstanding.fetch_sub(1, Relaxed);
            return Err(SendError::Failed(format!(
                "the Kinesis sink for `{}` has stopped",
                self.stream
            )));
        }
        Ok(Delivery(rx))
    }

    /// Sends what is queued now and waits until every record sent so far is resolved (or
    /// `timeout` passes: `Err` says how many are left).
    pub async fn flush(&self, timeout: Duration) -> Result<(), String> {
        let _ = self.tx.send(Msg::Flush);
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(done) = self.flush_settled(deadline, timeout) {
                return done;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// [`KinesisStream::flush`] for a thread that may block (outside async code, e.g. in
    /// `spawn_blocking`); the background task keeps running on the runtime.
    pub fn flush_blocking(&self, timeout: Duration) -> Result<(), String> {
        let _ = self.tx.send(Msg::Flush);
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(done) = self.flush_settled(deadline, timeout) {
                return done;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// One look of a flush wait: Ok when nothing is outstanding, the error once the deadline
    /// passed or the sink stopped, None to wait on.
    fn flush_settled(&self, deadline: Instant, timeout: Duration) -> Option<Result<(), String>> {
        let n = self.outstanding();
        if n == 0 {
            return Some(Ok(()));
        }
        if Instant::now() >= deadline || self.shared.stopped.load(Relaxed) {
            return Some(Err(self.unflushed(n, timeout)));
        }
        None
    }

    fn unflushed(&self, n: usize, timeout: Duration) -> String {
        format!(
            "Kinesis stream `{}`: {n} records not acknowledged after {timeout:?}",
            self.stream
        )
    }

    /// Flushes (at most `timeout`), then stops the background task. Records still queued
    /// after the timeout resolve `Err`.
    pub async fn close(mut self, timeout: Duration) -> Result<(), String> {
        let r = self.flush(timeout).await;
        let task = self.task.take();
        drop(self);
        if let Some(t) = task {
            // Dropping the sender above ends the task once its queue is empty; abort it when
            // the flush timed out (its deliveries resolve Err on drop).
            if r.is_err() {
                t.abort();
            }
            let _ = t.await;
        }
        r
    }
}

fn is_arn(stream: &str) -> bool {
    stream.starts_with("arn:")
}

fn describe_where(client: &aws_sdk_kinesis::Client, s: &AwsSettings) -> String {
    let region = client
        .config()
        .region()
        .map(|r| r.to_string())
        .unwrap_or_else(|| "no region".into());
    match &s.endpoint {
        Some(e) => format!("region {region}, endpoint {e}"),
        None => format!("region {region}"),
    }
}

/// Checks one record against the API's limits; the error says which and what to do.
pub fn check_record(
    key: &str,
    data_len: usize,
    max_record_bytes: usize,
    stream: &str,
) -> Result<(), String> {
    let chars = key.chars().count();
    if chars == 0 || chars > MAX_PARTITION_KEY_CHARS {
        return Err(format!(
            "cannot send to Kinesis stream `{stream}`: the partition key has {chars} characters; \
             Kinesis takes 1 to {MAX_PARTITION_KEY_CHARS}"
        ));
    }
    let size = key.len() + data_len;
    if size > max_record_bytes {
        return Err(format!(
            "cannot send to Kinesis stream `{stream}`: the record is {size} bytes (data {data_len} \
             + partition key {}), over the stream's limit of {max_record_bytes} bytes per record",
            key.len()
        ));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Batching and retry selection (pure)
// ---------------------------------------------------------------------------------------------

/// What one waiting record looks like to [`select`].
#[derive(Debug, Clone, Copy)]
pub struct Candidate<'a> {
    pub key: &'a str,
    /// Data + partition key.
    pub size: usize,
    /// Its backoff is over.
    pub ready: bool,
}

/// Which waiting records (indices into `waiting`, in order) the next batch takes: in queue
/// order, at most [`MAX_BATCH_RECORDS`] and [`MAX_BATCH_BYTES`] (a record larger than that
/// alone still goes alone), skipping every record whose key is `busy` (in a call in flight) or
/// has an earlier waiting record that was skipped, so that no record passes an earlier one of
/// its key.
pub fn select(waiting: &[Candidate<'_>], busy: &dyn Fn(&str) -> bool) -> Vec<usize> {
    let mut taken = Vec::new();
    let mut bytes = 0usize;
    let mut skipped: HashSet<&str> = HashSet::new();
    for (i, c) in waiting.iter().enumerate() {
        if taken.len() == MAX_BATCH_RECORDS {
            break;
        }
        if !c.ready || busy(c.key) || skipped.contains(c.key) {
            skipped.insert(c.key);
            continue;
        }
        if !taken.is_empty() && bytes + c.size > MAX_BATCH_BYTES {
            // Full by bytes; a later, smaller record of another key could fit, but keep
            // batches simple: the next batch starts here.
            break;
        }
        bytes += c.size;
        taken.push(i);
    }
    taken
}

/// What becomes of one entry of a `PutRecords` call, given which entries failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settle {
    /// Accepted after every earlier entry of its key: its delivery resolves `Ok`.
    Delivered,
    /// Send again, in this order, before anything later of its key: `failed` when this entry
    /// itself failed (it counts an attempt), else it succeeded after a failed entry of its key
    /// and is sent again to restore order (a duplicate on the stream).
    Resend { failed: bool },
}

/// For each entry of a call (its partition key, and whether `PutRecords` reported it failed),
/// whether it is delivered or sent again: an entry is delivered only if no earlier entry of
/// its key in the call failed.
pub fn settle<K: AsRef<str>>(keys: &[K], failed: &[bool]) -> Vec<Settle> {
    debug_assert_eq!(keys.len(), failed.len());
    let mut broken: HashSet<&str> = HashSet::new();
    keys.iter()
        .zip(failed)
        .map(|(k, &f)| {
            let k = k.as_ref();
            if f {
                broken.insert(k);
                Settle::Resend { failed: true }
            } else if broken.contains(k) {
                Settle::Resend { failed: false }
            } else {
                Settle::Delivered
            }
        })
        .collect()
}

/// Entry error codes worth retrying (the others, e.g. `InvalidArgumentException` for a
/// record over the stream's size, fail the record at once).
pub fn retryable_entry_error(code: &str) -> bool {
    matches!(
        code,
        "ProvisionedThroughputExceededException" | "InternalFailure" | "InternalFailureException"
    )
}

// ---------------------------------------------------------------------------------------------
// The background task
// ---------------------------------------------------------------------------------------------

enum Target {
    Name(String),
    Arn(String),
}

struct Worker {
    client: aws_sdk_kinesis::Client,
    target: Target,
    linger: Duration,
    max_concurrent: usize,
    retry: RetryPolicy,
    request_timeout: Duration,
    shared: Arc<Shared>,
    /// Records not yet in a call, in queue order (entries to resend at the front).
    pending: VecDeque<Entry>,
    /// Keys in calls in flight.
    busy: HashSet<Arc<str>>,
    /// Entries in `pending` with a backoff.
    retry_waiting: usize,
}

/// How a call ended: per entry `None` (accepted) or `Some((code, message))`; or the whole call
/// failed for good.
type CallOutcome = Result<Vec<Option<(String, String)>>, String>;

impl Worker {
    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Msg>) {
        let mut calls: tokio::task::JoinSet<(Vec<Entry>, CallOutcome)> =
            tokio::task::JoinSet::new();
        let mut closed = false;
        let mut urgent = false;
        // Skip rescanning `pending` until something changes that could let a batch go.
        let mut dirty = true;
        let mut added_since_scan = 0usize;
        let mut wake: Option<tokio::time::Instant> = None;
        // The last scan found a batch that waits for `linger`: the timer covers new records.
        let mut lingering = false;
        // The keys of each call in flight (a panicked call gives back no batch).
        let mut call_keys: HashMap<tokio::task::Id, Vec<Arc<str>>> = HashMap::new();
        loop {
            if dirty || added_since_scan >= MAX_BATCH_RECORDS {
                wake = None;
                lingering = false;
                let now = Instant::now();
                while calls.len() < self.max_concurrent {
                    match self.take_batch(now, urgent || closed) {
                        Ok(batch) => {
                            let keys: Vec<Arc<str>> = batch.iter().map(|e| e.key.clone()).collect();
                            for k in &keys {
                                self.busy.insert(k.clone());
                            }
                            let handle = calls.spawn(call(
                                self.client.clone(),
                                self.target_ref(),
                                batch,
                                self.retry,
                                self.request_timeout,
                                self.shared.clone(),
                            ));
                            call_keys.insert(handle.id(), keys);
                        }
                        Err(NotNow { until, linger }) => {
                            wake = until.map(tokio::time::Instant::from_std);
                            lingering = linger;
                            break;
                        }
                    }
                }
                dirty = false;
                added_since_scan = 0;
                if self.pending.is_empty() {
                    urgent = false;
                }
            }
            if closed && self.pending.is_empty() && calls.is_empty() {
                break;
            }
            tokio::select! {
                msg = rx.recv(), if !closed => {
                    let mut next = msg;
                    // Take what else is there without yielding.
                    let mut n = 0;
                    loop {
                        match next {
                            Some(Msg::Record(e)) => {
                                // Worth a scan: a first record, or one that a free call
                                // could take now (unless a batch already waits for linger).
                                if self.pending.is_empty()
                                    || (!lingering
                                        && calls.len() < self.max_concurrent
                                        && !self.busy.contains(&e.key))
                                {
                                    dirty = true;
                                }
                                self.pending.push_back(e);
                                added_since_scan += 1;
                            }
                            Some(Msg::Flush) => {
                                urgent = true;
                                dirty = true;
                            }
                            None => {
                                closed = true;
                                dirty = true;
                                break;
                            }
                        }
                        n += 1;
                        if n >= 1024 {
                            break;
                        }
                        match rx.try_recv() {
                            Ok(m) => next = Some(m),
                            Err(mpsc::error::TryRecvError::Empty) => break,
                            Err(mpsc::error::TryRecvError::Disconnected) => next = None,
                        }
                    }
                }
                Some(done) = calls.join_next_with_id(), if !calls.is_empty() => {
                    match done {
                        Ok((id, (batch, outcome))) => {
                            call_keys.remove(&id);
                            self.finish(batch, outcome);
                        }
                        Err(e) => {
                            // A panicked call task: its entries were dropped with it, so their
                            // deliveries resolved Err, and the records waiting behind them
                            // fail too (no gap before a later record of their keys).
                            eprintln!("error: a Kinesis PutRecords task failed: {e}");
                            if let Some(keys) = call_keys.remove(&e.id()) {
                                let keys: HashSet<Arc<str>> = keys.into_iter().collect();
                                for k in &keys {
                                    self.busy.remove(k);
                                }
                                self.fail_waiting(&keys);
                            }
                        }
                    }
                    dirty = true;
                }
                _ = sleep_until_opt(wake), if wake.is_some() => {
                    dirty = true;
                }
            }
        }
        self.shared.stopped.store(true, Relaxed);
    }

    fn target_ref(&self) -> TargetRef {
        match &self.target {
            Target::Name(n) => TargetRef::Name(n.clone()),
            Target::Arn(a) => TargetRef::Arn(a.clone()),
        }
    }

    /// The next batch, or why nothing can go now.
    fn take_batch(&mut self, now: Instant, urgent: bool) -> Result<Vec<Entry>, NotNow> {
        if self.pending.is_empty() {
            return Err(NotNow {
                until: None,
                linger: false,
            });
        }
        let busy = &self.busy;
        let is_busy = |k: &str| busy.contains(k);
        let candidates: Vec<Candidate<'_>> = self
            .pending
            .iter()
            .map(|e| Candidate {
                key: &e.key,
                size: e.size(),
                ready: e.not_before.is_none_or(|t| t <= now),
            })
            .collect();
        let taken = select(&candidates, &is_busy);
        // The earliest backoff still running, when one holds records back.
        let backoff_end = if self.retry_waiting > 0 {
            self.pending
                .iter()
                .filter_map(|e| e.not_before)
                .filter(|t| *t > now)
                .min()
        } else {
            None
        };
        if taken.is_empty() {
            return Err(NotNow {
                until: backoff_end,
                linger: false,
            });
        }
        let bytes: usize = taken.iter().map(|&i| candidates[i].size).sum();
        let full = taken.len() == MAX_BATCH_RECORDS
            || taken.last().is_some_and(|&i| {
                candidates[i + 1..]
                    .iter()
                    .find(|c| c.ready && !is_busy(c.key))
                    .is_some_and(|c| bytes + c.size > MAX_BATCH_BYTES)
            });
        let oldest = self.pending[taken[0]].queued;
        let due = oldest + self.linger;
        if !urgent && !full && due > now {
            return Err(NotNow {
                until: Some(backoff_end.map_or(due, |b| b.min(due))),
                linger: true,
            });
        }
        drop(candidates);
        let mut batch = Vec::with_capacity(taken.len());
        let mut keep = VecDeque::with_capacity(self.pending.len() - taken.len());
        let mut next = taken.iter().peekable();
        for (i, e) in std::mem::take(&mut self.pending).into_iter().enumerate() {
            if next.peek().is_some_and(|&&t| t == i) {
                next.next();
                if e.not_before.is_some() {
                    self.retry_waiting -= 1;
                }
                batch.push(e);
            } else {
                keep.push_back(e);
            }
        }
        self.pending = keep;
        Ok(batch)
    }

    /// Resolves or requeues the entries of a finished call.
    fn finish(&mut self, batch: Vec<Entry>, outcome: CallOutcome) {
        for e in &batch {
            self.busy.remove(&e.key);
        }
        let results = match outcome {
            Ok(r) => r,
            Err(why) => {
                let keys: HashSet<Arc<str>> = batch.iter().map(|e| e.key.clone()).collect();
                for e in batch {
                    self.resolve(e, Err(why.clone()));
                }
                self.fail_waiting(&keys);
                return;
            }
        };
        let failed: Vec<bool> = results.iter().map(Option::is_some).collect();
        let plan = settle(
            &batch.iter().map(|e| e.key.clone()).collect::<Vec<_>>(),
            &failed,
        );
        let now = Instant::now();
        let mut resend: Vec<Entry> = Vec::new();
        // Keys with a record that failed for good in this call.
        let mut dead: HashSet<Arc<str>> = HashSet::new();
        for ((mut e, s), r) in batch.into_iter().zip(plan).zip(results) {
            if dead.contains(&e.key) {
                self.resolve(
                    e,
                    Err("an earlier record with the same partition key was not delivered".into()),
                );
                continue;
            }
            match s {
                Settle::Delivered => self.resolve(e, Ok(())),
                Settle::Resend { failed } => {
                    if failed {
                        let (code, message) = r.unwrap_or_default();
                        e.attempts += 1;
                        if !retryable_entry_error(&code) || e.attempts > self.retry.budget {
                            dead.insert(e.key.clone());
                            let why = if retryable_entry_error(&code) {
                                format!(
                                    "PutRecords rejected the record {} times: {code}: {message}",
                                    e.attempts
                                )
                            } else {
                                format!("PutRecords rejected the record: {code}: {message}")
                            };
                            self.resolve(e, Err(why));
                            continue;
                        }
                    }
                    self.shared.stats.resent.fetch_add(1, Relaxed);
                    resend.push(e);
                }
            }
        }
        // A resend whose key died later in the batch: it was accepted already but an earlier
        // record of its key failed for good, so it fails too (the lane resends from its
        // commit point).
        let mut requeue = Vec::with_capacity(resend.len());
        for e in resend {
            if dead.contains(&e.key) {
                self.resolve(
                    e,
                    Err("an earlier record with the same partition key was not delivered".into()),
                );
            } else {
                requeue.push(e);
            }
        }
        if !dead.is_empty() {
            self.fail_waiting(&dead);
        }
        // Back to the front, in batch order, after a backoff (the highest attempt count of the
        // key's entries decides it).
        for mut e in requeue.into_iter().rev() {
            let wait = self.retry.delay(e.attempts.max(1));
            e.not_before = Some(now + wait);
            self.retry_waiting += 1;
            self.pending.push_front(e);
        }
    }

    /// Fails every waiting record of `keys`: an earlier record of theirs failed for good.
    fn fail_waiting(&mut self, keys: &HashSet<Arc<str>>) {
        let (gone, keep): (VecDeque<Entry>, VecDeque<Entry>) = std::mem::take(&mut self.pending)
            .into_iter()
            .partition(|e| keys.contains(&e.key));
        self.pending = keep;
        for e in gone {
            if e.not_before.is_some() {
                self.retry_waiting -= 1;
            }
            self.resolve(
                e,
                Err("an earlier record with the same partition key was not delivered".into()),
            );
        }
    }

    fn resolve(&self, e: Entry, r: Result<(), String>) {
        let stats = &self.shared.stats;
        match &r {
            Ok(()) => stats.delivered.fetch_add(1, Relaxed),
            Err(_) => stats.failed.fetch_add(1, Relaxed),
        };
        let _ = e.tx.send(r);
        self.shared.outstanding.fetch_sub(1, Relaxed);
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        // Ends (or aborted): nothing more will be sent; `send` refuses from now on. Entries
        // still held resolve Err as their senders drop.
        self.shared.stopped.store(true, Relaxed);
        let n = self.pending.len();
        self.shared.outstanding.fetch_sub(n, Relaxed);
    }
}

async fn sleep_until_opt(t: Option<tokio::time::Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

/// No batch can go now: wake up `until` (`None`: only a new record or a finished call can
/// change that); `linger`: a batch is ready but waits for more records until then.
struct NotNow {
    until: Option<Instant>,
    linger: bool,
}

enum TargetRef {
    Name(String),
    Arn(String),
}

/// One batch: `PutRecords`, sent again as a whole after whole-call errors (with backoff, up
/// to the budget). Returns the batch with its per-entry outcome.
async fn call(
    client: aws_sdk_kinesis::Client,
    target: TargetRef,
    batch: Vec<Entry>,
    retry: RetryPolicy,
    timeout: Duration,
    shared: Arc<Shared>,
) -> (Vec<Entry>, CallOutcome) {
    use aws_sdk_kinesis::primitives::Blob;
    use aws_sdk_kinesis::types::PutRecordsRequestEntry;
    let mut attempt = 0u32;
    loop {
        let records: Vec<PutRecordsRequestEntry> = batch
            .iter()
            .map(|e| {
                PutRecordsRequestEntry::builder()
                    .partition_key(&*e.key)
                    .data(Blob::new(e.data.clone()))
                    .build()
                    .expect("partition key and data are set")
            })
            .collect();
        let mut req = client.put_records().set_records(Some(records));
        req = match &target {
            TargetRef::Name(n) => req.stream_name(n),
            TargetRef::Arn(a) => req.stream_arn(a),
        };
        shared.stats.calls.fetch_add(1, Relaxed);
        let (why, retryable) = match tokio::time::timeout(timeout, req.send()).await {
            Ok(Ok(out)) if out.records().len() == batch.len() => {
                let r = out
                    .records()
                    .iter()
                    .map(|r| {
                        r.error_code()
                            .map(|c| (c.to_string(), r.error_message().unwrap_or("").to_string()))
                    })
                    .collect();
                return (batch, Ok(r));
            }
            Ok(Ok(out)) => (
                format!(
                    "PutRecords answered {} results for {} records",
                    out.records().len(),
                    batch.len()
                ),
                true,
            ),
            Ok(Err(e)) => {
                let permanent = e.as_service_error().is_some_and(|s| {
                    s.is_invalid_argument_exception()
                        || s.is_access_denied_exception()
                        || s.is_kms_access_denied_exception()
                });
                (
                    format!("PutRecords failed: {}", aws::describe(&e)),
                    !permanent,
                )
            }
            Err(_) => (format!("PutRecords took longer than {timeout:?}"), true),
        };
        shared.stats.call_errors.fetch_add(1, Relaxed);
        attempt += 1;
        if !retryable || attempt > retry.budget {
            let why = if retryable {
                format!("{why} ({attempt} attempts)")
            } else {
                why
            };
            return (batch, Err(why));
        }
        tokio::time::sleep(retry.delay(attempt)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(key: &str, size: usize) -> Candidate<'_> {
        Candidate {
            key,
            size,
            ready: true,
        }
    }

    #[test]
    fn later_entries_of_a_failed_key_are_resent_in_order() {
        use Settle::*;
        let keys = ["a", "b", "a", "c", "a", "b"];
        // a#0 ok, b#1 fails, a#2 fails, c ok, a#4 ok (after a failed a), b#5 ok (after a failed b)
        let failed = [false, true, true, false, false, false];
        assert_eq!(
            settle(&keys, &failed),
            vec![
                Delivered,
                Resend { failed: true },
                Resend { failed: true },
                Delivered,
                Resend { failed: false },
                Resend { failed: false },
            ]
        );
        // Nothing failed: everything delivered.
        assert!(settle(&keys, &[false; 6]).iter().all(|s| *s == Delivered));
        // Everything failed: everything resent as failed.
        assert!(settle(&keys, &[true; 6])
            .iter()
            .all(|s| *s == Resend { failed: true }));
    }

    #[test]
    fn a_batch_never_lets_a_record_pass_an_earlier_one_of_its_key() {
        let w = [c("a", 10), c("b", 10), c("a", 10), c("c", 10), c("b", 10)];
        // `b` in flight: both b records wait.
        assert_eq!(select(&w, &|k| k == "b"), vec![0, 2, 3]);
        // Nothing busy: all of them.
        assert_eq!(select(&w, &|_| false), vec![0, 1, 2, 3, 4]);
        // The first `a` is in backoff: the second waits too.
        let mut w2 = w;
        w2[0].ready = false;
        assert_eq!(select(&w2, &|_| false), vec![1, 3, 4]);
    }

    #[test]
    fn batches_respect_the_api_limits() {
        let many: Vec<Candidate> = (0..1200).map(|_| c("k", 100)).collect();
        assert_eq!(select(&many, &|_| false).len(), MAX_BATCH_RECORDS);
        // 1 MiB records: five fit in 5 MiB (with their one-byte keys, four).
        let big: Vec<Candidate> = (0..8).map(|_| c("k", 1024 * 1024 + 1)).collect();
        assert_eq!(select(&big, &|_| false), vec![0, 1, 2, 3]);
        // A record larger than a whole batch still goes, alone.
        let huge = [c("k", MAX_BATCH_BYTES + 10), c("k", 5)];
        assert_eq!(select(&huge, &|_| false), vec![0]);
    }

    #[test]
    fn records_over_the_limits_are_refused_with_the_reason() {
        let e = check_record(
            "lane",
            DEFAULT_MAX_RECORD_BYTES,
            DEFAULT_MAX_RECORD_BYTES,
            "out",
        )
        .unwrap_err();
        assert!(e.contains("`out`") && e.contains("1048580 bytes"), "{e}");
        assert!(e.contains("limit of 1048576 bytes"), "{e}");
        assert!(check_record("lane", 1000, DEFAULT_MAX_RECORD_BYTES, "out").is_ok());
        assert!(check_record("", 1, DEFAULT_MAX_RECORD_BYTES, "out")
            .unwrap_err()
            .contains("0 characters"));
        let long = "k".repeat(257);
        assert!(check_record(&long, 1, DEFAULT_MAX_RECORD_BYTES, "out")
            .unwrap_err()
            .contains("257 characters"));
    }

    fn worker(budget: u32) -> (Worker, Arc<Shared>) {
        let conf = aws_sdk_kinesis::Config::builder()
            .behavior_version(aws_sdk_kinesis::config::BehaviorVersion::latest())
            .region(aws_sdk_kinesis::config::Region::new("us-east-1"))
            .build();
        let shared = Arc::new(Shared {
            outstanding: AtomicUsize::new(0),
            stopped: AtomicBool::new(false),
            stats: SinkStats::default(),
        });
        let w = Worker {
            client: aws_sdk_kinesis::Client::from_conf(conf),
            target: Target::Name("out".into()),
            linger: Duration::ZERO,
            max_concurrent: 4,
            retry: RetryPolicy {
                budget,
                backoff: Duration::from_millis(100),
                max_backoff: Duration::from_secs(1),
            },
            request_timeout: Duration::from_secs(1),
            shared: shared.clone(),
            pending: VecDeque::new(),
            busy: HashSet::new(),
            retry_waiting: 0,
        };
        (w, shared)
    }

    type Rx = oneshot::Receiver<Result<(), String>>;

    fn entry(shared: &Shared, key: &str, data: &str) -> (Entry, Rx) {
        shared.outstanding.fetch_add(1, Relaxed);
        let (tx, rx) = oneshot::channel();
        let e = Entry {
            key: Arc::from(key),
            data: data.as_bytes().to_vec(),
            tx,
            queued: Instant::now(),
            attempts: 0,
            not_before: None,
        };
        (e, rx)
    }

    fn names(batch: &[Entry]) -> Vec<String> {
        batch
            .iter()
            .map(|e| String::from_utf8(e.data.clone()).unwrap())
            .collect()
    }

    fn pte() -> Option<(String, String)> {
        Some((
            "ProvisionedThroughputExceededException".into(),
            "slow down".into(),
        ))
    }

    #[test]
    fn the_worker_resends_a_failed_entry_and_the_rest_of_its_key_in_order_after_a_backoff() {
        let (mut w, shared) = worker(3);
        let mut rx = Receivers::default();
        for (k, d) in [("a", "a1"), ("b", "b1"), ("a", "a2"), ("a", "a3")] {
            let (e, r) = entry(&shared, k, d);
            rx.0.push((d, r));
            w.pending.push_back(e);
        }
        let t0 = Instant::now();
        let batch = w.take_batch(t0, true).ok().expect("a batch");
        assert_eq!(names(&batch), ["a1", "b1", "a2", "a3"]);
        // a2 throttled: a1 and b1 are delivered; a2 and a3 wait for a backoff.
        w.finish(batch, Ok(vec![None, None, pte(), None]));
        assert_eq!(rx.take("a1"), Some(Ok(())));
        assert_eq!(rx.take("b1"), Some(Ok(())));
        assert_eq!(rx.take("a2"), None);
        assert_eq!(rx.take("a3"), None);
        assert_eq!(shared.outstanding.load(Relaxed), 2);
        // Records sent meanwhile: b goes at once, a waits behind a2 and a3.
        for (k, d) in [("a", "a4"), ("b", "b2")] {
            let (e, r) = entry(&shared, k, d);
            rx.0.push((d, r));
            w.pending.push_back(e);
        }
        let batch = w.take_batch(Instant::now(), true).ok().expect("a batch");
        assert_eq!(names(&batch), ["b2"]);
        w.finish(batch, Ok(vec![None]));
        assert!(w.take_batch(Instant::now(), true).is_err());
        // After the backoff: a2, a3 (again: it was accepted before a2), a4.
        let later = t0 + Duration::from_millis(150);
        let batch = w.take_batch(later, true).ok().expect("a batch");
        assert_eq!(names(&batch), ["a2", "a3", "a4"]);
        w.finish(batch, Ok(vec![None, None, None]));
        for d in ["a2", "a3", "a4", "b2"] {
            assert_eq!(rx.take(d), Some(Ok(())), "{d}");
        }
        assert_eq!(shared.outstanding.load(Relaxed), 0);
        assert_eq!(shared.stats.resent.load(Relaxed), 2);
    }

    #[test]
    fn a_record_that_fails_for_good_fails_the_later_records_of_its_key() {
        let (mut w, shared) = worker(1);
        let mut rx = Receivers::default();
        for (k, d) in [("a", "a1"), ("a", "a2"), ("b", "b1")] {
            let (e, r) = entry(&shared, k, d);
            rx.0.push((d, r));
            w.pending.push_back(e);
        }
        let batch = w.take_batch(Instant::now(), true).ok().expect("a batch");
        w.finish(batch, Ok(vec![pte(), None, None]));
        assert_eq!(rx.take("b1"), Some(Ok(())));
        // a3, sent meanwhile, waits behind the backoff.
        let (e, r) = entry(&shared, "a", "a3");
        rx.0.push(("a3", r));
        w.pending.push_back(e);
        let later = Instant::now() + Duration::from_millis(150);
        let batch = w.take_batch(later, true).ok().expect("a batch");
        assert_eq!(names(&batch), ["a1", "a2", "a3"]);
        // a1 fails again: over the budget of 1.
        w.finish(batch, Ok(vec![pte(), None, None]));
        let e1 = rx.take("a1").unwrap().unwrap_err();
        assert!(e1.contains("2 times") && e1.contains("slow down"), "{e1}");
        for d in ["a2", "a3"] {
            let e = rx.take(d).unwrap().unwrap_err();
            assert!(
                e.contains("earlier record with the same partition key"),
                "{d}: {e}"
            );
        }
        // A permanent entry error fails at once; a whole-call failure fails the batch and what
        // waits behind it.
        let (e, r) = entry(&shared, "c", "c1");
        rx.0.push(("c1", r));
        w.pending.push_back(e);
        let batch = w.take_batch(Instant::now(), true).ok().expect("a batch");
        w.finish(
            batch,
            Ok(vec![Some((
                "InvalidArgumentException".into(),
                "too big".into(),
            ))]),
        );
        assert!(rx.take("c1").unwrap().unwrap_err().contains("too big"));
        for (k, d) in [("d", "d1"), ("d", "d2")] {
            let (e, r) = entry(&shared, k, d);
            rx.0.push((d, r));
            w.pending.push_back(e);
        }
        let mut batch = w.take_batch(Instant::now(), true).ok().expect("a batch");
        let d2 = batch.pop().unwrap();
        w.pending.push_back(d2);
        w.finish(
            batch,
            Err("PutRecords failed: throttled (11 attempts)".into()),
        );
        assert!(rx.take("d1").unwrap().unwrap_err().contains("11 attempts"));
        assert!(rx
            .take("d2")
            .unwrap()
            .unwrap_err()
            .contains("earlier record"));
        assert_eq!(shared.outstanding.load(Relaxed), 0);
        assert!(w.pending.is_empty() && w.busy.is_empty() && w.retry_waiting == 0);
    }

    /// Delivery receivers by record name.
    #[derive(Default)]
    struct Receivers(Vec<(&'static str, Rx)>);

    impl Receivers {
        /// The record's result if it is resolved.
        fn take(&mut self, name: &str) -> Option<Result<(), String>> {
            let (_, rx) = self.0.iter_mut().find(|(n, _)| *n == name)?;
            rx.try_recv().ok()
        }
    }

    #[test]
    fn only_throughput_and_internal_entry_errors_are_retried() {
        assert!(retryable_entry_error(
            "ProvisionedThroughputExceededException"
        ));
        assert!(retryable_entry_error("InternalFailure"));
        assert!(!retryable_entry_error("InvalidArgumentException"));
        assert!(!retryable_entry_error("KMSAccessDeniedException"));
    }
}
