//! Kinesis throughput, CPU per record and latency: `auditnorm run` reading a Kinesis stream on
//! kinesis-local, next to what the emulator alone can serve and to `auditnorm replay` of the
//! same records (the spine's normalize cost).
//!
//!   cargo bench --bench kinesis_throughput
//!
//! Emulator: AUDITNORM_TEST_KINESIS, else kinesis-local started with scripts/kinesis-services.sh
//! (and stopped). Leases are a file, so dynalite plays no part. Env: AUDITNORM_BENCH_SECS
//! (default 60) sizes the backlog (AUDITNORM_BENCH_RECORDS, default 300 per second, on 4 shards;
//! the 1-shard stream gets a quarter, the same per shard); AUDITNORM_BENCH_LATENCY_RATE (default
//! 500 records/s) and AUDITNORM_BENCH_LATENCY_SECS (default 20) the latency phase.
//!
//! Phases, each measured child its own process (CPU from /proc/PID/stat, peak RSS VmHWM):
//! 1. emulator bound: a raw GetRecords reader in this process (limit 10000, one task per
//!    shard, no processing) drains the backlog: records/s per shard that kinesis-local serves;
//! 2. throughput: `auditnorm run` (poll_interval 10ms, file leases, file output) drains the same
//!    backlog of ~1.1 KB CloudTrail records, 4 shards then 1 shard; events/s from the spawn to
//!    the moment the output file holds every event;
//! 3. CPU per record: that run's CPU seconds per record next to `auditnorm replay --output
//!    /dev/null` on an NDJSON file of the same records;
//! 4. latency: a feeder puts records at a modest rate with the put time in the eventID while
//!    auditnorm runs; latency is when the event's line appears in the output file minus that.
//!
//! kinesis-local (node) runs on the same cores and competes for CPU: its own CPU time is
//! reported per phase (its PID is the one listening on the endpoint's port).

#[path = "../tests/kinesis_common.rs"]
mod kinesis_common;
#[path = "../tests/support/records.rs"]
mod records;
#[path = "support/mod.rs"]
mod support;

use aws_sdk_kinesis::primitives::Blob;
use aws_sdk_kinesis::types::{PutRecordsRequestEntry, ShardIteratorType};
use aws_sdk_kinesis::Client;
use kinesis_common::{kinesis_client, unique, REGION};
use records::{record, templates};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::{
    env_num, loadavg, now_micros, proc_hwm, proc_stat, proc_status_kib, small_templates,
};
use support::{Child, Script};

const SHARDS: usize = 4;
const POLL_INTERVAL: &str = "10ms";

/// Starts and stops the emulators when AUDITNORM_TEST_KINESIS names none.
const SERVICES: Script = Script("scripts/kinesis-services.sh");

fn main() {
    // `cargo bench` passes `--bench`; a filter that does not match skips the run.
    if support::filtered_out("kinesis_throughput") {
        return;
    }
    let secs = env_num("AUDITNORM_BENCH_SECS", 60).max(10);
    let records = env_num("AUDITNORM_BENCH_RECORDS", secs * 300).max(4000) as usize;
    let records = records / SHARDS * SHARDS;
    let lat_rate = std::env::var("AUDITNORM_BENCH_LATENCY_RATE")
        .ok()
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(500.0)
        .max(1.0);
    let lat_secs = env_num("AUDITNORM_BENCH_LATENCY_SECS", 20).max(3);
    let (endpoint, started) = match std::env::var("AUDITNORM_TEST_KINESIS") {
        Ok(k) if !k.trim().is_empty() => (k.trim().to_string(), false),
        // `start` reuses services the script already runs; stop only what was started here.
        _ => {
            let was_running = SERVICES.ok("status");
            let out = SERVICES.run("start");
            let k = out
                .lines()
                .find_map(|l| l.strip_prefix("AUDITNORM_TEST_KINESIS="))
                .expect("kinesis-services.sh start printed no AUDITNORM_TEST_KINESIS")
                .trim()
                .to_string();
            (k, !was_running)
        }
    };
    let result = std::panic::catch_unwind(|| {
        bench(&Settings {
            endpoint: endpoint.clone(),
            records,
            lat_rate,
            lat_secs,
        })
    });
    if started {
        SERVICES.run("stop");
    }
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
}

struct Settings {
    endpoint: String,
    records: usize,
    lat_rate: f64,
    lat_secs: u64,
}

// ---------------------------------------------------------------------------------------------
// Records
// ---------------------------------------------------------------------------------------------

/// The eventID carries the put time, so that latency can be read off the output.
fn bench_id(shard: usize, i: usize, sent_micros: u64) -> String {
    format!("b{shard}-{i:09}-{sent_micros:016}")
}

/// The put time of an output event line, from its `metadata.uid` (`b<shard>-<i>-<micros>`).
fn sent_micros(line: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(line).ok()?;
    for (at, key) in text.match_indices("\"uid\":\"b") {
        let id = &text[at + key.len() - 1..];
        let Some(end) = id.find('"') else { continue };
        let parts: Vec<&str> = id[1..end].split('-').collect();
        if let [shard, i, micros] = parts[..] {
            let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
            if digits(shard) && i.len() == 9 && digits(i) && micros.len() == 16 && digits(micros) {
                return micros.parse().ok();
            }
        }
    }
    None
}

// ---------------------------------------------------------------------------------------------
// Processes: this one, children, the emulator
// ---------------------------------------------------------------------------------------------

fn own_cpu() -> f64 {
    proc_stat("self").map_or(0.0, |(c, _)| c)
}

