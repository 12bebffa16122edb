//! Running a compiled plan on one record: pick the class and activity, assign fields, copy
//! every source field that no assignment consumed into `unmapped`, and validate the result.

use super::plan::{
    ClassP, CondP, ConstV, FieldP, Piece, Plan, Root, SourceP, SrcPath, Test, Transform, Trie,
    CARRIER_ROOT, ELEMENT_ROOT, RECORD_ROOT,
};
use crate::envelope::{Carriers, Wrap};
use crate::error::{ErrorCode, RecordError, Stage};
use crate::event::Out;
use crate::json::Src;
use crate::ocsf::schema::LeafKind;
use crate::ocsf::{self, OCSF_VERSION};
use std::borrow::Cow;

/// Per-lane scratch space reused across records.
#[derive(Default)]
pub struct Scratch {
    used: Vec<bool>,
}

/// A record and the envelopes it arrived in (read through `@carrier.` / `@element.` paths).
#[derive(Clone, Copy)]
pub struct Input<'t, 'i> {
    pub record: Src<'t, 'i>,
    pub carriers: Carriers<'t, 'i>,
}

struct Run<'p, 't, 'i, 's> {
    input: Input<'t, 'i>,
    used: &'s mut [bool],
    plan: &'p Plan,
}

fn field_err(f: &FieldP, detail: String) -> RecordError {
    RecordError::new(
        ErrorCode::InvalidField,
        Stage::Map,
        format!("`{}` (table line {}): {detail}", f.to_text, f.line),
    )
}

impl<'t, 'i> Run<'_, 't, 'i, '_> {
    fn base(&self, p: &SrcPath, elem: Option<Src<'t, 'i>>) -> Option<Src<'t, 'i>> {
        match p.root {
            Root::Carrier => self.input.carriers.carrier.map(|w| w.doc),
            Root::Element => self.input.carriers.element.map(|w| w.doc),
            Root::Record => Some(elem.unwrap_or(self.input.record)),
        }
    }

    fn get(&self, p: &SrcPath, elem: Option<Src<'t, 'i>>) -> Option<Src<'t, 'i>> {
        let mut cur = self.base(p, elem)?;
        for seg in &p.segs {
            // A numeric segment indexes an array (`bindingDeltas.0.action`).
            cur = match cur.get(seg) {
                Some(v) => v,
                None if cur.is_array() => cur.elements().nth(seg.parse::<usize>().ok()?)?,
                None => return None,
            };
        }
        // Null and "" carry nothing (CloudTrail writes accessKeyId "" for console sessions).
        if cur.is_null() || cur.as_str() == Some("") {
            None
        } else {
            Some(cur)
        }
    }

    fn cond(&self, c: &CondP, elem: Option<Src<'t, 'i>>) -> bool {
        match c {
            CondP::All(v) => v.iter().all(|x| self.cond(x, elem)),
            CondP::Any(v) => v.iter().any(|x| self.cond(x, elem)),
            CondP::Not(x) => !self.cond(x, elem),
            CondP::Test {
                path,
                test,
                ignore_case,
            } => {
                let v = self.get(path, elem);
                match test {
                    Test::Exists(e) => v.is_some() == *e,
                    Test::Type(t) => v.is_some_and(|v| v.type_name() == *t),
                    _ => {
                        let Some(s) = v.and_then(|v| v.as_str()) else {
                            return false;
                        };
                        let lowered;
                        let s = if *ignore_case && !matches!(test, Test::Matches(_)) {
                            lowered = s.to_ascii_lowercase();
                            lowered.as_str()
                        } else {
                            s
                        };
                        match test {
                            Test::In(l) => l.iter().any(|x| x == s),
                            Test::Prefix(l) => l.iter().any(|x| s.starts_with(x.as_str())),
                            Test::Suffix(l) => l.iter().any(|x| s.ends_with(x.as_str())),
                            Test::Contains(l) => l.iter().any(|x| s.contains(x.as_str())),
                            Test::Matches(re) => re.is_match(s),
                            Test::Exists(_) | Test::Type(_) => unreachable!(),
                        }
                    }
                }
            }
        }
    }

    fn mark(&mut self, node: u32) {
        self.used[node as usize] = true;
    }

