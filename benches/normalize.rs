//! Criterion bench of the normalize step alone (parse, map, validate, encode) on CloudTrail
//! records of ~1.1 KB, the unit the per-core throughput target is about; and the same records
//! in KPL aggregates, for the cost of de-aggregation per record.

use auditnorm::mapping::Mappings;
use auditnorm::normalize::{Emit, EventInfo, Normalizer};
use auditnorm::record::Position;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use std::sync::Arc;

#[path = "corpus.rs"]
mod corpus;

struct Count(u64);

impl Emit for Count {
    fn event(&mut self, json: &[u8], _info: EventInfo<'_>) {
        self.0 += json.len() as u64;
    }
    fn dead_letter(&mut self, dl: auditnorm::dlq::DeadLetter) {
        panic!("bench corpus gave a dead letter: {}", dl.detail);
    }
    fn skipped(&mut self, _: &Position, _: &str) {}
}

fn bench(c: &mut Criterion) {
    let (lines, _) = corpus::cloudtrail_lines(1000);
    let mappings = Arc::new(Mappings::load(None).expect("tables"));
    let mut n = Normalizer::new(mappings, None);
    let pos = Position::File {
        path: "bench".into(),
        line: Some(1),
        offset: 0,
        index: None,
    };
    let mut g = c.benchmark_group("normalize");
    g.throughput(Throughput::Elements(lines.len() as u64));
    g.bench_function("cloudtrail_1k_records", |b| {
        b.iter(|| {
            let mut sink = Count(0);
            for l in &lines {
                n.normalize(l.as_bytes(), &pos, &mut sink);
            }
            sink.0
        })
    });
    // The same records in KPL aggregates of 50 (about 55 KB each, as a KPL producer packs
    // them), at a Kinesis position: the de-aggregation cost per record on top of the above.
    let refs: Vec<&[u8]> = lines.iter().map(|l| l.as_bytes()).collect();
    let aggregates: Vec<Vec<u8>> = refs
        .chunks(50)
        .enumerate()
        .map(|(n, chunk)| {
            let keys: Vec<String> = (0..chunk.len()).map(|i| format!("k{n}-{i}")).collect();
            let pairs: Vec<(&str, &[u8])> = keys
                .iter()
                .map(String::as_str)
                .zip(chunk.iter().copied())
                .collect();
            auditnorm::kinesis::kpl::aggregate(&pairs)
        })
        .collect();
    let kpos = Position::Kinesis {
        stream: "bench".into(),
        shard: "shardId-000000000000".into(),
        sequence: "49654120731196893497375389437254946352346789012345678962".into(),
        index: None,
    };
    g.bench_function("cloudtrail_1k_records_kpl_aggregated_by_50", |b| {
        b.iter(|| {
            let mut sink = Count(0);
            for a in &aggregates {
                n.normalize(a, &kpos, &mut sink);
            }
            sink.0
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
