//! The Kinesis input against kinesis-local and dynalite (started by `.ci/run`; locally:
//! `eval "$(scripts/kinesis-services.sh start)"; export AUDITNORM_TEST_KINESIS
//! AUDITNORM_TEST_DYNAMODB`). Skipped when they are not set, failing under CI=true.
//!
//! - order per shard over 4 shards, a dead letter, and a restart that resumes after the
//!   checkpoint (nothing read twice after a clean stop);
//! - a split and a merge during the run: order per partition key across parents and children;
//! - two `auditnorm run` processes sharing a stream through the lease table, one killed with
//!   SIGKILL: its shards are taken over, nothing is lost, re-delivered events are identical.

#[path = "support/http.rs"]
mod http;
#[path = "kinesis_common.rs"]
mod kinesis_common;
#[path = "support/pipeline.rs"]
mod pipeline;
#[path = "support/records.rs"]
mod records;

use auditnorm::config;
use auditnorm::kinesis::lease::{Checkpoint, DynamoLeases, Lease, LeaseStore};
use aws_sdk_kinesis::types::Shard;
use http::{free_port, get};
use kinesis_common as kc;
use pipeline::{runtime, wait_until, Running};
use records::templates;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Worker threads of a test's runtime, and of each pipeline it runs in-process.
const WORKERS: usize = 2;

/// A CloudTrail record (support/records.rs) as the bytes to put.
fn record(templates: &[String], n: usize, id: &str) -> Vec<u8> {
    records::record(templates, n, id).into_bytes()
}

fn id(tag: &str, key: &str, i: usize) -> String {
    format!("{tag}-{key}-{i:06}")
}

/// A scratch directory under target/.
fn scratch(name: &str) -> PathBuf {
    let d = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("target/tmp")
        .join(kc::unique(name));
    std::fs::create_dir_all(&d).expect("scratch dir");
    d
}

/// A pipeline config reading `stream` from `kinesis`, with the lease store `leases`, events to
/// `out` and dead letters to `dead` (destinations: [`file`], [`Env::stream`]); `extra`: more
/// lines under `input.kinesis`.
fn yaml(kinesis: &str, stream: &str, leases: &str, out: &str, dead: &str, extra: &str) -> String {
    format!(
        r#"
input:
  kinesis:
    stream: {stream}
    region: us-east-1
    endpoint: {kinesis}
    poll_interval: 50ms
    lease_duration: 3s
    shard_sync_interval: 2s
    leases:
      {leases}
{extra}
output:
  {out}
dead_letter:
  {dead}
pipeline:
  commit_interval: 200ms
  drain_timeout: 10s
"#
    )
}

/// A file destination.
fn file(path: &Path) -> String {
    format!("file: {}", path.display())
}

/// What every test here starts from: the emulators (`Env::new` is `None` when they are not
/// set, and the test returns), a runtime, a Kinesis client, a lease table of its own and a
/// scratch directory with the default output files.
struct Env {
    kinesis: String,
    dynamo: String,
    rt: tokio::runtime::Runtime,
    client: aws_sdk_kinesis::Client,
    table: String,
    dir: PathBuf,
    /// events.ndjson and dead.ndjson in `dir`.
    out: PathBuf,
    dead: PathBuf,
}

impl Env {
    fn new(scratch_name: &str) -> Option<Env> {
        let (kinesis, dynamo) = kc::endpoints()?;
        kc::set_process_env();
        let dir = scratch(scratch_name);
        Some(Env {
            rt: runtime(WORKERS),
            client: kc::kinesis_client(&kinesis),
            table: kc::unique("leases"),
            out: dir.join("events.ndjson"),
            dead: dir.join("dead.ndjson"),
            dir,
            kinesis,
            dynamo,
        })
    }

