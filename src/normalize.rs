//! One unit of input (a line, a file, a Kafka message) in, OCSF events and dead letters out.
//!
//! Pure and synchronous: parse (simd-json, on a private copy so the original bytes stay intact
//! for the dead-letter queue), unwrap the carrier, pick the table, map, validate, encode. Every
//! record ends as exactly one call to `Emit::event` or `Emit::dead_letter`.

use crate::dlq::DeadLetter;
use crate::envelope::{self, Carriers, Item};
use crate::error::{ErrorCode, RecordError, Stage};
use crate::event::{CleanCache, Redact};
use crate::json::Src;
use crate::kinesis::kpl;
use crate::mapping::{Input, Mappings, Scratch};
use crate::record::{Position, SourceKind};
use crate::redact::{RedactionCounts, Redactor};
use std::sync::Arc;

/// What a normalized event is, for sinks, metrics and logs (never its content).
#[derive(Debug, Clone, Copy)]
pub struct EventInfo<'a> {
    pub source: SourceKind,
    pub class_uid: i64,
    pub position: &'a Position,
    /// The source record the event was made from (for tests and diagnostics, not for output).
    pub record: Src<'a, 'a>,
}

/// Receives the results of normalizing one unit, in input order.
pub trait Emit {
    fn event(&mut self, json: &[u8], info: EventInfo<'_>);
    fn dead_letter(&mut self, dl: DeadLetter);
    /// A unit that holds no records on purpose (a digest file, a control message).
    fn skipped(&mut self, position: &Position, reason: &str);
}

/// Carriers nest (Pub/Sub inside a push envelope, JSON strings inside CloudWatch events); a
/// bound keeps a hostile input from recursing forever.
const MAX_DEPTH: usize = 4;

pub struct Normalizer {
    mappings: Arc<Mappings>,
    forced: Option<SourceKind>,
    scratch: Scratch,
    out: Vec<u8>,
    /// Parse buffers by carrier depth: the unit's own at 0, then those of carriers inside it
    /// (a CloudWatch or AKS record's JSON string, a gzip payload), reused from one unit to the
    /// next instead of allocated for every nested record. A unit takes its level out (None
    /// while in use: an empty `Level` would allocate simd-json buffers; boxed, so that taking
    /// it out moves a pointer).
    levels: Vec<Option<Box<Level>>>,
    redaction: Redaction,
}

/// A document's copy (parsed in place), simd-json's buffers and the tape and item list.
#[derive(Default)]
struct Level {
    work: Vec<u8>,
    buffers: simd_json::Buffers,
    bufs: Bufs,
}

/// `bytes` copied into `work` followed by the padding simd-json reads past a document's end,
/// so that it parses the copy in place instead of copying it once more.
fn fill_padded(work: &mut Vec<u8>, bytes: &[u8]) {
    work.clear();
    work.reserve(bytes.len() + simd_json::INPUT_PADDING);
    work.extend_from_slice(bytes);
    work.resize(bytes.len() + simd_json::INPUT_PADDING, 0);
}

/// Allocations kept from one unit to the next (a tape and the item list borrow the unit's
/// bytes, so they are stored empty and re-lifetimed for each unit).
#[derive(Default)]
struct Bufs {
    tape: Option<simd_json::Tape<'static>>,
    items: Vec<Item<'static, 'static>>,
}

/// Reuses an empty vector's allocation for items of another lifetime.
fn recycle_items<'a, 'b>(v: Vec<Item<'a, 'a>>) -> Vec<Item<'b, 'b>> {
    debug_assert!(v.is_empty());
    v.into_iter()
        .map(|_| Item::Skipped { reason: "" })
        .collect()
}

struct Parts<'a> {
    mappings: &'a Mappings,
    forced: Option<SourceKind>,
    scratch: &'a mut Scratch,
    out: &'a mut Vec<u8>,
    redaction: &'a mut Redaction,
    levels: &'a mut Vec<Option<Box<Level>>>,
    /// Set while normalizing one user record of a KPL aggregate.
    sub: Option<SubRecord>,
}

