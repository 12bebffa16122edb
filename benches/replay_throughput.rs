//! `cargo bench --bench replay_throughput`: generates corpora from the fixtures and prints, in
//! one run, events/s and CPU time of `auditnorm replay` (the library path the CLI runs) next to
//! the floor: parsing each line with simd-json and serializing it back, no mapping at all.
//!
//! Env: AUDITNORM_BENCH_RECORDS (default 200000), AUDITNORM_BENCH_SOURCES (default
//! "cloudtrail,gcp,azure,k8s"), AUDITNORM_BENCH_ROUNDS (default 3). Throughput is per core:
//! the replay is single-threaded and CPU time is the thread's own (/proc/thread-self/schedstat),
//! so a noisy neighbour inflates wall time but not the per-core figure. What a neighbour still
//! costs (shared caches, a busy sibling thread) only ever adds time: each figure is the fastest
//! of the rounds, which run the floor and both replays in turn, so that a slow stretch of the
//! machine does not fall on one of them only.

use auditnorm::mapping::Mappings;
use auditnorm::replay::{self, ReplayOptions};
use auditnorm::sink::file::Target;
use std::io::{BufRead, BufWriter, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

#[path = "corpus.rs"]
mod corpus;

fn thread_cpu_ns() -> u64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|x| x.parse().ok()))
        .unwrap_or(0)
}

struct Run {
    records: u64,
    wall: f64,
    cpu: f64,
}

impl Run {
    fn per_core(&self) -> f64 {
        self.records as f64 / self.cpu.max(1e-9)
    }
}

/// The faster of two runs of the same thing.
fn fastest(best: Option<Run>, run: Run) -> Option<Run> {
    match best {
        Some(b) if b.cpu <= run.cpu => Some(b),
        _ => Some(run),
    }
}

fn measure(f: impl FnOnce() -> u64) -> Run {
    let (c0, t0) = (thread_cpu_ns(), Instant::now());
    let records = f();
    Run {
        records,
        wall: t0.elapsed().as_secs_f64(),
        cpu: (thread_cpu_ns() - c0) as f64 / 1e9,
    }
}

fn floor(path: &PathBuf) -> u64 {
    let f = std::io::BufReader::with_capacity(256 * 1024, std::fs::File::open(path).unwrap());
    let mut out = BufWriter::with_capacity(1 << 20, std::fs::File::create("/dev/null").unwrap());
    let mut n = 0;
    let mut buf = Vec::new();
    let mut ser = Vec::new();
    for line in f.split(b'\n') {
        let line = line.unwrap();
        if line.is_empty() {
            continue;
        }
        buf.clear();
        buf.extend_from_slice(&line);
        let v = simd_json::to_borrowed_value(&mut buf).expect("corpus is JSON");
        ser.clear();
        simd_json::prelude::Writable::write(&v, &mut ser).unwrap();
        out.write_all(&ser).unwrap();
        out.write_all(b"\n").unwrap();
        n += 1;
    }
    out.flush().unwrap();
    n
}

fn main() {
    // `cargo bench` passes --bench; nothing to parse.
    let n: usize = std::env::var("AUDITNORM_BENCH_RECORDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(200_000);
    let sources = std::env::var("AUDITNORM_BENCH_SOURCES")
        .unwrap_or_else(|_| "cloudtrail,gcp,azure,k8s".into());
    let rounds: usize = std::env::var("AUDITNORM_BENCH_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3)
        .max(1);
    let dir = PathBuf::from("target/bench");
    std::fs::create_dir_all(&dir).unwrap();
    let mappings = Arc::new(Mappings::load(None).expect("tables"));
    println!(
        "{:<11} {:>8} {:>7} | {:>13} {:>8} | {:>13} {:>8} | {:>13} {:>8} {:>7} | {:>6}",
        "source",
        "records",
        "mean B",
        "floor ev/s/c",
        "cpu s",
        "no-redact",
        "cpu s",
        "replay ev/s/c",
        "cpu s",
        "redact",
        "ratio"
    );
    for source in sources.split(',') {
        let (lines, mean) = match source {
            "cloudtrail" => corpus::cloudtrail_lines(n),
            other => corpus::source_lines(&format!("tests/fixtures/{other}"), n),
        };
        let path = dir.join(format!("{source}.ndjson"));
        std::fs::write(&path, lines.join("\n") + "\n").unwrap();
        drop(lines);
        // Warm the page cache and the allocator once.
        floor(&path);
        let dlq = dir.join(format!("{source}.dlq.ndjson"));
        let opts = |redact: bool| ReplayOptions {
            paths: vec![path.display().to_string()],
            source: None,
            output: Target::File("/dev/null".into()),
            dlq: Target::File(dlq.clone()),
            progress: false,
            redactor: redact.then(auditnorm::redact::Redactor::builtin),
            keep_raw_dead_letters: false,
        };
        let (mut fl, mut plain, mut red) = (None, None, None);
        let mut dead = 0;
        for _ in 0..rounds {
            fl = fastest(fl, measure(|| floor(&path)));
            for (redact, best) in [(false, &mut plain), (true, &mut red)] {
                let opts = opts(redact);
                let run = measure(|| {
                    let s = replay::run(&opts, mappings.clone()).expect("replay");
                    dead = s.dead_letters;
                    s.records()
                });
                *best = fastest(best.take(), run);
            }
        }
        let (fl, plain, red) = (
            fl.expect("a round"),
            plain.expect("a round"),
            red.expect("a round"),
        );
        println!(
            "{:<11} {:>8} {:>7} | {:>13.0} {:>8.3} | {:>13.0} {:>8.3} | {:>13.0} {:>8.3} {:>+6.1}% | {:>5.2}x{}",
            source,
            red.records,
            mean,
            fl.per_core(),
            fl.cpu,
            plain.per_core(),
            plain.cpu,
            red.per_core(),
            red.cpu,
            (red.cpu / plain.cpu - 1.0) * 100.0,
            fl.per_core() / red.per_core(),
            if dead > 0 {
                format!("  ({dead} dead letters, see {})", dlq.display())
            } else {
                String::new()
            }
        );
        let _ = (fl.wall, plain.wall, red.wall);
    }
    println!("each figure: the fastest of {rounds} rounds");
    println!("target: replay >= 300000 ev/s per core, within 1.5x of the floor");
}