    /// A new stream of `shards` shards, named after `prefix`; ACTIVE when this returns, deleted
    /// when the guard is dropped.
    fn create_stream(&self, prefix: &str, shards: i32) -> kc::TestStream {
        self.rt
            .block_on(kc::new_stream(&self.client, &self.kinesis, prefix, shards))
    }

    /// A Kinesis stream destination on the emulator.
    fn stream(&self, name: &str) -> String {
        format!(
            "kinesis: {{stream: {name}, region: us-east-1, endpoint: \"{}\"}}",
            self.kinesis
        )
    }

    /// [`yaml`] with the leases in the test's DynamoDB table.
    fn yaml(&self, stream: &str, out: &str, dead: &str, extra: &str) -> String {
        let leases = format!(
            "dynamodb: {{table: {}, endpoint: \"{}\"}}",
            self.table, self.dynamo
        );
        yaml(&self.kinesis, stream, &leases, out, dead, extra)
    }

    /// A pipeline in-process reading `stream` into the default files.
    fn start(&self, stream: &str, extra: &str) -> Running {
        let text = self.yaml(stream, &file(&self.out), &file(&self.dead), extra);
        Running::start_on(runtime(WORKERS), &text)
    }

    fn leases(&self) -> Vec<Lease> {
        let store = LeaseStore::Dynamo(DynamoLeases {
            client: kc::dynamodb_client(&self.dynamo),
            table: self.table.clone(),
        });
        self.rt.block_on(store.list()).expect("lease table")
    }
}

/// The scratch directory goes when the test passes; it stays, with the logs and outputs, when
/// the test fails.
impl Drop for Env {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

fn ids(shards: &[Shard]) -> Vec<String> {
    shards.iter().map(|s| s.shard_id().to_string()).collect()
}

/// `metadata.uid` of every event line in a file, in file order, with the line.
fn events(path: &Path) -> Vec<(String, String)> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .filter(|l| !l.is_empty())
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("event JSON");
            let uid = v["metadata"]["uid"]
                .as_str()
                .expect("metadata.uid")
                .to_string();
            (uid, l.to_string())
        })
        .collect()
}

/// `metadata.uid` of every event line in a file, in file order.
fn uids_of(path: &Path) -> Vec<String> {
    events(path).into_iter().map(|(u, _)| u).collect()
}

fn lines(path: &Path) -> usize {
    std::fs::read_to_string(path)
        .map(|t| t.lines().filter(|l| !l.is_empty()).count())
        .unwrap_or(0)
}

/// Per key (`<tag>-<key>-<i>`), the indices in order of first appearance; panics when a key's
/// indices do not increase.
fn check_order(uids: &[String]) -> BTreeMap<String, Vec<usize>> {
    let mut seen = BTreeSet::new();
    let mut per_key: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for u in uids {
        if !seen.insert(u.clone()) {
            continue;
        }
        let (key, i) = u.rsplit_once('-').expect("uid shape");
        let i: usize = i.parse().expect("index");
        let v = per_key.entry(key.to_string()).or_default();
        if let Some(last) = v.last() {
            assert!(
                i > *last,
                "order broken for {key}: {i} after {last} (first appearances: {v:?})"
            );
        }
        v.push(i);
    }
    per_key
}

/// Records under a set of partition keys, each key's records numbered in order (the uid is
/// `<tag>-<key>-<i>`), put round by round.
struct Feeder {
    tag: &'static str,
    keys: Vec<String>,
    next: Vec<usize>,
    templates: Vec<String>,
}

impl Feeder {
    fn new(tag: &'static str, keys: Vec<String>) -> Feeder {
        Feeder {
            tag,
            next: vec![0; keys.len()],
            keys,
            templates: templates(),
        }
    }

