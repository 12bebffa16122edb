//! Helpers shared by the Kinesis and DynamoDB tests (against kinesis-local and dynalite; start
//! them with `scripts/kinesis-services.sh start`, which prints AUDITNORM_TEST_KINESIS and
//! AUDITNORM_TEST_DYNAMODB): endpoints (skip locally, fail under CI=true), clients with dummy
//! credentials, the environment a spawned `auditnorm` needs, streams (deleted when the test
//! drops them), putting records (to a key or to a shard), reading a whole stream back, and
//! resharding.
//!
//! Included with `#[path = "kinesis_common.rs"] mod kinesis_common;` (or `mod kinesis_common;`
//! from a file directly in tests/); as a test target of its own it only checks its hash-range
//! arithmetic. The helpers are async: call them from `#[tokio::test]` or a runtime's `block_on`.
#![allow(dead_code)]

use aws_sdk_kinesis::primitives::Blob;
use aws_sdk_kinesis::types::{PutRecordsRequestEntry, Shard, ShardIteratorType, StreamStatus};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

pub const REGION: &str = "us-east-1";

/// The emulators' endpoints (Kinesis, DynamoDB) from AUDITNORM_TEST_KINESIS and
/// AUDITNORM_TEST_DYNAMODB. `None` (with a notice: the caller returns, the test passes) when
/// they are not set; a panic when they are not set under CI=true, where the test must fail.
pub fn endpoints() -> Option<(String, String)> {
    let get = |name: &str| {
        std::env::var(name)
            .ok()
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
    };
    match (
        get("AUDITNORM_TEST_KINESIS"),
        get("AUDITNORM_TEST_DYNAMODB"),
    ) {
        (Some(k), Some(d)) => Some((k, d)),
        (k, d) => {
            let missing: Vec<&str> = [
                k.is_none().then_some("AUDITNORM_TEST_KINESIS"),
                d.is_none().then_some("AUDITNORM_TEST_DYNAMODB"),
            ]
            .into_iter()
            .flatten()
            .collect();
            if std::env::var("CI").as_deref() == Ok("true") {
                panic!(
                    "{} not set under CI=true: .ci/run must start the emulators \
                     (env_lines=$(scripts/kinesis-services.sh start); eval \"$env_lines\"; \
                     export AUDITNORM_TEST_KINESIS AUDITNORM_TEST_DYNAMODB)",
                    missing.join(" and ")
                );
            }
            eprintln!(
                "skipped: {} not set; start kinesis-local and dynalite with \
                 `eval \"$(scripts/kinesis-services.sh start)\"; export AUDITNORM_TEST_KINESIS \
                 AUDITNORM_TEST_DYNAMODB`",
                missing.join(" and ")
            );
            None
        }
    }
}

/// Dummy static credentials: the emulators accept any signature.
pub fn credentials() -> aws_sdk_kinesis::config::Credentials {
    aws_sdk_kinesis::config::Credentials::new("test", "test", None, None, "static")
}

pub fn kinesis_client(endpoint: &str) -> aws_sdk_kinesis::Client {
    let conf = aws_sdk_kinesis::Config::builder()
        .behavior_version(aws_sdk_kinesis::config::BehaviorVersion::latest())
        .credentials_provider(credentials())
        .region(aws_sdk_kinesis::config::Region::new(REGION))
        .endpoint_url(endpoint)
        .build();
    aws_sdk_kinesis::Client::from_conf(conf)
}

pub fn dynamodb_client(endpoint: &str) -> aws_sdk_dynamodb::Client {
    let conf = aws_sdk_dynamodb::Config::builder()
        .behavior_version(aws_sdk_dynamodb::config::BehaviorVersion::latest())
        .credentials_provider(aws_sdk_dynamodb::config::Credentials::new(
            "test", "test", None, None, "static",
        ))
        .region(aws_sdk_dynamodb::config::Region::new(REGION))
        .endpoint_url(endpoint)
        .build();
    aws_sdk_dynamodb::Client::from_conf(conf)
}

/// `AwsSettings` for auditnorm's own clients (the region; credentials come from the
/// environment: see [`child_env`] / [`set_process_env`]).
pub fn aws_settings(endpoint: &str) -> auditnorm::kinesis::aws::AwsSettings {
    auditnorm::kinesis::aws::AwsSettings {
        region: Some(REGION.into()),
        endpoint: Some(endpoint.into()),
    }
}

