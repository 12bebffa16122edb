//! `auditnorm replay`: archived files in, OCSF events and dead letters out, one lane per input
//! file, files in sorted order so that a replay is deterministic.

use crate::dlq::DeadLetter;
use crate::error::RecordError;
use crate::mapping::Mappings;
use crate::normalize::{Emit, EventInfo, Normalizer};
use crate::record::{Position, SourceKind};
use crate::sink::file::{LineSink, SinkError, Target};
use crate::source::file::{self, InputFile, SourceError, UnitSink};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error(transparent)]
    Sink(#[from] SinkError),
}

pub struct ReplayOptions {
    pub paths: Vec<String>,
    pub source: Option<SourceKind>,
    pub output: Target,
    pub dlq: Target,
    pub progress: bool,
    /// The redaction rules; `None` turns redaction off.
    pub redactor: Option<crate::redact::Redactor>,
    pub keep_raw_dead_letters: bool,
}

#[derive(Debug, Default, Clone)]
pub struct Summary {
    pub files: u64,
    pub units: u64,
    pub events: u64,
    pub dead_letters: u64,
    pub skipped: u64,
    pub elapsed: Duration,
    /// Secrets removed, by redaction rule.
    pub redactions: Vec<(String, u64)>,
}

impl Summary {
    pub fn records(&self) -> u64 {
        self.events + self.dead_letters
    }
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let secs = self.elapsed.as_secs_f64();
        let rate = if secs > 0.0 {
            self.records() as f64 / secs
        } else {
            0.0
        };
        write!(
            f,
            "replayed {} files: {} records -> {} events, {} dead letters, {} skipped units in {:.3}s ({:.0} records/s)",
            self.files,
            self.records(),
            self.events,
            self.dead_letters,
            self.skipped,
            secs,
            rate
        )?;
        if !self.redactions.is_empty() {
            let total: u64 = self.redactions.iter().map(|(_, n)| n).sum();
            let rules: Vec<String> = self
                .redactions
                .iter()
                .map(|(r, n)| format!("{r}={n}"))
                .collect();
            write!(f, "; redacted {total} secrets ({})", rules.join(", "))?;
        }
        Ok(())
    }
}

struct Lane<'a> {
    out: &'a mut LineSink,
    dlq: &'a mut LineSink,
    summary: &'a mut Summary,
    failed: Option<SinkError>,
    progress: Option<&'a indicatif::ProgressBar>,
    file_base: u64,
}

impl Emit for Lane<'_> {
    fn event(&mut self, json: &[u8], _info: EventInfo<'_>) {
        self.summary.events += 1;
        if self.failed.is_none() {
            self.failed = self.out.write_line(json).err();
        }
    }

    fn dead_letter(&mut self, dl: DeadLetter) {
        self.summary.dead_letters += 1;
        if self.failed.is_none() {
            self.failed = self.dlq.write_line(&dl.to_json()).err();
        }
    }

    fn skipped(&mut self, position: &Position, reason: &str) {
        self.summary.skipped += 1;
        eprintln!("notice: {position}: skipped: {reason}");
    }
}

/// The file reader hands units to the lane; the lane normalizes them in order.
struct LaneUnits<'a, 'b> {
    normalizer: &'a mut Normalizer,
    lane: &'a mut Lane<'b>,
}

impl UnitSink for LaneUnits<'_, '_> {
    fn unit(&mut self, bytes: &[u8], pos: Position) {
        self.lane.summary.units += 1;
        self.normalizer.normalize(bytes, &pos, self.lane);
    }

    fn broken(&mut self, error: RecordError, bytes: &[u8], pos: Position) {
        self.lane.summary.units += 1;
        // Through the normalizer, so that the bytes are redacted like every dead letter.
        self.normalizer
            .dead_letter(DeadLetter::new(error, pos, None, bytes), self.lane);
    }

    fn progress(&mut self, bytes: u64) {
        if let Some(p) = self.lane.progress {
            p.set_position(self.lane.file_base + bytes);
        }
    }
}

pub fn run(opts: &ReplayOptions, mappings: Arc<Mappings>) -> Result<Summary, ReplayError> {
    let start = Instant::now();
    let files = file::expand(&opts.paths)?;
    let mut out = LineSink::open(opts.output.clone())?;
    let mut dlq = LineSink::open(opts.dlq.clone())?;
    let mut normalizer = Normalizer::new(mappings, opts.source)
        .with_redactor(opts.redactor.clone())
        .keep_raw_dead_letters(opts.keep_raw_dead_letters);
    let mut summary = Summary::default();
    let sizes: Vec<u64> = files
        .iter()
        .map(|f| match f {
            InputFile::Path(p) => std::fs::metadata(p).map(|m| m.len()).unwrap_or(0),
            InputFile::Stdin => 0,
        })
        .collect();
    let bar = opts.progress.then(|| {
        let b = indicatif::ProgressBar::new(sizes.iter().sum());
        b.set_style(
            indicatif::ProgressStyle::with_template(
                "{bar:40} {bytes}/{total_bytes} {bytes_per_sec} eta {eta} {msg}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        b
    });
    let mut base = 0u64;
    for (f, size) in files.iter().zip(&sizes) {
        summary.files += 1;
        let mut lane = Lane {
            out: &mut out,
            dlq: &mut dlq,
            summary: &mut summary,
            failed: None,
            progress: bar.as_ref(),
            file_base: base,
        };
        let units = file::read(
            f,
            &mut LaneUnits {
                normalizer: &mut normalizer,
                lane: &mut lane,
            },
        )?;
        if let Some(e) = lane.failed.take() {
            return Err(e.into());
        }
        if units == 0 {
            eprintln!("notice: {}: empty, no records", f.name());
        }
        base += size;
        if let Some(b) = &bar {
            b.set_position(base);
        }
    }
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    out.flush()?;
    dlq.flush()?;
    summary.elapsed = start.elapsed();
    summary.redactions = normalizer
        .redaction_counts()
        .iter()
        .map(|(rule, n)| (rule.to_string(), n))
        .collect();
    Ok(summary)
}