    fn constant(c: &ConstV) -> Out<'t, 'i> {
        match c {
            ConstV::Str(s) => Out::Str(Cow::Borrowed(s)),
            ConstV::Int(i) => Out::Int(*i),
            ConstV::Bool(b) => Out::Bool(*b),
            ConstV::StrList(l) => Out::Arr(l.iter().map(|s| Out::Str(Cow::Borrowed(s))).collect()),
        }
    }

    /// Produces the value of one field, or None when it has no value for this record.
    #[allow(clippy::type_complexity)]
    fn value<'f>(
        &mut self,
        f: &'f FieldP,
        elem: Option<Src<'t, 'i>>,
    ) -> Result<Option<(Out<'t, 'i>, Option<(&'f SrcPath, Src<'t, 'i>)>)>, RecordError> {
        match &f.source {
            SourceP::Const(c) => Ok(Some((Self::constant(c), None))),
            SourceP::Template(pieces) => {
                let mut s = String::new();
                for p in pieces {
                    match p {
                        Piece::Lit(l) => s.push_str(l),
                        Piece::Path(path) => {
                            if let Some(v) = self.get(path, elem) {
                                push_scalar(&mut s, v);
                            }
                        }
                    }
                }
                Ok(Some((Out::Str(Cow::Owned(s)), None)))
            }
            SourceP::Join(paths, sep) => {
                let mut s = String::new();
                let mut any = false;
                for path in paths {
                    if let Some(v) = self.get(path, elem) {
                        if any {
                            s.push_str(sep);
                        }
                        push_scalar(&mut s, v);
                        any = true;
                        self.mark(path.node);
                    }
                }
                Ok(any.then_some((Out::Str(Cow::Owned(s)), None)))
            }
            SourceP::Each {
                path,
                fields,
                whole,
            } => {
                let Some(arr) = self.get(path, elem) else {
                    return Ok(None);
                };
                let mut items = Vec::new();
                let elems: Vec<Src<'t, 'i>> = if arr.is_array() {
                    arr.elements().filter(|e| !e.is_null()).collect()
                } else {
                    vec![arr]
                };
                for e in elems {
                    let mut obj = Out::obj();
                    for sub in fields {
                        self.assign(sub, &mut obj, Some(e))?;
                    }
                    if !matches!(&obj, Out::Obj(m) if m.is_empty()) {
                        items.push(obj);
                    }
                }
                if *whole {
                    self.mark(path.node);
                }
                Ok((!items.is_empty()).then_some((Out::Arr(items), None)))
            }
            SourceP::Paths(paths) => {
                for path in paths {
                    if let Some(v) = self.get(path, elem) {
                        return Ok(Some((Out::Raw(v), Some((path, v)))));
                    }
                }
                Ok(None)
            }
        }
    }

    /// Assigns one field into `target` (the event, or an `each` element object).
    fn assign(
        &mut self,
        f: &FieldP,
        target: &mut Out<'t, 'i>,
        elem: Option<Src<'t, 'i>>,
    ) -> Result<(), RecordError> {
        if !f.to.is_empty() && target.has_path(&f.to) {
            return Ok(());
        }
        if let Some(w) = &f.when {
            if !self.cond(w, elem) {
                return Ok(());
            }
        }
        let Some((mut v, origin)) = self.value(f, elem)? else {
            if let Some(d) = &f.default {
                target.set(&f.to, Self::constant(d));
            }
            return Ok(());
        };
        let mut consume = origin.is_some();
        if let (Some(re), Some((_, src))) = (&f.extract, origin) {
            let Some(s) = src.as_str() else {
                return Err(field_err(
                    f,
                    format!("expected a string, got {}", src.type_name()),
                ));
            };
            match re.captures(s).and_then(|c| c.get(1)) {
                Some(m) => {
                    v = Out::Str(Cow::Borrowed(m.as_str()));
                    // A partial extract leaves the full source value for `unmapped`.
                    consume = m.as_str().len() == s.len();
                }
                None => return Ok(()),
            }
        }
        let mut dest: (&[&str], LeafKind) = (&f.to, f.kind);
        match apply_transform(f.transform, v, origin.map(|o| o.1)) {
            Transformed::Value(x, keep_source) => {
                v = x;
                consume &= !keep_source;
            }
            Transformed::Rejected(orig) => match &f.otherwise {
                Some((path, kind)) => {
                    v = orig;
                    dest = (path, *kind);
                    if target.has_path(path) {
                        return Ok(());
                    }
                }
                None => {
                    return Err(field_err(
                        f,
                        format!(
                            "{} value from `{}` cannot be converted ({:?})",
                            origin.map(|o| o.1.type_name()).unwrap_or("constant"),
                            origin.map(|o| o.0.text).unwrap_or("-"),
                            f.transform
                        ),
                    ))
                }
            },
            Transformed::Nothing => return Ok(()),
        }
        if let Some(l) = &f.lookup {
            let key = v.as_str().map(|s| {
                if l.ignore_case {
                    Cow::Owned(s.to_ascii_lowercase())
                } else {
                    Cow::Borrowed(s)
                }
            });
            let hit = key
                .as_deref()
                .and_then(|k| l.values.get(k))
                .or(l.default.as_ref());
            match hit {
                Some(c) => v = Self::constant(c),
                // Unknown value: leave the field unset and the source in `unmapped`.
                None => return Ok(()),
            }
        }
        let v = coerce(v, dest.1).map_err(|why| {
            field_err(
                f,
                format!(
                    "{why} (from `{}`)",
                    origin.map(|o| o.0.text).unwrap_or("a constant")
                ),
            )
        })?;
        if dest.0.is_empty() {
            *target = v;
        } else {
            target.set(dest.0, v);
        }
        if consume {
            if let Some((p, _)) = origin {
                self.mark(p.node);
            }
        }
        Ok(())
    }

    /// The parts of `src` no assignment consumed. `skip` is a path left out entirely (the
    /// payload inside an envelope).
    fn leftover(
        &self,
        src: Src<'t, 'i>,
        node: u32,
        trie: &Trie,
        skip: &[&str],
    ) -> Option<Out<'t, 'i>> {
        if self.used[node as usize] || src.is_null() {
            return None;
        }
        if trie.is_leaf(node) && skip.is_empty() {
            return Some(Out::Raw(src));
        }
        if src.is_object() {
            let mut members = Vec::new();
            for (k, v) in src.members() {
                if v.is_null() {
                    continue;
                }
                let sub_skip: &[&str] = match skip.split_first() {
                    Some((first, rest)) if *first == k => {
                        if rest.is_empty() {
                            continue;
                        }
                        rest
                    }
                    _ => &[],
                };
                match trie.child(node, k) {
                    None if sub_skip.is_empty() => members.push((k, Out::Raw(v))),
                    None => {
                        if let Some(x) = self.leftover_untracked(v, sub_skip) {
                            members.push((k, x));
                        }
                    }
                    Some(c) => {
                        if let Some(x) = self.leftover(v, c, trie, sub_skip) {
                            members.push((k, x));
                        }
                    }
                }
            }
            (!members.is_empty()).then_some(Out::Obj(members))
        } else if src.is_array() {
            let items: Vec<Option<Out<'t, 'i>>> = src
                .elements()
                .filter(|e| !e.is_null())
                .map(|e| self.leftover(e, node, trie, &[]))
                .collect();
            if items.iter().all(Option::is_none) {
                return None;
            }
            Some(Out::Arr(
                items
                    .into_iter()
                    .map(|x| x.unwrap_or_else(Out::obj))
                    .collect(),
            ))
        } else {
            Some(Out::Raw(src))
        }
    }
}