/// Where a KPL user record's items are. `Position` has one index: inside an aggregate it is
/// the user record's index, for every event, dead letter and skip that comes from it (so a
/// dead letter always points at the sub-record whose bytes it holds). When the user record is
/// itself a carrier of many records (a CloudWatch Logs payload, `{"Records":[..]}`), the
/// element indexes, outermost first, go into the dead letter's detail instead:
/// `KPL sub-record 2, element [5]: ...`. Events need no more: `metadata.uid` names them.
struct SubRecord {
    index: u32,
    /// The carrier element indexes of the item being handled, outermost first.
    elements: Vec<u32>,
}

impl SubRecord {
    fn describe(&self, detail: &str) -> String {
        use std::fmt::Write;
        let mut s = format!("KPL sub-record {}", self.index);
        if !self.elements.is_empty() {
            s.push_str(", element ");
            for e in &self.elements {
                let _ = write!(s, "[{e}]");
            }
        }
        s.push_str(": ");
        s.push_str(detail);
        s
    }
}

/// The redaction stage's state for one lane: the rules, whether dead letters keep their raw
/// bytes, and how many secrets each rule removed.
pub struct Redaction {
    redactor: Option<Redactor>,
    keep_raw_dead_letters: bool,
    counts: RedactionCounts,
    clean: CleanCache,
}

impl Redaction {
    /// Redacts a dead letter's original bytes (unless raw dead letters were asked for).
    fn dead_letter(&mut self, mut dl: DeadLetter) -> DeadLetter {
        let Some(r) = self
            .redactor
            .as_ref()
            .filter(|_| !self.keep_raw_dead_letters)
        else {
            return dl;
        };
        let raw = dl.original_bytes();
        let mut counts = RedactionCounts::default();
        let cleaned = r.redact_bytes(&raw, &mut counts);
        if counts.is_empty() {
            return dl;
        }
        self.counts.merge(&counts);
        dl.set_redacted_original(&cleaned);
        dl
    }
}

impl Normalizer {
    /// `forced`: map every record with this source's table (`--source`), else detect.
    pub fn new(mappings: Arc<Mappings>, forced: Option<SourceKind>) -> Normalizer {
        Normalizer {
            mappings,
            forced,
            scratch: Scratch::default(),
            out: Vec::with_capacity(4096),
            levels: Vec::new(),
            redaction: Redaction {
                redactor: Some(Redactor::builtin()),
                keep_raw_dead_letters: false,
                counts: RedactionCounts::default(),
                clean: CleanCache::default(),
            },
        }
    }

    /// Replaces the redaction rules; `None` turns redaction off (tests of the mapping alone).
    pub fn with_redactor(mut self, redactor: Option<Redactor>) -> Normalizer {
        self.redaction.redactor = redactor;
        self
    }

    /// Keeps dead letters' original bytes unredacted, for a locked-down dead-letter queue.
    pub fn keep_raw_dead_letters(mut self, keep: bool) -> Normalizer {
        self.redaction.keep_raw_dead_letters = keep;
        self
    }

    /// Secrets removed so far, by rule (for metrics and the replay summary).
    pub fn redaction_counts(&self) -> &RedactionCounts {
        &self.redaction.counts
    }

    /// A dead letter made outside normalization (a truncated file), redacted like the rest.
    pub fn dead_letter(&mut self, dl: DeadLetter, emit: &mut dyn Emit) {
        emit.dead_letter(self.redaction.dead_letter(dl));
    }

    pub fn normalize(&mut self, bytes: &[u8], pos: &Position, emit: &mut dyn Emit) {
        // A plain unit pays one 4-byte prefix compare for KPL support.
        if kpl::is_aggregated(bytes) {
            return self.kpl_aggregate(bytes, pos, emit);
        }
        self.one(bytes, pos, None, emit);
    }