    /// Puts `n` records per key, keys interleaved, in one PutRecords sequence.
    fn put_round(&mut self, env: &Env, stream: &str, n: usize) {
        let mut recs: Vec<(String, Vec<u8>)> = Vec::new();
        for _ in 0..n {
            for (k, key) in self.keys.iter().enumerate() {
                let i = self.next[k];
                recs.push((
                    key.clone(),
                    record(&self.templates, i, &id(self.tag, key, i)),
                ));
                self.next[k] += 1;
            }
        }
        let refs: Vec<(&str, &[u8])> = recs
            .iter()
            .map(|(k, d)| (k.as_str(), d.as_slice()))
            .collect();
        env.rt.block_on(kc::put_records(&env.client, stream, &refs));
    }

    /// Every uid put so far.
    fn all(&self) -> BTreeSet<String> {
        self.keys
            .iter()
            .enumerate()
            .flat_map(|(k, key)| (0..self.next[k]).map(move |i| id(self.tag, key, i)))
            .collect()
    }

    /// Asserts that `uids` hold every record put so far, each key's in the order put.
    fn check_all_in_order(&self, uids: &[String]) {
        let order = check_order(uids);
        for (k, key) in self.keys.iter().enumerate() {
            assert_eq!(
                order.get(&format!("{}-{key}", self.tag)),
                Some(&(0..self.next[k]).collect::<Vec<_>>()),
                "{key}"
            );
        }
    }
}

#[test]
fn four_shards_keep_order_and_a_restart_resumes_after_the_checkpoint() {
    let Some(env) = Env::new("kinesis-order") else {
        return;
    };
    let (rt, client) = (&env.rt, &env.client);
    let stream = env.create_stream("order", 4);
    let t = templates();
    let shards = ids(&rt.block_on(kc::list_shards(client, &stream)));
    assert_eq!(shards.len(), 4);
    let per_shard = 250;
    let mut last_seq = BTreeMap::new();
    rt.block_on(async {
        for (k, s) in shards.iter().enumerate() {
            let recs: Vec<Vec<u8>> = (0..per_shard)
                .map(|i| record(&t, i, &id("a", &format!("s{k}"), i)))
                .collect();
            let mut refs: Vec<&[u8]> = recs.iter().map(Vec::as_slice).collect();
            // One record that is no audit record: a dead letter, in order with the rest.
            if k == 1 {
                refs.insert(100, b"{\"not\": \"an audit record\"}");
            }
            let seqs = kc::put_to_shard(client, &stream, s, &refs).await;
            last_seq.insert(s.clone(), seqs.last().cloned().expect("seq"));
        }
    });
    let (out, dead) = (&env.out, &env.dead);
    let run = env.start(&stream, "");
    let want = 4 * per_shard;
    let done = wait_until(Duration::from_secs(60), || {
        lines(out) >= want && lines(dead) >= 1
    });
    let summary = run.stop().expect("clean stop");
    assert!(done, "{} events, {} dead letters", lines(out), lines(dead));
    let uids = uids_of(out);
    assert_eq!(uids.len(), want, "no duplicates in a clean run: {summary}");
    let order = check_order(&uids);
    for k in 0..4 {
        assert_eq!(
            order[&format!("a-s{k}")],
            (0..per_shard).collect::<Vec<_>>(),
            "shard {k}"
        );
    }
    let dl: serde_json::Value = serde_json::from_str(
        std::fs::read_to_string(dead)
            .unwrap()
            .lines()
            .next()
            .unwrap(),
    )
    .unwrap();
    let dl_text = dl.to_string();
    assert!(
        dl_text.contains(&shards[1]) && dl_text.contains(&*stream),
        "the dead letter names its stream and shard: {dl_text}"
    );
    // Every lease holds its shard's last sequence number and no owner after a clean stop.
    let ls = env.leases();
    assert_eq!(ls.len(), 4);
    for l in &ls {
        assert_eq!(l.owner, None, "released: {l:?}");
        assert_eq!(
            l.checkpoint,
            Checkpoint::After(last_seq[&l.shard].clone()),
            "{l:?}"
        );
    }

    // A restart reads only what came after the checkpoint.
    rt.block_on(async {
        for (k, s) in shards.iter().enumerate() {
            let recs: Vec<Vec<u8>> = (per_shard..per_shard + 50)
                .map(|i| record(&t, i, &id("a", &format!("s{k}"), i)))
                .collect();
            let refs: Vec<&[u8]> = recs.iter().map(Vec::as_slice).collect();
            kc::put_to_shard(client, &stream, s, &refs).await;
        }
    });
    let out2 = env.dir.join("events-2.ndjson");
    let run = Running::start_on(
        runtime(WORKERS),
        &env.yaml(&stream, &file(&out2), &file(dead), ""),
    );
    let done = wait_until(Duration::from_secs(60), || lines(&out2) >= 200);
    // A moment more: anything read twice would show up now.
    std::thread::sleep(Duration::from_millis(500));
    run.stop().expect("clean stop");
    assert!(done, "{} events after the restart", lines(&out2));
    let uids = uids_of(&out2);
    assert_eq!(
        uids.len(),
        200,
        "only the new records: {:?}",
        &uids[..5.min(uids.len())]
    );
    let order = check_order(&uids);
    for k in 0..4 {
        assert_eq!(
            order[&format!("a-s{k}")],
            (per_shard..per_shard + 50).collect::<Vec<_>>()
        );
    }
}