impl<'t, 'i> Run<'_, 't, 'i, '_> {
    /// `src` minus the `skip` path, where no table path reaches.
    fn leftover_untracked(&self, src: Src<'t, 'i>, skip: &[&str]) -> Option<Out<'t, 'i>> {
        let Some((first, rest)) = skip.split_first() else {
            return (!src.is_null()).then_some(Out::Raw(src));
        };
        if !src.is_object() {
            return Some(Out::Raw(src));
        }
        let mut members = Vec::new();
        for (k, v) in src.members().filter(|(_, v)| !v.is_null()) {
            if k != *first {
                members.push((k, Out::Raw(v)));
            } else if !rest.is_empty() {
                if let Some(x) = self.leftover_untracked(v, rest) {
                    members.push((k, x));
                }
            }
        }
        (!members.is_empty()).then_some(Out::Obj(members))
    }
}

fn push_scalar(s: &mut String, v: Src<'_, '_>) {
    if let Some(x) = v.as_str() {
        s.push_str(x);
    } else if let Some(st) = v.as_static() {
        let mut b = Vec::new();
        crate::json::write_static(&mut b, st);
        s.push_str(&String::from_utf8_lossy(&b));
    }
}

enum Transformed<'t, 'i> {
    /// The value, and whether the source must stay in `unmapped` (partial use).
    Value(Out<'t, 'i>, bool),
    Rejected(Out<'t, 'i>),
    Nothing,
}