    /// A KPL aggregated record: each user record is normalized as if it were its own unit, in
    /// order, at the unit's position with the user record's index.
    ///
    /// An aggregate that cannot be split is one dead letter (`kpl_invalid`, stage decode) with
    /// the whole unit's bytes. That includes a digest mismatch, which KCL treats as "not an
    /// aggregate, a plain record": we follow KCL in treating it as one plain record at the
    /// unit's position, but a plain record that starts with the magic can never be mapped (F3
    /// 89 9A C2 is not UTF-8, so neither JSON nor gzip), and the plain path would always end in
    /// `invalid_json`. We emit that same single dead letter directly, with the code that
    /// names the likely cause (a damaged or truncated aggregate) and both digests in the detail.
    /// An aggregate with no user records (which KCL would pass on as a plain record of 20
    /// bytes) is skipped: it holds no records on purpose.
    fn kpl_aggregate(&mut self, bytes: &[u8], pos: &Position, emit: &mut dyn Emit) {
        match kpl::deaggregate(bytes) {
            Ok(agg) if agg.records.is_empty() => {
                emit.skipped(pos, "empty KPL aggregate (holds no user records)")
            }
            Ok(agg) => {
                for (i, r) in agg.records.iter().enumerate() {
                    // A Kinesis record (at most 10 MiB) cannot hold 2^32 user records.
                    let i = u32::try_from(i).unwrap_or(u32::MAX);
                    self.one(r.data, &pos.with_index(i), Some(i), emit);
                }
            }
            Err(e) => {
                let detail = match e {
                    kpl::KplError::DigestMismatch { .. } => {
                        format!("{e}; as KCL does, read as one plain record, which is not JSON")
                    }
                    _ => e.to_string(),
                };
                let err = RecordError::new(ErrorCode::KplInvalid, Stage::Decode, detail);
                self.dead_letter(DeadLetter::new(err, pos.clone(), None, bytes), emit);
            }
        }
    }

    /// One unit, or one user record of a KPL aggregate (`sub`: its index).
    fn one(&mut self, bytes: &[u8], pos: &Position, sub: Option<u32>, emit: &mut dyn Emit) {
        let Normalizer {
            mappings,
            forced,
            scratch,
            out,
            levels,
            redaction,
        } = self;
        let mut parts = Parts {
            mappings,
            forced: *forced,
            scratch,
            out,
            redaction,
            levels,
            sub: sub.map(|index| SubRecord {
                index,
                elements: Vec::new(),
            }),
        };
        parts.unit(bytes, pos, None, Carriers::default(), 0, emit);
    }
}

/// Decompressed payloads larger than this are refused: a gzip bomb must not take the lane down.
const MAX_GUNZIP: u64 = 256 * 1024 * 1024;

/// What a reader of a dead letter needs from a parse error: where it failed and on what.
/// simd-json names a document that does not begin like JSON an internal error, which would
/// send a reader looking for a bug in auditnorm; it is a syntax error in the input.
fn json_error_detail(e: &simd_json::Error) -> String {
    match (e.error(), e.character()) {
        (simd_json::ErrorType::InternalError, Some(c)) => {
            format!("not valid JSON: syntax error at byte {} ({c:?})", e.index())
        }
        _ => format!("not valid JSON: {e}"),
    }
}

fn gunzip(bytes: &[u8]) -> Result<Vec<u8>, String> {
    use std::io::Read;
    let mut out = Vec::with_capacity(bytes.len() * 4);
    let mut d = flate2::read::MultiGzDecoder::new(bytes).take(MAX_GUNZIP + 1);
    d.read_to_end(&mut out)
        .map_err(|e| format!("gzip payload is truncated or corrupt: {e}"))?;
    if out.len() as u64 > MAX_GUNZIP {
        return Err(format!("gzip payload expands beyond {MAX_GUNZIP} bytes"));
    }
    Ok(out)
}

/// A short, content-free description of an unrecognised record: its top-level keys.
fn describe(v: Src<'_, '_>) -> String {
    if !v.is_object() {
        return v.type_phrase().to_string();
    }
    let keys: Vec<&str> = v.members().map(|(k, _)| k).take(12).collect();
    let more = if v.len() > 12 { ", ..." } else { "" };
    format!("an object with keys [{}{more}]", keys.join(", "))
}

/// The exact JSON of a parsed value (nulls kept), for dead letters of one record in a batch.
pub fn original_of(v: Src<'_, '_>) -> Vec<u8> {
    let mut b = Vec::new();
    write_exact(&mut b, v);
    b
}