#[test]
fn a_split_and_a_merge_during_the_run_keep_order_per_partition_key() {
    let Some(env) = Env::new("kinesis-reshard") else {
        return;
    };
    let (rt, client) = (&env.rt, &env.client);
    let stream = env.create_stream("reshard", 2);
    let mut feed = Feeder::new("r", (0..16).map(|k| format!("k{k:02}")).collect());
    feed.put_round(&env, &stream, 20);
    let out = &env.out;
    let run = env.start(&stream, "");
    assert!(wait_until(Duration::from_secs(30), || lines(out) >= 100));
    let shards = ids(&rt.block_on(kc::open_shards(client, &stream)));
    let (_low, high) = rt.block_on(kc::split_shard(client, &stream, &shards[0]));
    feed.put_round(&env, &stream, 20);
    // The upper child of the split and the old second shard are adjacent: merge them.
    rt.block_on(kc::merge_shards(client, &stream, &high, &shards[1]));
    feed.put_round(&env, &stream, 20);
    let want = 60 * feed.keys.len();
    let done = wait_until(Duration::from_secs(90), || lines(out) >= want);
    std::thread::sleep(Duration::from_millis(500));
    let summary = run.stop().expect("clean stop");
    assert!(done, "{} of {want} events; {summary}", lines(out));
    feed.check_all_in_order(&uids_of(out));
    let ls = env.leases();
    for closed in [&shards[0], &shards[1], &high] {
        let l = ls.iter().find(|l| l.shard == **closed).expect("lease");
        assert_eq!(
            l.checkpoint,
            Checkpoint::End,
            "closed shard read to its end: {l:?}"
        );
    }
    assert!(ls.len() >= 5, "parents and children have leases: {ls:?}");
}

struct Proc {
    child: std::process::Child,
    out: PathBuf,
    dead: PathBuf,
}