fn apply_transform<'t, 'i>(
    t: Transform,
    v: Out<'t, 'i>,
    src: Option<Src<'t, 'i>>,
) -> Transformed<'t, 'i> {
    use Transformed::*;
    match t {
        Transform::None => Value(v, false),
        Transform::Present => Value(Out::Bool(true), false),
        Transform::String => match &v {
            Out::Raw(s) if s.is_object() || s.is_array() => Rejected(v),
            _ => Value(v, false),
        },
        Transform::Lower => match v.as_str() {
            Some(s) if s.bytes().any(|b| b.is_ascii_uppercase()) => {
                Value(Out::Str(Cow::Owned(s.to_ascii_lowercase())), false)
            }
            Some(_) => Value(v, false),
            None => Rejected(v),
        },
        Transform::Bool => {
            if let Some(b) = src.and_then(|s| s.as_bool()) {
                return Value(Out::Bool(b), false);
            }
            match v.as_str().map(|s| s.to_ascii_lowercase()) {
                Some(s) if s == "true" || s == "yes" => Value(Out::Bool(true), false),
                Some(s) if s == "false" || s == "no" => Value(Out::Bool(false), false),
                _ => Rejected(v),
            }
        }
        Transform::Ip => match v.as_str() {
            Some(s) if s.parse::<std::net::IpAddr>().is_ok() => Value(v, false),
            _ => Rejected(v),
        },
        Transform::EpochMs => {
            if let Some(i) = v.as_i64() {
                // Epoch seconds would be < 1e11 for any date before year 5138.
                return Value(
                    Out::Int(if i < 100_000_000_000 { i * 1000 } else { i }),
                    false,
                );
            }
            match v.as_str().and_then(parse_rfc3339_ms) {
                Some(ms) => Value(Out::Int(ms), false),
                None => Rejected(v),
            }
        }
        Transform::Datetime => match v.as_str() {
            Some(s) if is_ocsf_datetime(s) => Value(v, false),
            Some(s) => match parse_rfc3339_ms(s) {
                Some(ms) => Value(Out::Str(Cow::Owned(format_ms(ms))), false),
                None => Rejected(v),
            },
            None => match v.as_i64() {
                Some(i) => Value(Out::Str(Cow::Owned(format_ms(i))), false),
                None => Rejected(v),
            },
        },
        Transform::First => match src {
            Some(s) if s.is_array() => match s.elements().find(|e| !e.is_null()) {
                Some(first) => Value(Out::Raw(first), s.len() > 1),
                None => Nothing,
            },
            _ => Value(v, false),
        },
        Transform::Rest => match src {
            Some(s) if s.is_array() => {
                let rest: Vec<Out<'t, 'i>> = s
                    .elements()
                    .filter(|e| !e.is_null())
                    .skip(1)
                    .map(Out::Raw)
                    .collect();
                if rest.is_empty() {
                    Nothing
                } else {
                    Value(Out::Arr(rest), false)
                }
            }
            _ => Nothing,
        },
    }
}

/// Parses RFC 3339 (any fraction length) into epoch milliseconds.
pub fn parse_rfc3339_ms(s: &str) -> Option<i64> {
    let t = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()?;
    Some((t.unix_timestamp_nanos() / 1_000_000) as i64)
}