/// The process serving the emulator: the one listening on the endpoint's port (found through
/// /proc/net/tcp and the processes' socket fds), else the script's pid file.
struct Emulator {
    pid: Option<String>,
}

impl Emulator {
    fn find(endpoint: &str) -> Emulator {
        let port = endpoint
            .rsplit(':')
            .next()
            .and_then(|p| p.trim_end_matches('/').parse::<u16>().ok());
        let pid = port.and_then(listener_pid).or_else(|| {
            let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/kinesis-services");
            let ep = std::fs::read_to_string(dir.join("kinesis.endpoint")).ok()?;
            if ep.trim() != endpoint {
                return None;
            }
            let pid = std::fs::read_to_string(dir.join("kinesis.pid")).ok()?;
            let pid = pid.trim().to_string();
            proc_stat(&pid).map(|_| pid)
        });
        Emulator { pid }
    }

    fn cpu(&self) -> f64 {
        self.pid
            .as_deref()
            .and_then(proc_stat)
            .map_or(f64::NAN, |(c, _)| c)
    }

    fn rss_mib(&self) -> f64 {
        let rss = self
            .pid
            .as_deref()
            .and_then(|pid| proc_status_kib(pid, "VmRSS:"));
        rss.map_or(f64::NAN, |k| k as f64 / 1024.0)
    }
}

fn listener_pid(port: u16) -> Option<String> {
    let suffix = format!(":{port:04X}");
    let mut inodes = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() > 9 && f[1].ends_with(&suffix) && f[3] == "0A" {
                inodes.push(format!("socket:[{}]", f[9]));
            }
        }
    }
    if inodes.is_empty() {
        return None;
    }
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        if !name.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let Ok(fds) = std::fs::read_dir(entry.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            if let Ok(link) = std::fs::read_link(fd.path()) {
                if inodes.iter().any(|i| Path::new(i) == link) {
                    return Some(name);
                }
            }
        }
    }
    None
}

impl Child {
    /// `auditnorm ARGS`, with the environment the emulator needs.
    fn auditnorm(args: &[&std::ffi::OsStr], log: &Path) -> Child {
        Child::spawn(
            std::process::Command::new(env!("CARGO_BIN_EXE_auditnorm"))
                .args(args)
                // The default credential chain, pointed at dummy credentials for the emulator.
                .envs(kinesis_common::child_env()),
            log,
        )
    }

    /// Panics (with the log) if the child has exited.
    fn check_alive(&mut self) {
        if let Some(status) = self.child.try_wait().ok().flatten() {
            panic!(
                "auditnorm exited early ({status}):\n{}",
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
        }
    }

    /// Waits for the child to exit on its own; (wall seconds, CPU seconds, peak RSS KiB) read
    /// from its zombie just before it is reaped.
    fn finish(mut self, t0: Instant) -> (f64, f64, u64) {
        let pid = self.pid();
        let mut hwm = 0;
        let deadline = Instant::now() + Duration::from_secs(900);
        let cpu = loop {
            if let Some(h) = proc_hwm(&pid) {
                hwm = hwm.max(h);
            }
            match proc_stat(&pid) {
                Some((cpu, 'Z')) => break cpu,
                Some(_) => {}
                None => break f64::NAN,
            }
            assert!(
                Instant::now() < deadline,
                "{} did not end",
                self.log.display()
            );
            std::thread::sleep(Duration::from_millis(2));
        };
        let wall = t0.elapsed().as_secs_f64();
        let status = self.child.wait().expect("wait");
        assert!(
            status.success(),
            "auditnorm replay failed ({status}):\n{}",
            std::fs::read_to_string(&self.log).unwrap_or_default()
        );
        (wall, cpu, hwm)
    }
}

/// Reads the lines appended to a file since the last call (a `tail -f`).
struct Tail {
    path: PathBuf,
    file: Option<std::fs::File>,
    pos: u64,
    partial: Vec<u8>,
    buf: Vec<u8>,
}

impl Tail {
    fn new(path: &Path) -> Tail {
        Tail {
            path: path.to_path_buf(),
            file: None,
            pos: 0,
            partial: Vec::new(),
            buf: vec![0; 1 << 20],
        }
    }