fn write_exact(out: &mut Vec<u8>, v: Src<'_, '_>) {
    use crate::json;
    if let Some(s) = v.as_str() {
        json::write_str(out, s);
    } else if let Some(st) = v.as_static() {
        json::write_static(out, st);
    } else if v.is_array() {
        out.push(b'[');
        for (n, x) in v.elements().enumerate() {
            if n > 0 {
                out.push(b',');
            }
            write_exact(out, x);
        }
        out.push(b']');
    } else {
        out.push(b'{');
        for (n, (k, x)) in v.members().enumerate() {
            if n > 0 {
                out.push(b',');
            }
            json::write_str(out, k);
            out.push(b':');
            write_exact(out, x);
        }
        out.push(b'}');
    }
}

impl Parts<'_> {
    /// One unit (or a carrier's payload, at `depth` > 0) through the parse buffers of its
    /// depth, taken out of the pool for its duration.
    fn unit(
        &mut self,
        original: &[u8],
        pos: &Position,
        outer_hint: Option<SourceKind>,
        outer: Carriers<'_, '_>,
        depth: usize,
        emit: &mut dyn Emit,
    ) {
        if self.levels.len() <= depth {
            self.levels.resize_with(depth + 1, || None);
        }
        let mut level = self.levels[depth].take().unwrap_or_default();
        fill_padded(&mut level.work, original);
        self.parse_unit(original, &mut level, pos, outer_hint, outer, depth, emit);
        self.levels[depth] = Some(level);
    }

    /// `level.work`: the unit's bytes followed by `simd_json::INPUT_PADDING` bytes.
    #[allow(clippy::too_many_arguments)]
    fn parse_unit<'t, 'i>(
        &mut self,
        original: &[u8],
        level: &mut Level,
        pos: &Position,
        outer_hint: Option<SourceKind>,
        outer: Carriers<'t, 'i>,
        depth: usize,
        emit: &mut dyn Emit,
    ) {
        if original.starts_with(&[0x1f, 0x8b]) && depth < MAX_DEPTH {
            // A gzip body (CloudWatch Logs subscription payloads on Kinesis or Kafka).
            match gunzip(original) {
                Ok(plain) => {
                    return self.unit(&plain, pos, outer_hint, outer, depth + 1, emit);
                }
                Err(detail) => {
                    let err = RecordError::new(ErrorCode::TruncatedGzip, Stage::Decode, detail);
                    self.dead(
                        emit,
                        DeadLetter::new(err, pos.clone(), outer_hint, original),
                    );
                    return;
                }
            }
        }
        let Level {
            work,
            buffers,
            bufs,
        } = level;
        let mut tape = match bufs.tape.take() {
            Some(t) => t.reset(),
            None => simd_json::Tape::null().reset(),
        };
        let len = work.len() - simd_json::INPUT_PADDING;
        if let Err(e) = simd_json::fill_tape_padded(work, len, buffers, &mut tape) {
            bufs.tape = Some(tape.reset());
            let err =
                RecordError::new(ErrorCode::InvalidJson, Stage::Decode, json_error_detail(&e));
            self.dead(
                emit,
                DeadLetter::new(err, pos.clone(), outer_hint, original),
            );
            return;
        }
        let root = Src::root(&tape);
        let mut items = recycle_items(std::mem::take(&mut bufs.items));
        envelope::unwrap(root, &mut items);
        for item in items.drain(..) {
            let entered = self.enter(item.index());
            match item {
                Item::Record {
                    record,
                    carriers,
                    hint,
                    index,
                } => {
                    let p = self.at(pos, index);
                    let whole = (index.is_none() && carriers.is_empty()).then_some(original);
                    self.record(
                        record,
                        carriers.or(outer),
                        hint.or(outer_hint),
                        &p,
                        whole,
                        emit,
                    );
                }
                Item::Nested {
                    bytes,
                    carriers,
                    hint,
                    index,
                } => {
                    let p = self.at(pos, index);
                    if depth >= MAX_DEPTH {
                        let err = RecordError::new(
                            ErrorCode::BadPayload,
                            Stage::Envelope,
                            format!("carriers nested deeper than {MAX_DEPTH} levels"),
                        );
                        self.dead(emit, DeadLetter::new(err, p, hint, &bytes));
                    } else {
                        self.unit(
                            &bytes,
                            &p,
                            hint.or(outer_hint),
                            carriers.or(outer),
                            depth + 1,
                            emit,
                        );
                    }
                }
                Item::Skipped { reason } => emit.skipped(pos, reason),
                Item::Failed { error, raw, index } => {
                    let p = self.at(pos, index);
                    let bytes = match raw {
                        Some(v) if index.is_some() => original_of(v),
                        _ => original.to_vec(),
                    };
                    self.dead(emit, DeadLetter::new(error, p, outer_hint, &bytes));
                }
            }
            self.leave(entered);
        }
        bufs.items = recycle_items(items);
        bufs.tape = Some(tape.reset());
    }

    fn record<'t, 'i>(
        &mut self,
        record: Src<'t, 'i>,
        carriers: Carriers<'t, 'i>,
        hint: Option<SourceKind>,
        pos: &Position,
        whole: Option<&[u8]>,
        emit: &mut dyn Emit,
    ) {
        let input = Input { record, carriers };
        let wanted = self.forced.or(hint);
        let plan = match wanted {
            Some(kind) => match self.mappings.plan(kind) {
                Some(p) if p.detects(input) => Ok(p),
                Some(_) => Err(RecordError::new(
                    ErrorCode::WrongShape,
                    Stage::Envelope,
                    format!(
                        "expected a {} record, found {}",
                        kind.as_str(),
                        describe(record)
                    ),
                )),
                None => Err(RecordError::new(
                    ErrorCode::UnknownSource,
                    Stage::Envelope,
                    format!("no mapping table is loaded for source {}", kind.as_str()),
                )),
            },
            None => self.mappings.detect(input).ok_or_else(|| {
                RecordError::new(
                    ErrorCode::UnknownSource,
                    Stage::Envelope,
                    format!(
                        "no table recognises this record: {}; pass --source if you know what it is",
                        describe(record)
                    ),
                )
            }),
        };
        let plan = match plan {
            Ok(p) => p,
            Err(e) => return self.emit_dead(emit, e, pos, wanted, record, whole),
        };
        let mut ev_counts = RedactionCounts::default();
        let red = self.redaction.redactor.as_ref().map(|r| Redact {
            redactor: r,
            counts: &mut ev_counts,
            clean: Some(&mut self.redaction.clean),
        });
        let mapped = plan.map(input, self.scratch, self.out, red);
        if !ev_counts.is_empty() {
            self.redaction.counts.merge(&ev_counts);
        }
        match mapped {
            Ok(class_uid) => {
                emit.event(
                    self.out,
                    EventInfo {
                        source: plan.source,
                        class_uid,
                        position: pos,
                        record,
                    },
                );
            }
            Err(e) => self.emit_dead(emit, e, pos, Some(plan.source), record, whole),
        }
    }
}