fn format_ms(ms: i64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(ms as i128 * 1_000_000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// The OCSF datetime_t pattern, checked by hand because it runs on every event.
fn is_ocsf_datetime(s: &str) -> bool {
    let b = s.as_bytes();
    let d = |i: usize| b.get(i).is_some_and(u8::is_ascii_digit);
    if b.len() < 19
        || !(0..4).all(d)
        || b[4] != b'-'
        || !d(5)
        || !d(6)
        || b[7] != b'-'
        || !d(8)
        || !d(9)
        || !(b[10] == b'T' || b[10] == b't')
        || !d(11)
        || !d(12)
        || b[13] != b':'
        || !d(14)
        || !d(15)
        || b[16] != b':'
        || !d(17)
        || !d(18)
    {
        return false;
    }
    let mut i = 19;
    if b.get(i) == Some(&b'.') {
        i += 1;
        let start = i;
        while d(i) {
            i += 1;
        }
        if i == start {
            return false;
        }
    }
    match b.get(i) {
        None => true,
        Some(b'Z' | b'z') => i + 1 == b.len(),
        Some(b'+' | b'-') => {
            i + 6 == b.len() && d(i + 1) && d(i + 2) && b[i + 3] == b':' && d(i + 4) && d(i + 5)
        }
        _ => false,
    }
}

/// Converts a value to what the OCSF attribute holds, where that loses nothing.
fn coerce<'t, 'i>(v: Out<'t, 'i>, kind: LeafKind) -> Result<Out<'t, 'i>, String> {
    let got = |v: &Out| match v {
        Out::Raw(s) => s.type_name(),
        Out::Str(_) => "string",
        Out::Int(_) => "integer",
        Out::Bool(_) => "boolean",
        Out::Obj(_) => "object",
        Out::Arr(_) => "array",
    };
    match kind {
        LeafKind::Any => Ok(v),
        LeafKind::String => match &v {
            Out::Str(_) => Ok(v),
            Out::Raw(s) if s.as_str().is_some() => Ok(v),
            Out::Raw(s) if s.as_static().is_some() => {
                let mut b = String::new();
                push_scalar(&mut b, *s);
                Ok(Out::Str(Cow::Owned(b)))
            }
            Out::Int(i) => Ok(Out::Str(Cow::Owned(i.to_string()))),
            Out::Bool(b) => Ok(Out::Str(Cow::Owned(b.to_string()))),
            _ => Err(format!("expected string, got {}", got(&v))),
        },
        LeafKind::Integer | LeafKind::Number => match &v {
            Out::Int(_) => Ok(v),
            Out::Raw(s) if s.as_i64().is_some() => Ok(Out::Int(s.as_i64().unwrap_or_default())),
            Out::Raw(s) if kind == LeafKind::Number && s.as_static().is_some() => Ok(v),
            _ => match v.as_str().and_then(|s| s.trim().parse::<i64>().ok()) {
                Some(i) => Ok(Out::Int(i)),
                None => Err(format!("expected integer, got {}", got(&v))),
            },
        },
        LeafKind::Boolean => match &v {
            Out::Bool(_) => Ok(v),
            Out::Raw(s) if s.as_bool().is_some() => Ok(Out::Bool(s.as_bool().unwrap_or_default())),
            _ => match v.as_str() {
                Some("true") => Ok(Out::Bool(true)),
                Some("false") => Ok(Out::Bool(false)),
                _ => Err(format!("expected boolean, got {}", got(&v))),
            },
        },
        LeafKind::Array => match &v {
            Out::Arr(_) => Ok(v),
            Out::Raw(s) if s.is_array() => Ok(v),
            Out::Raw(s) if s.is_object() => Err("expected array, got object".into()),
            _ => Ok(Out::Arr(vec![v])),
        },
        LeafKind::Object { .. } => match &v {
            Out::Obj(_) => Ok(v),
            Out::Raw(s) if s.is_object() => Ok(v),
            _ => Err(format!("expected object, got {}", got(&v))),
        },
    }
}

impl Plan {
    /// Does this record look like one of this table's source?
    pub fn detects(&self, input: Input<'_, '_>) -> bool {
        let mut used = [];
        let run = Run {
            input,
            used: &mut used,
            plan: self,
        };
        run.cond(&self.detect, None)
    }

    fn pick_class<'t, 'i>(&self, run: &Run<'_, 't, 'i, '_>) -> Option<(&ClassP, i64)> {
        let class = self
            .classes
            .iter()
            .find(|c| c.when.as_ref().is_none_or(|w| run.cond(w, None)))?;
        let activity = class
            .activities
            .iter()
            .find(|(w, _)| w.as_ref().is_none_or(|w| run.cond(w, None)))
            .map(|(_, id)| *id)
            .unwrap_or(99);
        Some((class, activity))
    }

    /// Maps one record to one OCSF event, validated against its class schema.
    pub fn map<'t, 'i>(
        &self,
        input: Input<'t, 'i>,
        scratch: &mut Scratch,
    ) -> Result<Out<'t, 'i>, RecordError> {
        scratch.used.clear();
        scratch.used.resize(self.trie.nodes.len(), false);
        let mut run = Run {
            input,
            used: &mut scratch.used,
            plan: self,
        };
        for (cond, message) in &self.require {
            if !run.cond(cond, None) {
                return Err(RecordError::new(
                    ErrorCode::WrongShape,
                    Stage::Map,
                    format!("{} record: {message}", self.source.as_str()),
                ));
            }
        }
        let Some((class, activity)) = self.pick_class(&run) else {
            return Err(RecordError::new(
                ErrorCode::WrongShape,
                Stage::Map,
                format!(
                    "no class rule of {} matches this record; add a final [[class]] without `when`",
                    run.plan.origin
                ),
            ));
        };
        let info = class.info;
        let mut ev = Out::Obj(Vec::with_capacity(24));
        let act_caption = info.activity_caption(activity).unwrap_or("Other");
        ev.set(&["class_uid"], Out::Int(info.uid));
        ev.set(&["class_name"], Out::Str(Cow::Borrowed(info.caption)));
        ev.set(&["category_uid"], Out::Int(info.category_uid()));
        ev.set(
            &["category_name"],
            Out::Str(Cow::Borrowed(info.category_caption)),
        );
        ev.set(&["activity_id"], Out::Int(activity));
        ev.set(&["activity_name"], Out::Str(Cow::Borrowed(act_caption)));
        ev.set(&["type_uid"], Out::Int(info.uid * 100 + activity));
        ev.set(
            &["type_name"],
            Out::Str(Cow::Owned(format!("{}: {act_caption}", info.caption))),
        );
        for f in &class.fields {
            run.assign(f, &mut ev, None)?;
        }
        for (id_key, caption_key, caption) in [
            (
                "severity_id",
                "severity",
                ocsf::severity_caption as fn(i64) -> &'static str,
            ),
            ("status_id", "status", ocsf::status_caption),
        ] {
            if let Some(id) = ev.get(id_key).and_then(Out::as_i64) {
                if ev.get(caption_key).is_none() {
                    ev.set(&[caption_key], Out::Str(Cow::Borrowed(caption(id))));
                }
            }
        }
        ev.set(
            &["metadata", "version"],
            Out::Str(Cow::Borrowed(OCSF_VERSION)),
        );
        ev.set(
            &["metadata", "profiles"],
            Out::Arr(
                self.profiles
                    .iter()
                    .map(|p| Out::Str(Cow::Borrowed(p)))
                    .collect(),
            ),
        );
        let mut unmapped = match run.leftover(input.record, RECORD_ROOT, &self.trie, &[]) {
            Some(Out::Obj(m)) => m,
            Some(other) => vec![("@record", other)],
            None => Vec::new(),
        };
        let wraps: [(Option<Wrap>, u32, &str); 2] = [
            (input.carriers.carrier, CARRIER_ROOT, "@carrier"),
            (input.carriers.element, ELEMENT_ROOT, "@element"),
        ];
        for (wrap, root, key) in wraps {
            if let Some(w) = wrap {
                if let Some(x) = run.leftover(w.doc, root, &self.trie, w.payload) {
                    unmapped.push((key, x));
                }
            }
        }
        if !unmapped.is_empty() {
            ev.set(&["unmapped"], Out::Obj(unmapped));
        }
        if let Some(v) = class.schema.validate(&ev) {
            return Err(RecordError::new(
                ErrorCode::SchemaViolation,
                Stage::Validate,
                format!("{} {}: {v}", info.name, self.origin),
            ));
        }
        Ok(ev)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn datetime_check_matches_the_ocsf_pattern() {
        let re = regex::Regex::new(
            r"^\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(?:\.\d+)?([Zz]|[\+-]\d{2}:\d{2})?$",
        )
        .unwrap();
        for s in [
            "2026-10-14T09:21:07Z",
            "2026-10-14T09:21:07.123456789Z",
            "2026-10-14t09:21:07+02:00",
            "2026-10-14T09:21:07",
            "2026-10-14 09:21:07Z",
            "2026-10-14T09:21:07.Z",
            "2026-10-14T09:21:07+0200",
            "yesterday",
            "2026-10-14T09:21:07Zx",
        ] {
            assert_eq!(is_ocsf_datetime(s), re.is_match(s), "{s}");
        }
    }

    #[test]
    fn rfc3339_to_ms_handles_fractions() {
        assert_eq!(parse_rfc3339_ms("1970-01-01T00:00:01Z"), Some(1000));
        assert_eq!(parse_rfc3339_ms("1970-01-01T00:00:01.2345678Z"), Some(1234));
        assert_eq!(parse_rfc3339_ms("1970-01-01T01:00:00+01:00"), Some(0));
        assert_eq!(parse_rfc3339_ms("yesterday"), None);
    }
}