    /// Calls `f` with every complete new line; returns how many there were.
    fn read(&mut self, mut f: impl FnMut(&[u8])) -> usize {
        if self.file.is_none() {
            self.file = std::fs::File::open(&self.path).ok();
        }
        let Some(file) = self.file.as_mut() else {
            return 0;
        };
        if file.seek(SeekFrom::Start(self.pos)).is_err() {
            return 0;
        }
        let mut n = 0;
        loop {
            let got = match file.read(&mut self.buf) {
                Ok(0) | Err(_) => break,
                Ok(got) => got,
            };
            self.pos += got as u64;
            let mut chunk = &self.buf[..got];
            while let Some(nl) = chunk.iter().position(|b| *b == b'\n') {
                if self.partial.is_empty() {
                    f(&chunk[..nl]);
                } else {
                    self.partial.extend_from_slice(&chunk[..nl]);
                    f(&self.partial);
                    self.partial.clear();
                }
                n += 1;
                chunk = &chunk[nl + 1..];
            }
            self.partial.extend_from_slice(chunk);
        }
        n
    }
}

fn count_lines(path: &Path) -> usize {
    Tail::new(path).read(|_| {})
}

// ---------------------------------------------------------------------------------------------
// Kinesis
// ---------------------------------------------------------------------------------------------

/// A stream of the bench: its shards (id, starting hash key) in hash order.
struct Stream {
    name: String,
    shards: Vec<(String, String)>,
}

/// The streams the bench created, deleted when it ends (kinesis-local limits open shards to
/// 50 across all streams, and other tests share it).
struct Streams {
    rt: tokio::runtime::Handle,
    client: Client,
    names: Mutex<Vec<String>>,
}

impl Streams {
    fn create(&self, prefix: &str, shards: usize) -> Stream {
        let name = unique(prefix);
        let client = self.client.clone();
        let stream = self.rt.block_on(async {
            client
                .create_stream()
                .stream_name(&name)
                .shard_count(shards as i32)
                .send()
                .await
                .unwrap_or_else(|e| {
                    panic!(
                        "create stream {name} ({shards} shards): {}",
                        aws_sdk_kinesis::error::DisplayErrorContext(&e)
                    )
                });
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                let s = client
                    .describe_stream_summary()
                    .stream_name(&name)
                    .send()
                    .await
                    .expect("describe stream");
                if s.stream_description_summary().map(|d| d.stream_status())
                    == Some(&aws_sdk_kinesis::types::StreamStatus::Active)
                {
                    break;
                }
                assert!(Instant::now() < deadline, "stream {name} not ACTIVE");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let out = client
                .list_shards()
                .stream_name(&name)
                .send()
                .await
                .expect("list shards");
            let mut shards: Vec<(u128, String, String)> = out
                .shards()
                .iter()
                .map(|s| {
                    let start = s
                        .hash_key_range()
                        .expect("hash key range")
                        .starting_hash_key()
                        .to_string();
                    (
                        start.parse().expect("hash key"),
                        s.shard_id().to_string(),
                        start,
                    )
                })
                .collect();
            shards.sort();
            Stream {
                name: name.clone(),
                shards: shards.into_iter().map(|(_, id, h)| (id, h)).collect(),
            }
        });
        assert_eq!(stream.shards.len(), shards, "shards of {name}");
        self.names.lock().expect("names").push(name);
        stream
    }

    fn delete(&self, stream: &Stream) {
        self.names
            .lock()
            .expect("names")
            .retain(|n| *n != stream.name);
        self.delete_name(&stream.name);
    }