/// The environment a spawned `auditnorm` needs to reach the emulators through the default
/// credential chain: `Command::new(..).envs(child_env())`.
pub fn child_env() -> [(&'static str, &'static str); 4] {
    [
        ("AWS_ACCESS_KEY_ID", "test"),
        ("AWS_SECRET_ACCESS_KEY", "test"),
        ("AWS_REGION", REGION),
        ("AWS_EC2_METADATA_DISABLED", "true"),
    ]
}

/// Sets [`child_env`] in this process, once, for in-process pipelines whose clients use the
/// default credential chain. Call it first thing in a test (before other threads read the
/// environment); values already set are kept.
pub fn set_process_env() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        for (k, v) in child_env() {
            if std::env::var_os(k).is_none() {
                std::env::set_var(k, v);
            }
        }
    });
}

/// A name no earlier run used (the emulator keeps its streams while it runs).
pub fn unique(prefix: &str) -> String {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!(
        "{prefix}-{}-{}-{}",
        std::process::id(),
        nanos % 1_000_000_000_000,
        N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    )
}

/// Waits until the stream is ACTIVE (10 s).
pub async fn wait_active(client: &aws_sdk_kinesis::Client, stream: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let s = client
            .describe_stream_summary()
            .stream_name(stream)
            .send()
            .await
            .unwrap_or_else(|e| panic!("describe {stream}: {e:?}"));
        let status = s
            .stream_description_summary()
            .map(|d| d.stream_status().clone());
        if status == Some(StreamStatus::Active) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "stream {stream} not ACTIVE after 10 s: {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Creates a stream with `shards` shards and waits until it is ACTIVE.
pub async fn create_stream(client: &aws_sdk_kinesis::Client, name: &str, shards: i32) {
    client
        .create_stream()
        .stream_name(name)
        .shard_count(shards)
        .send()
        .await
        .unwrap_or_else(|e| panic!("create stream {name}: {e:?}"));
    wait_active(client, name).await;
}

/// A stream named after `prefix` that no earlier run used, with `shards` shards, ACTIVE;
/// deleted when the returned guard is dropped. `endpoint`: the one `client` talks to.
pub async fn new_stream(
    client: &aws_sdk_kinesis::Client,
    endpoint: &str,
    prefix: &str,
    shards: i32,
) -> TestStream {
    let name = unique(prefix);
    create_stream(client, &name, shards).await;
    TestStream {
        endpoint: endpoint.to_string(),
        name,
    }
}

/// A stream a test created, by name (it derefs to `str`). Dropping it deletes the stream, so
/// that a test cannot forget to, and a failed test does not leave its shards counted against
/// kinesis-local's limit for the tests after it.
pub struct TestStream {
    endpoint: String,
    name: String,
}

impl std::ops::Deref for TestStream {
    type Target = str;
    fn deref(&self) -> &str {
        &self.name
    }
}

impl std::fmt::Display for TestStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.name)
    }
}

impl Drop for TestStream {
    fn drop(&mut self) {
        // A thread with a runtime and a client of its own: the drop may run on a runtime's
        // worker (where block_on panics) or after the test's runtime is gone, and the test's
        // client keeps its connections on that runtime.
        let (endpoint, name) = (self.endpoint.clone(), self.name.clone());
        let deleted = std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime")
                .block_on(delete_stream(&kinesis_client(&endpoint), &name));
        })
        .join();
        // The thread printed why; panicking again while the test unwinds would abort.
        if deleted.is_err() && !std::thread::panicking() {
            panic!("could not delete stream {}", self.name);
        }
    }
}

/// Deletes a stream (and its consumers); a stream that is gone already is fine. Tests delete
/// what they created: kinesis-local counts all streams' shards against one limit.
pub async fn delete_stream(client: &aws_sdk_kinesis::Client, name: &str) {
    if let Err(e) = client
        .delete_stream()
        .stream_name(name)
        .enforce_consumer_deletion(true)
        .send()
        .await
    {
        let gone = e
            .as_service_error()
            .is_some_and(|s| s.is_resource_not_found_exception());
        assert!(gone, "delete stream {name}: {e:?}");
    }
}

/// Every shard of the stream (open and closed), in ListShards order (paged).
pub async fn list_shards(client: &aws_sdk_kinesis::Client, stream: &str) -> Vec<Shard> {
    let mut shards = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let req = match &token {
            Some(t) => client.list_shards().next_token(t),
            None => client.list_shards().stream_name(stream),
        };
        let out = req
            .send()
            .await
            .unwrap_or_else(|e| panic!("list shards of {stream}: {e:?}"));
        shards.extend(out.shards().iter().cloned());
        match out.next_token() {
            Some(t) => token = Some(t.to_string()),
            None => return shards,
        }
    }
}

