//! Criterion bench of the normalize step alone (parse, map, validate, encode) on CloudTrail
//! records of ~1.1 KB, the unit the per-core throughput target is about.

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
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