    fn delete_name(&self, name: &str) {
        let client = self.client.clone();
        let _ = self.rt.block_on(async {
            client
                .delete_stream()
                .stream_name(name)
                .enforce_consumer_deletion(true)
                .send()
                .await
        });
    }
}

impl Drop for Streams {
    fn drop(&mut self) {
        let names = std::mem::take(&mut *self.names.lock().unwrap_or_else(|p| p.into_inner()));
        for n in names {
            self.delete_name(&n);
        }
    }
}

fn put_entries(
    shard_hash: &str,
    partition_key: &str,
    data: impl IntoIterator<Item = String>,
) -> Vec<PutRecordsRequestEntry> {
    data.into_iter()
        .map(|d| {
            PutRecordsRequestEntry::builder()
                .partition_key(partition_key)
                .explicit_hash_key(shard_hash)
                .data(Blob::new(d.into_bytes()))
                .build()
                .expect("entry")
        })
        .collect()
}

/// PutRecords, retried on throttling and on failed entries (the ones that failed only).
async fn put(client: &Client, stream: &str, mut entries: Vec<PutRecordsRequestEntry>) {
    let mut attempts = 0;
    while !entries.is_empty() {
        attempts += 1;
        assert!(attempts < 100, "put records to {stream}: no progress");
        let out = match client
            .put_records()
            .stream_name(stream)
            .set_records(Some(entries.clone()))
            .send()
            .await
        {
            Ok(o) => o,
            Err(e) => {
                eprintln!(
                    "put records: {}; retrying",
                    aws_sdk_kinesis::error::DisplayErrorContext(&e)
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        if out.failed_record_count().unwrap_or(0) == 0 {
            return;
        }
        entries = entries
            .into_iter()
            .zip(out.records())
            .filter(|(_, r)| r.error_code().is_some())
            .map(|(e, _)| e)
            .collect();
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Puts `per_shard` records on every shard (ExplicitHashKey), 500 per call, one call at a
/// time (kinesis-local is single-threaded: concurrent puts were slower); returns the records
/// (to replay them) and the seconds it took.
fn put_backlog(
    rt: &tokio::runtime::Runtime,
    client: &Client,
    stream: &Stream,
    per_shard: usize,
) -> (Vec<String>, f64) {
    let templates = small_templates(templates());
    let per: Vec<Vec<String>> = (0..stream.shards.len())
        .map(|s| {
            (0..per_shard)
                .map(|i| record(&templates, i, &bench_id(s, i, 0)))
                .collect()
        })
        .collect();
    let t0 = Instant::now();
    rt.block_on(async {
        for ((shard_id, hash), recs) in stream.shards.iter().zip(&per) {
            for chunk in recs.chunks(500) {
                let entries = put_entries(hash, shard_id, chunk.iter().cloned());
                put(client, &stream.name, entries).await;
            }
        }
    });
    (
        per.into_iter().flatten().collect(),
        t0.elapsed().as_secs_f64(),
    )
}

/// Kinesis error codes that mean "slow down".
fn is_throttle(code: Option<&str>) -> bool {
    matches!(
        code,
        Some("ProvisionedThroughputExceededException" | "LimitExceededException")
    )
}

struct Raw {
    records: usize,
    bytes: usize,
    wall: f64,
    calls: usize,
    max_batch: usize,
    throttled: usize,
    own_cpu: f64,
    emu_cpu: f64,
}

/// The emulator bound: every shard read from TRIM_HORIZON with GetRecords (limit 10000), one
/// task per shard, nothing done with the records but counting them.
fn raw_read(
    rt: &tokio::runtime::Runtime,
    client: &Client,
    stream: &Stream,
    per_shard: usize,
    emu: &Emulator,
) -> Raw {
    let (cpu0, emu0, t0) = (own_cpu(), emu.cpu(), Instant::now());
    let per: Vec<(usize, usize, usize, usize, usize)> = rt.block_on(async {
        let mut tasks = Vec::new();
        for (shard_id, _) in &stream.shards {
            let client = client.clone();
            let name = stream.name.clone();
            let shard_id = shard_id.clone();
            tasks.push(tokio::spawn(async move {
                let mut it = client
                    .get_shard_iterator()
                    .stream_name(&name)
                    .shard_id(&shard_id)
                    .shard_iterator_type(ShardIteratorType::TrimHorizon)
                    .send()
                    .await
                    .expect("shard iterator")
                    .shard_iterator()
                    .map(str::to_string);
                let (mut got, mut bytes, mut calls, mut max_batch, mut throttled) = (0, 0, 0, 0, 0);
                let deadline = Instant::now() + Duration::from_secs(600);
                while let Some(i) = it.take() {
                    if got >= per_shard {
                        break;
                    }
                    assert!(Instant::now() < deadline, "raw read of {shard_id} stuck");
                    calls += 1;
                    let out = match client
                        .get_records()
                        .shard_iterator(&i)
                        .limit(10_000)
                        .send()
                        .await
                    {
                        Ok(o) => o,
                        Err(e) => {
                            let code = aws_sdk_kinesis::error::ProvideErrorMetadata::code(&e);
                            assert!(
                                is_throttle(code),
                                "get records {shard_id}: {}",
                                aws_sdk_kinesis::error::DisplayErrorContext(&e)
                            );
                            throttled += 1;
                            tokio::time::sleep(Duration::from_millis(20)).await;
                            it = Some(i);
                            continue;
                        }
                    };
                    let n = out.records().len();
                    got += n;
                    bytes += out
                        .records()
                        .iter()
                        .map(|r| r.data().as_ref().len())
                        .sum::<usize>();
                    max_batch = max_batch.max(n);
                    if n == 0 && out.millis_behind_latest() == Some(0) {
                        break;
                    }
                    it = out.next_shard_iterator().map(str::to_string);
                }
                (got, bytes, calls, max_batch, throttled)
            }));
        }
        let mut per = Vec::new();
        for t in tasks {
            per.push(t.await.expect("reader task"));
        }
        per
    });
    let wall = t0.elapsed().as_secs_f64();
    let raw = Raw {
        records: per.iter().map(|p| p.0).sum(),
        bytes: per.iter().map(|p| p.1).sum(),
        wall,
        calls: per.iter().map(|p| p.2).sum(),
        max_batch: per.iter().map(|p| p.3).max().unwrap_or(0),
        throttled: per.iter().map(|p| p.4).sum(),
        own_cpu: own_cpu() - cpu0,
        emu_cpu: emu.cpu() - emu0,
    };
    assert_eq!(
        raw.records,
        per_shard * stream.shards.len(),
        "raw read of {}",
        stream.name
    );
    raw
}

/// What a caught-up shard's GetRecords costs the emulator: `calls` calls in a row on an
/// iterator at LATEST (no records); (ms per call, kinesis-local CPU ms per call).
fn empty_polls(
    rt: &tokio::runtime::Runtime,
    client: &Client,
    stream: &Stream,
    calls: usize,
    emu: &Emulator,
) -> (f64, f64) {
    let (emu0, t0) = (emu.cpu(), Instant::now());
    rt.block_on(async {
        let mut it = client
            .get_shard_iterator()
            .stream_name(&stream.name)
            .shard_id(&stream.shards[0].0)
            .shard_iterator_type(ShardIteratorType::Latest)
            .send()
            .await
            .expect("shard iterator")
            .shard_iterator()
            .map(str::to_string);
        for _ in 0..calls {
            let Some(i) = it.take() else { break };
            let out = client
                .get_records()
                .shard_iterator(&i)
                .limit(10_000)
                .send()
                .await
                .expect("get records");
            it = out.next_shard_iterator().map(str::to_string);
        }
    });
    let n = calls as f64;
    (
        t0.elapsed().as_secs_f64() * 1e3 / n,
        (emu.cpu() - emu0) * 1e3 / n,
    )
}

/// kinesis-local's CPU (cores) over `secs` with no client of this bench.
fn emulator_idle(emu: &Emulator, secs: u64) -> f64 {
    let (e0, t0) = (emu.cpu(), Instant::now());
    std::thread::sleep(Duration::from_secs(secs));
    (emu.cpu() - e0) / t0.elapsed().as_secs_f64()
}

// ---------------------------------------------------------------------------------------------
// auditnorm run
// ---------------------------------------------------------------------------------------------

struct Files {
    config: PathBuf,
    out: PathBuf,
    dead: PathBuf,
    log: PathBuf,
}

fn write_config(dir: &Path, endpoint: &str, stream: &Stream, tag: &str) -> Files {
    let f = Files {
        config: dir.join(format!("{tag}.yaml")),
        out: dir.join(format!("{tag}-events.ndjson")),
        dead: dir.join(format!("{tag}-dead.ndjson")),
        log: dir.join(format!("{tag}.log")),
    };
    let leases = dir.join(format!("{tag}-leases.json"));
    let yaml = format!(
        r#"input:
  kinesis:
    stream: {stream}
    region: {REGION}
    endpoint: "{endpoint}"
    source: cloudtrail
    starting_position: trim_horizon
    poll_interval: {POLL_INTERVAL}
    poll_limit: 10000
    leases:
      file: "{leases}"
output:
  file: "{out}"
dead_letter:
  file: "{dead}"
pipeline:
  commit_interval: 1s
"#,
        stream = stream.name,
        leases = leases.display(),
        out = f.out.display(),
        dead = f.dead.display(),
    );
    std::fs::write(&f.config, yaml).expect("config");
    f
}

fn run_child(f: &Files) -> Child {
    Child::auditnorm(
        &["run".as_ref(), "--config".as_ref(), f.config.as_os_str()],
        &f.log,
    )
}

struct Drain {
    records: usize,
    shards: usize,
    /// Per shard, when its last event was in the output (seconds after the spawn).
    shard_done: Vec<f64>,
    /// Once caught up, auditnorm's and kinesis-local's CPU (cores) while the lanes poll.
    idle_cpu: f64,
    idle_emu: f64,
    /// Spawn to every event in the output file.
    wall: f64,
    /// Spawn to the first event line.
    first: f64,
    cpu: f64,
    rss_kib: u64,
    emu_cpu: f64,
    dead: usize,
}

impl Drain {
    fn rate(&self) -> f64 {
        self.records as f64 / self.wall.max(1e-9)
    }
    fn cpu_us(&self) -> f64 {
        self.cpu * 1e6 / self.records as f64
    }
    /// Estimated CPU seconds auditnorm spent polling shards already drained, during the
    /// drain: the idle rate per shard times the shard-seconds after each shard's last event.
    fn idle_polls_cpu(&self) -> f64 {
        let idle_shard_secs: f64 = self
            .shard_done
            .iter()
            .map(|d| (self.wall - d).max(0.0))
            .sum();
        self.idle_cpu / self.shards as f64 * idle_shard_secs
    }
}

/// The shard index of a bench event line (its `metadata.uid` is `b<shard>-...`).
fn shard_of(line: &[u8]) -> Option<usize> {
    let key = b"\"uid\":\"b";
    let at = line.windows(key.len()).position(|w| w == key)? + key.len();
    let digits = line[at..].iter().take_while(|b| b.is_ascii_digit()).count();
    if digits == 0 || line.get(at + digits) != Some(&b'-') {
        return None;
    }
    std::str::from_utf8(&line[at..at + digits])
        .ok()?
        .parse()
        .ok()
}

/// `auditnorm run` drains the stream's backlog into its output file.
fn drain(dir: &Path, endpoint: &str, stream: &Stream, records: usize, emu: &Emulator) -> Drain {
    let tag = format!("drain-{}", stream.shards.len());
    let f = write_config(dir, endpoint, stream, &tag);
    let mut tail = Tail::new(&f.out);
    let emu0 = emu.cpu();
    let t0 = Instant::now();
    let mut child = run_child(&f);
    let shards = stream.shards.len();
    let per_shard = records / shards;
    let mut counts = vec![0usize; shards];
    let mut shard_done = vec![f64::NAN; shards];
    let mut seen = 0;
    let mut first = None;
    let deadline = Instant::now() + Duration::from_secs(900);
    while seen < records {
        std::thread::sleep(Duration::from_millis(10));
        seen += tail.read(|line| {
            if let Some(s) = shard_of(line).filter(|s| *s < shards) {
                counts[s] += 1;
                if counts[s] == per_shard {
                    shard_done[s] = t0.elapsed().as_secs_f64();
                }
            }
        });
        if seen > 0 && first.is_none() {
            first = Some(t0.elapsed().as_secs_f64());
        }
        child.check_alive();
        assert!(
            Instant::now() < deadline,
            "stuck at {seen} of {records}; see {}",
            f.log.display()
        );
    }
    let wall = t0.elapsed().as_secs_f64();
    let (rss_kib, cpu) = child.usage();
    let emu_cpu = emu.cpu() - emu0;
    // Caught up: what polling every shard each poll_interval costs, on both sides.
    let idle = Duration::from_secs(3);
    let (e1, t1) = (emu.cpu(), Instant::now());
    std::thread::sleep(idle);
    let idle_secs = t1.elapsed().as_secs_f64();
    let idle_cpu = (child.usage().1 - cpu) / idle_secs;
    let idle_emu = (emu.cpu() - e1) / idle_secs;
    child.stop();
    Drain {
        records,
        shards,
        shard_done,
        idle_cpu,
        idle_emu,
        wall,
        first: first.unwrap_or(wall),
        cpu,
        rss_kib,
        emu_cpu,
        dead: count_lines(&f.dead),
    }
}

struct Replay {
    records: usize,
    wall: f64,
    cpu: f64,
    rss_kib: u64,
}

/// `auditnorm replay --output /dev/null` of an NDJSON file: the spine alone.
fn replay(dir: &Path, lines: &[String], tag: &str) -> Replay {
    let file = dir.join(format!("{tag}.ndjson"));
    {
        let mut w = std::io::BufWriter::new(std::fs::File::create(&file).expect("replay file"));
        for l in lines {
            w.write_all(l.as_bytes()).expect("write");
            w.write_all(b"\n").expect("write");
        }
        w.flush().expect("flush");
    }
    let dead = dir.join(format!("{tag}-dead.ndjson"));
    let t0 = Instant::now();
    let child = Child::auditnorm(
        &[
            "replay".as_ref(),
            "--source".as_ref(),
            "cloudtrail".as_ref(),
            "--output".as_ref(),
            "/dev/null".as_ref(),
            "--dlq".as_ref(),
            dead.as_os_str(),
            "--no-progress".as_ref(),
            file.as_os_str(),
        ],
        &dir.join(format!("{tag}.log")),
    );
    let (wall, cpu, rss_kib) = child.finish(t0);
    let dl = count_lines(&dead);
    assert_eq!(dl, 0, "replay {tag}: {dl} dead letters");
    Replay {
        records: lines.len(),
        wall,
        cpu,
        rss_kib,
    }
}

struct Latency {
    ready: f64,
    /// auditnorm's CPU seconds when the warm-up events were out: its start-up cost.
    ready_cpu: f64,
    sent: usize,
    rate: f64,
    samples: Vec<u64>,
    puts: Vec<u64>,
    cpu: f64,
    emu_cpu: f64,
    feed_secs: f64,
    rss_kib: u64,
    dead: usize,
}

fn quantile(sorted: &[u64], q: f64) -> f64 {
    sorted
        .get(((sorted.len() as f64 * q) as usize).min(sorted.len().saturating_sub(1)))
        .map_or(f64::NAN, |v| *v as f64 / 1000.0)
}

/// A feeder puts records at `rate`/s for `secs` (round robin over the shards, one PutRecords
/// call per 10 ms tick, the put time in each eventID) while auditnorm runs; latency is the
/// moment the event's line is read from the output file minus the put time.
fn latency(
    dir: &Path,
    endpoint: &str,
    stream: &Stream,
    rate: f64,
    secs: u64,
    emu: &Emulator,
) -> Latency {
    let f = write_config(dir, endpoint, stream, "latency");
    let mut tail = Tail::new(&f.out);
    let t0 = Instant::now();
    let mut child = run_child(&f);
    let templates = small_templates(templates());
    // Warm-up: one record per shard, and wait until all are out (leases taken, readers up).
    {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let c = kinesis_client(endpoint);
        rt.block_on(async {
            for (s, (id, hash)) in stream.shards.iter().enumerate() {
                let rec = record(&templates, s, &format!("warmup-{s}"));
                put(&c, &stream.name, put_entries(hash, id, [rec])).await;
            }
        });
    }
    let mut warm = 0;
    let deadline = Instant::now() + Duration::from_secs(120);
    while warm < stream.shards.len() {
        std::thread::sleep(Duration::from_millis(5));
        warm += tail.read(|_| {});
        child.check_alive();
        assert!(
            Instant::now() < deadline,
            "warm-up records not out; see {}",
            f.log.display()
        );
    }
    let ready = t0.elapsed().as_secs_f64();
    let ready_cpu = child.usage().1;

    let sent = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let feeder = {
        let (sent, done) = (sent.clone(), done.clone());
        let endpoint = endpoint.to_string();
        let name = stream.name.clone();
        let shards = stream.shards.clone();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            let c = kinesis_client(&endpoint);
            let mut puts = Vec::new();
            rt.block_on(async {
                let start = Instant::now();
                let mut n = 0usize;
                while start.elapsed() < Duration::from_secs(secs) {
                    let due = (start.elapsed().as_secs_f64() * rate) as usize;
                    if due > n {
                        let entries: Vec<PutRecordsRequestEntry> = (n..due.min(n + 500))
                            .flat_map(|i| {
                                let s = i % shards.len();
                                let (id, hash) = &shards[s];
                                put_entries(
                                    hash,
                                    id,
                                    [record(&templates, i, &bench_id(s, i, now_micros()))],
                                )
                            })
                            .collect();
                        let k = entries.len();
                        let p0 = now_micros();
                        put(&c, &name, entries).await;
                        puts.push(now_micros() - p0);
                        n += k;
                        sent.store(n, Ordering::Relaxed);
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            });
            done.store(true, Ordering::Relaxed);
            puts
        })
    };
    let (_, cpu0) = child.usage();
    let emu0 = emu.cpu();
    let f0 = Instant::now();
    let mut feed_secs = 0.0;
    let mut cpu1 = f64::NAN;
    let mut emu1 = f64::NAN;
    let mut samples: Vec<u64> = Vec::new();
    let mut done_at: Option<Instant> = None;
    loop {
        std::thread::sleep(Duration::from_millis(2));
        tail.read(|line| {
            if let Some(s) = sent_micros(line) {
                samples.push(now_micros().saturating_sub(s));
            }
        });
        child.check_alive();
        if done_at.is_none() && done.load(Ordering::Relaxed) {
            done_at = Some(Instant::now());
            feed_secs = f0.elapsed().as_secs_f64();
            cpu1 = child.usage().1;
            emu1 = emu.cpu();
        }
        if let Some(d) = done_at {
            if samples.len() >= sent.load(Ordering::Relaxed)
                || d.elapsed() > Duration::from_secs(15)
            {
                break;
            }
        }
    }
    let puts = feeder.join().expect("feeder");
    let (rss_kib, _) = child.usage();
    child.stop();
    let sent = sent.load(Ordering::Relaxed);
    samples.sort_unstable();
    let mut puts = puts;
    puts.sort_unstable();
    Latency {
        ready,
        ready_cpu,
        sent,
        rate: sent as f64 / feed_secs.max(1e-9),
        samples,
        puts,
        cpu: cpu1 - cpu0,
        emu_cpu: emu1 - emu0,
        feed_secs,
        rss_kib,
        dead: count_lines(&f.dead),
    }
}

// ---------------------------------------------------------------------------------------------
// The bench
// ---------------------------------------------------------------------------------------------

fn bench(s: &Settings) {
    let run_start = Instant::now();
    let load_start = loadavg();
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(unique("kinesis-bench"));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    let emu = Emulator::find(&s.endpoint);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let c = kinesis_client(&s.endpoint);
    let streams = Streams {
        rt: rt.handle().clone(),
        client: c.clone(),
        names: Mutex::new(Vec::new()),
    };
    let bytes = small_templates(templates())[0].len();
    let per_shard = s.records / SHARDS;
    eprintln!(
        "kinesis bench: kinesis-local at {} (pid {}), {} records of ~{bytes} B on {SHARDS} shards \
         and {per_shard} on 1 shard; scratch {}; load average {load_start}",
        s.endpoint,
        emu.pid.as_deref().unwrap_or("not found"),
        s.records,
        dir.display()
    );

    // Warm the emulator up (node's JIT: its first reads were much slower).
    {
        let w = streams.create("bench-warm", 1);
        put_backlog(&rt, &c, &w, 1000);
        for _ in 0..2 {
            raw_read(&rt, &c, &w, 1000, &emu);
        }
        streams.delete(&w);
    }

    // Backlogs: the same per-shard volume on 4 shards and on 1.
    let s4 = streams.create("bench-tp4", SHARDS);
    let (lines4, put4) = put_backlog(&rt, &c, &s4, per_shard);
    eprintln!(
        "backlog of {} put on {SHARDS} shards in {put4:.1}s ({:.0} records/s)",
        lines4.len(),
        lines4.len() as f64 / put4
    );
    let s1 = streams.create("bench-tp1", 1);
    let (lines1, put1) = put_backlog(&rt, &c, &s1, per_shard);
    eprintln!(
        "backlog of {} put on 1 shard in {put1:.1}s ({:.0} records/s)",
        lines1.len(),
        lines1.len() as f64 / put1
    );

    // 1. The emulator bound.
    let raw4 = raw_read(&rt, &c, &s4, per_shard, &emu);
    eprintln!(
        "raw GetRecords, {SHARDS} shards: {:.0} records/s",
        raw4.records as f64 / raw4.wall
    );
    let raw1 = raw_read(&rt, &c, &s1, per_shard, &emu);
    eprintln!(
        "raw GetRecords, 1 shard: {:.0} records/s",
        raw1.records as f64 / raw1.wall
    );
    let (empty_ms, empty_cpu_ms) = empty_polls(&rt, &c, &s1, 200, &emu);
    let emu_idle = emulator_idle(&emu, 2);
    let load_raw = loadavg();

    // 2. Throughput of auditnorm run on the same backlogs.
    let d4 = drain(&dir, &s.endpoint, &s4, lines4.len(), &emu);
    eprintln!("auditnorm run, {SHARDS} shards: {:.0} events/s", d4.rate());
    let load_d4 = loadavg();
    streams.delete(&s4);
    let d1 = drain(&dir, &s.endpoint, &s1, lines1.len(), &emu);
    eprintln!("auditnorm run, 1 shard: {:.0} events/s", d1.rate());
    let load_d1 = loadavg();
    streams.delete(&s1);

    // 3. The spine alone on the same records.
    let rp = replay(&dir, &lines4, "replay");
    let rp_fixed = replay(&dir, &lines4[..1], "replay-one");
    eprintln!(
        "auditnorm replay: {:.1} µs CPU per record",
        rp.cpu * 1e6 / rp.records as f64
    );
    drop(lines4);
    drop(lines1);

    // 4. Latency at a modest rate.
    let sl = streams.create("bench-lat", SHARDS);
    let lat = latency(&dir, &s.endpoint, &sl, s.lat_rate, s.lat_secs, &emu);
    let load_lat = loadavg();
    streams.delete(&sl);
    drop(streams);

    // The report.
    let us = |cpu: f64, n: usize| cpu * 1e6 / n as f64;
    let rp_us = us(rp.cpu, rp.records);
    let plural = |n: usize| if n == 1 { " " } else { "s" };
    println!();
    println!(
        "kinesis_throughput: kinesis-local 0.6.2 at {} (pid {}, RSS now {:.0} MiB), records of \
         ~{bytes} B (CloudTrail), run {:.0}s, {} cores",
        s.endpoint,
        emu.pid.as_deref().unwrap_or("not found"),
        emu.rss_mib(),
        run_start.elapsed().as_secs_f64(),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
    );
    println!(
        "  load average (1/5/15 min): start {load_start}; after raw reads {load_raw}; after \
         4-shard run {load_d4}; after 1-shard run {load_d1}; after latency {load_lat}"
    );
    println!(
        "  backlog put (PutRecords, 500 per call, one call at a time): {:.0} records/s ({SHARDS} \
         shards), {:.0} records/s (1 shard)",
        s.records as f64 / put4,
        per_shard as f64 / put1
    );
    println!(
        "  1. emulator bound: raw GetRecords (limit 10000) from TRIM_HORIZON, one task per shard, \
         records only counted"
    );
    for (n, r) in [(SHARDS, &raw4), (1, &raw1)] {
        println!(
            "     {n} shard{}: {:>6} records in {:>5.2}s = {:>6.0} records/s, {:>6.0} per shard \
             ({:.1} MB/s); GetRecords calls: {}, up to {} records each, {} throttled",
            plural(n),
            r.records,
            r.wall,
            r.records as f64 / r.wall,
            r.records as f64 / r.wall / n as f64,
            r.bytes as f64 / r.wall / 1e6,
            r.calls,
            r.max_batch,
            r.throttled,
        );
        println!(
            "              kinesis-local CPU {:.2}s ({:.0}% of a core, {:.0} µs/record); the \
             reader's own CPU (AWS SDK: HTTP, JSON, base64) {:.1} µs/record",
            r.emu_cpu,
            100.0 * r.emu_cpu / r.wall,
            us(r.emu_cpu, r.records),
            us(r.own_cpu, r.records),
        );
    }
    println!(
        "     kinesis-local with no client: {:.0}% of a core; an empty GetRecords (caught-up \
         shard) takes {:.2} ms and {:.2} ms of its CPU, so polling a shard every \
         {POLL_INTERVAL} costs it ~{:.0}% of a core",
        100.0 * emu_idle,
        empty_ms,
        empty_cpu_ms,
        100.0 * empty_cpu_ms / 10.0,
    );
    println!(
        "  2. throughput: auditnorm run (poll_interval {POLL_INTERVAL}, poll_limit 10000, file \
         leases, file output) draining the same backlog"
    );
    for d in [&d4, &d1] {
        let raw = if d.shards == 1 { &raw1 } else { &raw4 };
        let mut done: Vec<String> = d.shard_done.iter().map(|t| format!("{t:.1}")).collect();
        done.sort_by(|a, b| {
            a.parse::<f64>()
                .unwrap_or(0.0)
                .total_cmp(&b.parse().unwrap_or(0.0))
        });
        println!(
            "     {} shard{}: {:>6} events in {:>5.2}s from spawn = {:>6.0} events/s, {:>6.0} per \
             shard ({:.0}% of the raw reader's rate); first event at {:.2}s, shards complete at \
             [{}]s",
            d.shards,
            plural(d.shards),
            d.records,
            d.wall,
            d.rate(),
            d.rate() / d.shards as f64,
            100.0 * d.rate() / (raw.records as f64 / raw.wall),
            d.first,
            done.join(", "),
        );
        println!(
            "              auditnorm CPU {:.2}s, peak RSS {:.1} MiB; kinesis-local CPU {:.2}s \
             ({:.0}% of a core); dead letters {}; caught up afterwards (polling): auditnorm \
             {:.1}% of a core, kinesis-local {:.0}%",
            d.cpu,
            d.rss_kib as f64 / 1024.0,
            d.emu_cpu,
            100.0 * d.emu_cpu / d.wall,
            d.dead,
            100.0 * d.idle_cpu,
            100.0 * d.idle_emu,
        );
    }
    println!(
        "  3. CPU per record vs the spine: auditnorm replay --source cloudtrail --output /dev/null \
         of the same {} records",
        rp.records
    );
    println!(
        "     replay: {:.2}s wall, CPU {:.2}s = {:.1} µs/record, peak RSS {:.1} MiB (a 1-record \
         replay costs {:.0} ms CPU)",
        rp.wall,
        rp.cpu,
        rp_us,
        rp.rss_kib as f64 / 1024.0,
        rp_fixed.cpu * 1e3,
    );
    for d in [&d4, &d1] {
        let idle = d.idle_polls_cpu();
        let net = us(d.cpu - lat.ready_cpu - idle, d.records);
        println!(
            "     run from Kinesis, {} shard{}: {:.1} µs/record all in; less start-up ({:.0} ms) \
             and polls of drained shards (~{:.0} ms): {:.1} µs/record = replay {:.1} + {:.1} µs \
             (GetRecords decoding in the AWS SDK, lanes, checkpoints, file output)",
            d.shards,
            plural(d.shards),
            d.cpu_us(),
            lat.ready_cpu * 1e3,
            idle * 1e3,
            net,
            rp_us,
            net - rp_us,
        );
    }
    println!(
        "     for scale: the raw reader's AWS SDK decoding alone was {:.1} µs/record ({SHARDS} \
         shards) and {:.1} (1 shard), in this process; CPU times are in 10 ms ticks",
        us(raw4.own_cpu, raw4.records),
        us(raw1.own_cpu, raw1.records)
    );
    let l = &lat.samples;
    println!(
        "  4. end-to-end latency: feeder at {:.0} records/s for {:.0}s on {SHARDS} shards (put \
         time in the eventID -> line read from the output file, polled every 2 ms)",
        lat.rate, lat.feed_secs
    );
    println!(
        "     p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms, max {:.1} ms ({} of {} events seen; \
         dead letters {}); run ready (warm-up events out) {:.2}s after spawn",
        quantile(l, 0.50),
        quantile(l, 0.90),
        quantile(l, 0.99),
        l.last().map_or(f64::NAN, |v| *v as f64 / 1000.0),
        l.len(),
        lat.sent,
        lat.dead,
        lat.ready,
    );
    println!(
        "     included: the PutRecords call (p50 {:.1} ms, p99 {:.1} ms), poll_interval \
         {POLL_INTERVAL} (up to 10 ms), the file output's flush on the lanes' 100 ms checkpoint \
         tick (up to 100 ms)",
        quantile(&lat.puts, 0.50),
        quantile(&lat.puts, 0.99),
    );
    println!(
        "     while feeding: auditnorm CPU {:.0}% of a core, peak RSS {:.1} MiB; kinesis-local \
         CPU {:.0}% of a core",
        100.0 * lat.cpu / lat.feed_secs.max(1e-9),
        lat.rss_kib as f64 / 1024.0,
        100.0 * lat.emu_cpu / lat.feed_secs.max(1e-9),
    );
    println!(
        "  kinesis-local (one node process) serves every call here and shares the cores with \
         auditnorm: rates are bounded by it (see 1), not by auditnorm"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