/// Open shards (no ending sequence number).
pub async fn open_shards(client: &aws_sdk_kinesis::Client, stream: &str) -> Vec<Shard> {
    list_shards(client, stream)
        .await
        .into_iter()
        .filter(|s| {
            s.sequence_number_range()
                .and_then(|r| r.ending_sequence_number())
                .is_none()
        })
        .collect()
}

async fn put(
    client: &aws_sdk_kinesis::Client,
    stream: &str,
    entries: Vec<PutRecordsRequestEntry>,
) -> Vec<(String, String)> {
    let mut placed = Vec::with_capacity(entries.len());
    for chunk in entries.chunks(500) {
        let out = client
            .put_records()
            .stream_name(stream)
            .set_records(Some(chunk.to_vec()))
            .send()
            .await
            .unwrap_or_else(|e| panic!("put records to {stream}: {e:?}"));
        assert_eq!(
            out.failed_record_count().unwrap_or(0),
            0,
            "put records to {stream}: {:?}",
            out.records()
                .iter()
                .filter_map(|r| r.error_message())
                .next()
        );
        for r in out.records() {
            placed.push((
                r.shard_id().unwrap_or_default().to_string(),
                r.sequence_number().unwrap_or_default().to_string(),
            ));
        }
    }
    placed
}

/// Puts records (partition key, data) in order, 500 per call; panics on any failure. Returns
/// each record's (shard id, sequence number).
pub async fn put_records(
    client: &aws_sdk_kinesis::Client,
    stream: &str,
    records: &[(&str, &[u8])],
) -> Vec<(String, String)> {
    let entries = records
        .iter()
        .map(|(k, d)| {
            PutRecordsRequestEntry::builder()
                .partition_key(*k)
                .data(Blob::new(d.to_vec()))
                .build()
                .expect("entry")
        })
        .collect();
    put(client, stream, entries).await
}

/// Puts records onto one shard (its starting hash key as ExplicitHashKey; the partition key
/// is the shard id), in order. Returns their sequence numbers.
pub async fn put_to_shard(
    client: &aws_sdk_kinesis::Client,
    stream: &str,
    shard_id: &str,
    records: &[&[u8]],
) -> Vec<String> {
    let shards = list_shards(client, stream).await;
    let shard = shards
        .iter()
        .find(|s| s.shard_id() == shard_id)
        .unwrap_or_else(|| panic!("no shard {shard_id} in {stream}"));
    let hash = shard
        .hash_key_range()
        .expect("hash key range")
        .starting_hash_key()
        .to_string();
    let entries = records
        .iter()
        .map(|d| {
            PutRecordsRequestEntry::builder()
                .partition_key(shard_id)
                .explicit_hash_key(&hash)
                .data(Blob::new(d.to_vec()))
                .build()
                .expect("entry")
        })
        .collect();
    let placed = put(client, stream, entries).await;
    for (s, _) in &placed {
        assert_eq!(s, shard_id, "a record meant for {shard_id} went to {s}");
    }
    placed.into_iter().map(|(_, seq)| seq).collect()
}

/// One record read back.
#[derive(Debug, Clone)]
pub struct Got {
    pub sequence: String,
    pub partition_key: String,
    pub data: Vec<u8>,
}

/// Every record of every shard (closed ones too), read from TRIM_HORIZON until each shard is
/// caught up (no records and MillisBehindLatest 0) or ends (closed: no next iterator).
pub async fn read_all_keyed(
    client: &aws_sdk_kinesis::Client,
    stream: &str,
) -> BTreeMap<String, Vec<Got>> {
    let mut all = BTreeMap::new();
    for shard in list_shards(client, stream).await {
        let id = shard.shard_id().to_string();
        let mut iterator = client
            .get_shard_iterator()
            .stream_name(stream)
            .shard_id(&id)
            .shard_iterator_type(ShardIteratorType::TrimHorizon)
            .send()
            .await
            .unwrap_or_else(|e| panic!("shard iterator {stream}/{id}: {e:?}"))
            .shard_iterator()
            .map(str::to_string);
        let mut got = Vec::new();
        while let Some(it) = iterator {
            let out = client
                .get_records()
                .shard_iterator(&it)
                .limit(10_000)
                .send()
                .await
                .unwrap_or_else(|e| panic!("get records {stream}/{id}: {e:?}"));
            for r in out.records() {
                got.push(Got {
                    sequence: r.sequence_number().to_string(),
                    partition_key: r.partition_key().unwrap_or_default().to_string(),
                    data: r.data().as_ref().to_vec(),
                });
            }
            let caught_up = out.records().is_empty() && out.millis_behind_latest() == Some(0);
            iterator = if caught_up {
                None
            } else {
                out.next_shard_iterator().map(str::to_string)
            };
        }
        all.insert(id, got);
    }
    all
}