impl Parts<'_> {
    fn dead(&mut self, emit: &mut dyn Emit, mut dl: DeadLetter) {
        if let Some(sub) = &self.sub {
            dl.detail = sub.describe(&dl.detail);
        }
        emit.dead_letter(self.redaction.dead_letter(dl));
    }

    /// The position of the carrier element at `index`: the element's index, except inside a
    /// KPL user record, where it stays the user record's (see `SubRecord`).
    fn at(&self, pos: &Position, index: Option<u32>) -> Position {
        match index {
            Some(i) if self.sub.is_none() => pos.with_index(i),
            _ => pos.clone(),
        }
    }

    /// Notes an element index for dead-letter details inside a KPL user record.
    fn enter(&mut self, index: Option<u32>) -> bool {
        match (&mut self.sub, index) {
            (Some(sub), Some(i)) => {
                sub.elements.push(i);
                true
            }
            _ => false,
        }
    }

    fn leave(&mut self, entered: bool) {
        if entered {
            if let Some(sub) = &mut self.sub {
                sub.elements.pop();
            }
        }
    }

    /// `whole`: the unit's own bytes when the record is the whole unit (kept byte for byte);
    /// otherwise the record is re-encoded from the parsed carrier.
    fn emit_dead(
        &mut self,
        emit: &mut dyn Emit,
        e: RecordError,
        pos: &Position,
        source: Option<SourceKind>,
        record: Src<'_, '_>,
        whole: Option<&[u8]>,
    ) {
        let bytes = match whole {
            Some(b) => b.to_vec(),
            None => original_of(record),
        };
        self.dead(emit, DeadLetter::new(e, pos.clone(), source, &bytes));
    }
}