/// A replica that a failing assertion leaves behind is killed, not leaked.
impl Drop for Proc {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn spawn(dir: &Path, name: &str, yaml_text: &str) -> Proc {
    let cfg = dir.join(format!("{name}.yaml"));
    std::fs::write(&cfg, yaml_text).expect("config");
    let log = std::fs::File::create(dir.join(format!("{name}.log"))).expect("log");
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_auditnorm"));
    cmd.arg("run")
        .arg("--config")
        .arg(&cfg)
        .stdout(std::process::Stdio::null())
        .stderr(log);
    for (k, v) in kc::child_env() {
        cmd.env(k, v);
    }
    Proc {
        child: cmd.spawn().expect("auditnorm run"),
        out: dir.join(format!("{name}.ndjson")),
        dead: dir.join(format!("{name}-dead.ndjson")),
    }
}

#[test]
fn two_replicas_share_a_stream_and_one_takes_over_after_the_other_is_killed() {
    let Some(env) = Env::new("kinesis-replicas") else {
        return;
    };
    let stream = env.create_stream("replicas", 4);
    let mut feed = Feeder::new("x", (0..8).map(|k| format!("k{k}")).collect());
    feed.put_round(&env, &stream, 50);
    let dir = &env.dir;
    let conf = |name: &str| {
        env.yaml(
            &stream,
            &file(&dir.join(format!("{name}.ndjson"))),
            &file(&dir.join(format!("{name}-dead.ndjson"))),
            &format!("    worker_id: {name}"),
        )
    };
    let mut a = spawn(dir, "a", &conf("a"));
    assert!(
        wait_until(Duration::from_secs(30), || lines(&a.out) >= 100),
        "replica a reads: see {}",
        dir.join("a.log").display()
    );
    let port = free_port();
    let mut b = spawn(
        dir,
        "b",
        &format!("{}\nmetrics:\n  listen: \"127.0.0.1:{port}\"\n", conf("b")),
    );
    // The two replicas balance: two leases each.
    let balanced = wait_until(Duration::from_secs(40), || {
        let ls = env.leases();
        let n = |w: &str| ls.iter().filter(|l| l.owner.as_deref() == Some(w)).count();
        n("a") == 2 && n("b") == 2
    });
    assert!(balanced, "leases: {:?}", env.leases());
    feed.put_round(&env, &stream, 50);
    std::thread::sleep(Duration::from_millis(300));
    a.child.kill().expect("SIGKILL a");
    let _ = a.child.wait();
    feed.put_round(&env, &stream, 50);
    let want = feed.all();
    let all = |a: &Proc, b: &Proc| {
        let mut u: BTreeSet<String> = BTreeSet::new();
        for p in [a, b] {
            u.extend(uids_of(&p.out));
        }
        u
    };
    let complete = wait_until(Duration::from_secs(60), || all(&a, &b).is_superset(&want));
    let ls = env.leases();
    // b's metrics after the takeover (a scrape from a real run; kept in the test's log).
    let scrape = wait_until(Duration::from_secs(10), || {
        get(port, "/metrics").is_some_and(|(_, m)| m.contains("auditnorm_kinesis_leases_held 4"))
    });
    let metrics = get(port, "/metrics").map(|(_, m)| m).unwrap_or_default();
    eprintln!("{metrics}");
    assert!(scrape, "b holds the 4 leases in its metrics:\n{metrics}");
    for want in [
        "auditnorm_ready 1",
        "auditnorm_input_connected 1",
        "auditnorm_kinesis_leases_taken_total{reason=\"expired\"}",
        "auditnorm_lane_behind_seconds{lane=",
        "auditnorm_events_emitted_total{source=\"cloudtrail\"",
    ] {
        assert!(metrics.contains(want), "missing {want} in:\n{metrics}");
    }
    assert_eq!(get(port, "/readyz").map(|(s, _)| s), Some(200));
    assert_eq!(get(port, "/healthz").map(|(s, _)| s), Some(200));
    let _ = std::process::Command::new("kill")
        .arg("-TERM")
        .arg(b.child.id().to_string())
        .status();
    let status = b.child.wait().expect("b exits");
    let got = all(&a, &b);
    let missing: Vec<&String> = want.difference(&got).take(10).collect();
    assert!(
        complete,
        "missing events (first 10): {missing:?}; leases {ls:?}"
    );
    assert!(status.success(), "b stopped cleanly: {status:?}");
    assert!(
        ls.iter().all(|l| l.owner.as_deref() == Some("b")),
        "b took over every lease: {ls:?}"
    );
    // Re-delivered events are byte-identical; order holds within each replica's output.
    let mut bytes: BTreeMap<String, String> = BTreeMap::new();
    let mut redelivered = 0;
    for p in [&a, &b] {
        let ev = events(&p.out);
        check_order(&ev.iter().map(|(u, _)| u.clone()).collect::<Vec<_>>());
        for (u, line) in ev {
            match bytes.get(&u) {
                Some(prev) => {
                    redelivered += 1;
                    assert_eq!(prev, &line, "a re-delivered event differs: {u}");
                }
                None => {
                    bytes.insert(u, line);
                }
            }
        }
    }
    assert_eq!(lines(&a.dead) + lines(&b.dead), 0, "no dead letters");
    eprintln!(
        "{} events, {} re-delivered after the kill",
        bytes.len(),
        redelivered
    );
}

#[test]
fn enhanced_fan_out_reads_every_shard_in_order_across_a_split() {
    let Some(env) = Env::new("kinesis-efo") else {
        return;
    };
    let (rt, client) = (&env.rt, &env.client);
    let mut feed = Feeder::new("f", (0..8).map(|k| format!("e{k}")).collect());
    let stream = env.create_stream("efo", 2);
    feed.put_round(&env, &stream, 30);
    let out = &env.out;
    let run = env.start(&stream, "    enhanced_fan_out: auditnorm-test");
    assert!(
        wait_until(Duration::from_secs(30), || lines(out) >= 240),
        "{} events by enhanced fan-out",
        lines(out)
    );
    // Records pushed while subscribed, then a split: the children are read after the parent.
    feed.put_round(&env, &stream, 30);
    let first = rt.block_on(async {
        kc::open_shards(client, &stream).await[0]
            .shard_id()
            .to_string()
    });
    rt.block_on(kc::split_shard(client, &stream, &first));
    feed.put_round(&env, &stream, 30);
    let want = 90 * feed.keys.len();
    let done = wait_until(Duration::from_secs(60), || lines(out) >= want);
    let summary = run.stop().expect("clean stop");
    assert!(done, "{} of {want} events; {summary}", lines(out));
    feed.check_all_in_order(&uids_of(out));
    let ls = env.leases();
    let parent = ls.iter().find(|l| l.shard == first).expect("lease");
    assert_eq!(parent.checkpoint, Checkpoint::End, "{parent:?}");
}

#[test]
fn events_and_dead_letters_go_to_kinesis_streams_in_lane_order() {
    let Some(env) = Env::new("kinesis-out") else {
        return;
    };
    let (rt, client) = (&env.rt, &env.client);
    let input = env.create_stream("in", 3);
    let output = env.create_stream("out", 2);
    let dlq = env.create_stream("dlq", 1);
    let t = templates();
    let shards = ids(&rt.block_on(kc::list_shards(client, &input)));
    rt.block_on(async {
        for (k, s) in shards.iter().enumerate() {
            let recs: Vec<Vec<u8>> = (0..200)
                .map(|i| record(&t, i, &id("o", &format!("s{k}"), i)))
                .collect();
            let mut refs: Vec<&[u8]> = recs.iter().map(Vec::as_slice).collect();
            refs.insert(50, b"not json at all");
            kc::put_to_shard(client, &input, s, &refs).await;
        }
    });
    let text = env.yaml(&input, &env.stream(&output), &env.stream(&dlq), "");
    let run = Running::start_on(runtime(WORKERS), &text);
    let count = |stream: &str| -> usize {
        rt.block_on(kc::read_all(client, stream))
            .values()
            .map(Vec::len)
            .sum()
    };
    let done = wait_until(Duration::from_secs(60), || {
        count(&output) >= 600 && count(&dlq) >= 3
    });
    let summary = run.stop().expect("clean stop");
    assert!(
        done,
        "{} events, {} dead letters; {summary}",
        count(&output),
        count(&dlq)
    );
    // Each lane's events share one partition key (the lane's name) and keep its order.
    let got = rt.block_on(kc::read_all_keyed(client, &output));
    let mut per_key: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for records in got.values() {
        for g in records {
            let v: serde_json::Value = serde_json::from_slice(&g.data).expect("event JSON");
            per_key
                .entry(g.partition_key.clone())
                .or_default()
                .push(v["metadata"]["uid"].as_str().expect("uid").to_string());
        }
    }
    assert_eq!(
        per_key.len(),
        3,
        "one partition key per lane: {:?}",
        per_key.keys()
    );
    for (key, uids) in &per_key {
        assert!(key.starts_with(&format!("{input}/shardId-")), "{key}");
        let order = check_order(uids);
        assert_eq!(order.len(), 1, "one input shard per key: {key}");
        assert_eq!(
            order.values().next().unwrap(),
            &(0..200).collect::<Vec<_>>()
        );
    }
    let dead = rt.block_on(kc::read_all_keyed(client, &dlq));
    let dls: Vec<serde_json::Value> = dead
        .values()
        .flatten()
        .map(|g| serde_json::from_slice(&g.data).expect("dead-letter JSON"))
        .collect();
    assert_eq!(dls.len(), 3);
    for d in &dls {
        assert!(d.to_string().contains("not json at all"), "{d}");
    }
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(bytes).expect("gzip");
    e.finish().expect("gzip")
}

#[test]
fn kpl_aggregates_and_cloudwatch_logs_payloads_arrive_as_events_with_a_file_checkpoint() {
    let Some(env) = Env::new("kinesis-payloads") else {
        return;
    };
    let (rt, client) = (&env.rt, &env.client);
    let t = templates();
    let fixture = |name: &str| {
        std::fs::read(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests/fixtures/kinesis")
                .join(name),
        )
        .expect("fixture")
    };
    // In shard order: a plain record, a KPL aggregate of three, a CloudWatch Logs control
    // message (skipped), a CloudWatch Logs payload of CloudTrail events, a plain record.
    let subs: Vec<Vec<u8>> = (1..4).map(|i| record(&t, i, &id("k", "s0", i))).collect();
    let sub_refs: Vec<(&str, &[u8])> = subs.iter().map(|d| ("pk", d.as_slice())).collect();
    let aggregate = auditnorm::kinesis::kpl::aggregate(&sub_refs);
    let cw = fixture("cloudwatch-cloudtrail.json");
    let cw_events: usize = serde_json::from_slice::<serde_json::Value>(&cw).unwrap()["logEvents"]
        .as_array()
        .unwrap()
        .len();
    let units: Vec<Vec<u8>> = vec![
        record(&t, 0, &id("k", "s0", 0)),
        aggregate,
        gzip(&fixture("cloudwatch-control.json")),
        gzip(&cw),
        record(&t, 4, &id("k", "s0", 4)),
    ];
    let stream = env.create_stream("payloads", 1);
    let shard = rt.block_on(async {
        let shard = kc::list_shards(client, &stream).await[0]
            .shard_id()
            .to_string();
        let refs: Vec<&[u8]> = units.iter().map(Vec::as_slice).collect();
        kc::put_to_shard(client, &stream, &shard, &refs).await;
        shard
    });
    let (out, dead) = (&env.out, &env.dead);
    let checkpoints = env.dir.join("checkpoints.json");
    let text = yaml(
        &env.kinesis,
        &stream,
        &file(&checkpoints),
        &file(out),
        &file(dead),
        "",
    );
    let want = 5 + cw_events;
    let run = Running::start_on(runtime(WORKERS), &text);
    let done = wait_until(Duration::from_secs(30), || lines(out) >= want);
    std::thread::sleep(Duration::from_millis(300));
    let summary = run.stop().expect("clean stop");
    assert!(done, "{} of {want} events; {summary}", lines(out));
    assert_eq!(summary.skipped, 1, "the control message: {summary}");
    assert_eq!(lines(dead), 0);
    let uids = uids_of(out);
    assert_eq!(uids.len(), want);
    // The plain and KPL records, in order, around the CloudWatch Logs events.
    let ours: Vec<&String> = uids.iter().filter(|u| u.starts_with("k-s0-")).collect();
    assert_eq!(
        ours,
        (0..5)
            .map(|i| id("k", "s0", i))
            .collect::<Vec<_>>()
            .iter()
            .collect::<Vec<_>>()
    );
    assert_eq!(uids.last(), Some(&id("k", "s0", 4)));
    // The file store holds the last record's sequence number.
    let saved = std::fs::read_to_string(&checkpoints).expect("checkpoint file");
    let doc: serde_json::Value = serde_json::from_str(&saved).unwrap();
    let lease = &doc["leases"][0];
    assert_eq!(lease["shard"], shard.as_str(), "{saved}");
    assert!(lease["checkpoint"]["after"].is_string(), "{saved}");
}

#[test]
fn an_event_too_large_for_the_output_stream_becomes_a_dead_letter() {
    let Some(env) = Env::new("kinesis-big") else {
        return;
    };
    let (rt, client) = (&env.rt, &env.client);
    let input = env.create_stream("big-in", 1);
    let output = env.create_stream("big-out", 1);
    let t = templates();
    let n = 60;
    rt.block_on(async {
        let recs: Vec<Vec<u8>> = (0..n).map(|i| record(&t, i, &id("b", "s0", i))).collect();
        let refs: Vec<(&str, &[u8])> = recs.iter().map(|d| ("k", d.as_slice())).collect();
        kc::put_records(client, &input, &refs).await;
    });
    let dead = &env.dead;
    let text = env.yaml(&input, &env.stream(&output), &file(dead), "");
    // A limit between the sizes of the corpus's events, so that some fit and some do not.
    let limit = 2600;
    let run = Running::start_with(runtime(WORKERS), &text, |plan| match &mut plan.output {
        config::DestinationPlan::Kinesis(k) => k.max_record_bytes = Some(limit),
        other => panic!("{other:?}"),
    });
    let count = || -> usize {
        rt.block_on(kc::read_all(client, &output))
            .values()
            .map(Vec::len)
            .sum::<usize>()
            + lines(dead)
    };
    let done = wait_until(Duration::from_secs(60), || count() >= n);
    let summary = run
        .stop()
        .expect("clean stop: an oversized event does not wedge the lane");
    assert!(done, "{} of {n}; {summary}", count());
    let events: Vec<String> = rt
        .block_on(kc::read_all(client, &output))
        .values()
        .flatten()
        .map(|(_, d)| {
            assert!(d.len() + 64 <= limit, "an event over the limit was written");
            let v: serde_json::Value = serde_json::from_slice(d).unwrap();
            v["metadata"]["uid"].as_str().unwrap().to_string()
        })
        .collect();
    let dls: Vec<serde_json::Value> = std::fs::read_to_string(dead)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(
        !events.is_empty() && !dls.is_empty(),
        "{} events, {} dead letters",
        events.len(),
        dls.len()
    );
    let mut uids: BTreeSet<String> = events.into_iter().collect();
    for d in &dls {
        assert_eq!(d["error_code"], "event_too_large", "{d}");
        assert_eq!(d["stage"], "encode");
        assert!(
            d["detail"]
                .as_str()
                .unwrap()
                .contains("over the stream's limit"),
            "{d}"
        );
        // The dead letter keeps the whole OCSF event.
        let ev: serde_json::Value = serde_json::from_str(d["original"].as_str().unwrap()).unwrap();
        assert!(ev["class_uid"].is_number());
        assert!(uids.insert(ev["metadata"]["uid"].as_str().unwrap().to_string()));
    }
    assert_eq!(
        uids.len(),
        n,
        "every record is an event or a dead letter, once"
    );
}