/// [`read_all_keyed`] as (sequence number, data) per shard.
pub async fn read_all(
    client: &aws_sdk_kinesis::Client,
    stream: &str,
) -> BTreeMap<String, Vec<(String, Vec<u8>)>> {
    read_all_keyed(client, stream)
        .await
        .into_iter()
        .map(|(s, v)| (s, v.into_iter().map(|g| (g.sequence, g.data)).collect()))
        .collect()
}

/// Orders Kinesis sequence numbers (decimal strings of up to 128 bits and more digits).
pub fn seq_cmp(a: &str, b: &str) -> std::cmp::Ordering {
    a.len().cmp(&b.len()).then_with(|| a.cmp(b))
}

fn hash_range(shard: &Shard) -> (u128, u128) {
    let r = shard.hash_key_range().expect("hash key range");
    (
        r.starting_hash_key().parse().expect("hash key"),
        r.ending_hash_key().parse().expect("hash key"),
    )
}

/// The starting hash key of the upper half of [start, end].
pub fn midpoint(start: u128, end: u128) -> u128 {
    start + (end - start) / 2 + 1
}

/// Splits an open shard at the middle of its hash range and waits until the stream is ACTIVE.
/// Returns the ids of the two children (lower half first).
pub async fn split_shard(
    client: &aws_sdk_kinesis::Client,
    stream: &str,
    shard_id: &str,
) -> (String, String) {
    let shards = list_shards(client, stream).await;
    let shard = shards
        .iter()
        .find(|s| s.shard_id() == shard_id)
        .unwrap_or_else(|| panic!("no shard {shard_id} in {stream}"));
    let (start, end) = hash_range(shard);
    assert!(end > start, "shard {shard_id} is too small to split");
    let mid = midpoint(start, end);
    client
        .split_shard()
        .stream_name(stream)
        .shard_to_split(shard_id)
        .new_starting_hash_key(mid.to_string())
        .send()
        .await
        .unwrap_or_else(|e| panic!("split {stream}/{shard_id}: {e:?}"));
    wait_active(client, stream).await;
    let children: Vec<Shard> = list_shards(client, stream)
        .await
        .into_iter()
        .filter(|s| s.parent_shard_id() == Some(shard_id))
        .collect();
    assert_eq!(children.len(), 2, "children of {shard_id}: {children:?}");
    let mut ids: Vec<(u128, String)> = children
        .iter()
        .map(|s| (hash_range(s).0, s.shard_id().to_string()))
        .collect();
    ids.sort();
    (ids[0].1.clone(), ids[1].1.clone())
}

/// Merges two adjacent open shards and waits until the stream is ACTIVE. Returns the child's
/// id.
pub async fn merge_shards(
    client: &aws_sdk_kinesis::Client,
    stream: &str,
    shard_id: &str,
    adjacent_shard_id: &str,
) -> String {
    client
        .merge_shards()
        .stream_name(stream)
        .shard_to_merge(shard_id)
        .adjacent_shard_to_merge(adjacent_shard_id)
        .send()
        .await
        .unwrap_or_else(|e| panic!("merge {stream}/{shard_id}+{adjacent_shard_id}: {e:?}"));
    wait_active(client, stream).await;
    let child = list_shards(client, stream)
        .await
        .into_iter()
        .find(|s| {
            s.parent_shard_id() == Some(shard_id)
                && s.adjacent_parent_shard_id() == Some(adjacent_shard_id)
        })
        .unwrap_or_else(|| panic!("no child of {shard_id} + {adjacent_shard_id}"));
    child.shard_id().to_string()
}

#[test]
fn midpoints_split_hash_ranges_in_two() {
    assert_eq!(midpoint(0, u128::MAX), (u128::MAX / 2) + 1);
    assert_eq!(midpoint(10, 11), 11);
    assert_eq!(
        seq_cmp("9", "10"),
        std::cmp::Ordering::Less,
        "shorter sequence numbers are smaller"
    );
}
