//! Running a compiled plan on one record: pick the class and activity, assign fields, copy
//! every source field that no assignment consumed into `unmapped`, and validate the result.

use super::plan::{
    CondP, ConstV, FieldP, Piece, Plan, Root, SourceP, SrcPath, Test, Transform, Trie,
    CARRIER_ROOT, ELEMENT_ROOT, RECORD_ROOT,
};
use super::skeleton::{Skeleton, Slots, NEVER};
use crate::envelope::{Carriers, Wrap};
use crate::error::{ErrorCode, RecordError, Stage};
use crate::event::{
    encode_src, encode_src_blanked, encode_src_redacted, write_object_redacted, Out, Redact,
};
use crate::json::Src;
use crate::ocsf::schema::LeafKind;
use crate::ocsf::{self, OCSF_VERSION};
use crate::redact::MemberVerdict;
use std::borrow::Cow;

/// Plan id and decision key values (as bytes, so a lookup borrows the key buffer instead of
/// allocating) -> (class index, activity id).
type DecisionCache = rustc_hash::FxHashMap<Box<[u8]>, (u32, i64)>;

/// Per-lane scratch space reused across records.
#[derive(Default)]
pub struct Scratch {
    used: Vec<bool>,
    /// Per trie node: (record generation, tape start, tape length; 0 = absent). A table asks
    /// for the same prefixes (userIdentity.*) many times; each is looked up once per record.
    memo: Vec<[u32; 3]>,
    generation: u32,
    /// Trie child of each member of the record's top level, in member order (u32::MAX when
    /// none), filled by the first lookup and reused when writing `unmapped`.
    root_children: Vec<u32>,
    /// (class index, activity) by plan id and the values of the plan's decision keys.
    decisions: DecisionCache,
    key: Vec<u8>,
    /// Per `when` id: (record generation, result), for conditions several fields share.
    whens: Vec<(u32, bool)>,
    /// The event slots (all empty between records), presence bits and written slots, kept
    /// for their allocations.
    slots: (Vec<Option<Out<'static, 'static>>>, Vec<bool>, Vec<u32>),
}

/// A record and the envelopes it arrived in (read through `@carrier.` / `@element.` paths).
#[derive(Clone, Copy)]
pub struct Input<'t, 'i> {
    pub record: Src<'t, 'i>,
    pub carriers: Carriers<'t, 'i>,
}

struct Run<'p, 't, 'i, 's> {
    input: Input<'t, 'i>,
    root_children: Option<&'s mut Vec<u32>>,
    used: &'s mut [bool],
    memo: &'s mut [[u32; 3]],
    whens: &'s mut [(u32, bool)],
    generation: u32,
    plan: &'p Plan,
}

/// Where assignments go: the event's slots, or (inside `each`) an element's own small tree.
enum Target<'a, 'p, 't, 'i> {
    Slots(&'a mut Slots<'t, 'i>, &'p Skeleton),
    Tree(&'a mut Out<'t, 'i>),
}

impl<'t, 'i> Target<'_, '_, 't, 'i> {
    fn has(&self, path: &[&str], slot: u32) -> bool {
        match self {
            Target::Slots(s, _) => s.has(slot),
            Target::Tree(t) => !path.is_empty() && t.has_path(path),
        }
    }

    fn put(&mut self, path: &[&'static str], slot: u32, v: Out<'t, 'i>) {
        match self {
            Target::Slots(s, sk) => s.put(sk, slot, v),
            Target::Tree(t) if path.is_empty() => **t = v,
            Target::Tree(t) => {
                t.set(path, v);
            }
        }
    }
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

    /// A record path through the memo: resolves the parent once, then one member scan.
    fn lookup(&mut self, node: u32) -> Option<Src<'t, 'i>> {
        let record = self.input.record;
        if node == RECORD_ROOT {
            return Some(record);
        }
        let m = self.memo[node as usize];
        if m[0] == self.generation {
            return (m[2] > 0).then(|| record.at(m[1], m[2]));
        }
        let trie = &self.plan.trie;
        let n = &trie.nodes[node as usize];
        let (parent, key) = (n.parent, n.key);
        let parent_value = self.lookup(parent);
        if let Some(p) = parent_value.filter(|p| p.is_object()) {
            // One pass over the parent fills every sibling the table asks for: a record's
            // top level is scanned once, not once per field.
            let g = self.generation;
            for &(_, c) in &trie.nodes[parent as usize].children {
                self.memo[c as usize] = [g, 0, 0];
            }
            let mut roots = if parent == RECORD_ROOT {
                self.root_children.as_deref_mut()
            } else {
                None
            };
            if let Some(r) = roots.as_deref_mut() {
                r.clear();
            }
            for (k, v) in p.members() {
                let child = trie.child(parent, k);
                if let Some(r) = roots.as_deref_mut() {
                    r.push(child.unwrap_or(u32::MAX));
                }
                if let Some(c) = child {
                    let m = &mut self.memo[c as usize];
                    if m[2] == 0 {
                        let (s, l) = v.offset_in(record);
                        *m = [g, s, l];
                    }
                }
            }
            let m = self.memo[node as usize];
            return (m[2] > 0).then(|| record.at(m[1], m[2]));
        }
        let found = parent_value.and_then(|p| match p.get(key) {
            Some(v) => Some(v),
            None if p.is_array() => p.elements().nth(key.parse::<usize>().ok()?),
            None => None,
        });
        self.memo[node as usize] = match found {
            Some(v) => {
                let (s, l) = v.offset_in(record);
                [self.generation, s, l]
            }
            None => [self.generation, 0, 0],
        };
        found
    }

    fn get(&mut self, p: &SrcPath, elem: Option<Src<'t, 'i>>) -> Option<Src<'t, 'i>> {
        if p.root == Root::Record && elem.is_none() && (p.node as usize) < self.memo.len() {
            // A memo hit (most asks: siblings are filled by one scan) without the call.
            let m = self.memo[p.node as usize];
            let v = if m[0] == self.generation && p.node != RECORD_ROOT {
                if m[2] == 0 {
                    return None;
                }
                self.input.record.at(m[1], m[2])
            } else {
                self.lookup(p.node)?
            };
            return (!v.is_null() && v.as_str() != Some("")).then_some(v);
        }
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

    fn cond(&mut self, c: &CondP, elem: Option<Src<'t, 'i>>) -> bool {
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
                        if *ignore_case {
                            return test_ignoring_case(test, s);
                        }
                        match test {
                            Test::In(l) => l.iter().any(|x| x == s),
                            Test::InSet(set) => set.contains(s),
                            Test::Prefix(l) => l.iter().any(|x| s.starts_with(x.as_str())),
                            Test::PrefixByByte(b) => s.as_bytes().first().is_some_and(|c| {
                                b[*c as usize].iter().any(|x| s.starts_with(x.as_str()))
                            }),
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

    /// A field's `when`, evaluated once per record for all the fields that share it (inside
    /// `each`, the result depends on the element and is not kept).
    fn when(&mut self, f: &FieldP, w: &CondP, elem: Option<Src<'t, 'i>>) -> bool {
        let keep = elem.is_none() && (f.when_id as usize) < self.whens.len();
        if keep {
            let (g, r) = self.whens[f.when_id as usize];
            if g == self.generation {
                return r;
            }
        }
        let r = self.cond(w, elem);
        if keep {
            self.whens[f.when_id as usize] = (self.generation, r);
        }
        r
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
                let mut s = String::with_capacity(64);
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
                let mut s = String::with_capacity(64);
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
                // Sized once: growing these vectors cost more than filling them.
                let mut items = Vec::with_capacity(arr.len().max(1));
                // An object stands for a one-element array.
                let single = (!arr.is_array()).then_some(arr);
                let elems = arr.elements().filter(|e| !e.is_null()).chain(single);
                // An object standing for the array was found through the memo: its fields can
                // be read through the memo too (their trie nodes hang below the `each` path),
                // so `each = "."` costs no member scans.
                let through_memo = single.is_some()
                    && elem.is_none()
                    && path.root == Root::Record
                    && (path.node as usize) < self.memo.len();
                for e in elems {
                    let mut obj = Out::Obj(Vec::with_capacity(fields.len()));
                    let sub_elem = if through_memo { None } else { Some(e) };
                    for sub in fields {
                        self.assign(sub, &mut Target::Tree(&mut obj), sub_elem)?;
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

    /// A plain copy (`from` alone) into the event: no transform, lookup or condition. Small
    /// and inlined into the field loop, so that most fields skip `assign`'s frame.
    #[inline(always)]
    fn assign_plain(
        &mut self,
        f: &FieldP,
        paths: &[SrcPath],
        s: &mut Slots<'t, 'i>,
        sk: &Skeleton,
        elem: Option<Src<'t, 'i>>,
    ) -> Result<(), RecordError> {
        if s.has(f.slot) {
            return Ok(());
        }
        for path in paths {
            if let Some(src) = self.get(path, elem) {
                let v = if f.kind == LeafKind::String && src.as_str().is_some() {
                    Out::Raw(src)
                } else {
                    coerce_fast(Out::Raw(src), f.kind)
                        .map_err(|why| field_err(f, format!("{why} (from `{}`)", path.text)))?
                };
                s.put(sk, f.slot, v);
                self.mark(path.node);
                return Ok(());
            }
        }
        Ok(())
    }

    /// A constant (`value`, maybe under `when`) into the event, inlined like `assign_plain`.
    #[inline(always)]
    fn assign_const(
        &mut self,
        f: &FieldP,
        c: &ConstV,
        s: &mut Slots<'t, 'i>,
        sk: &Skeleton,
    ) -> Result<(), RecordError> {
        if s.has(f.slot) {
            return Ok(());
        }
        if let Some(w) = &f.when {
            if !self.when(f, w, None) {
                return Ok(());
            }
        }
        let v = coerce(Self::constant(c), f.kind)
            .map_err(|why| field_err(f, format!("{why} (from `a constant`)")))?;
        s.put(sk, f.slot, v);
        Ok(())
    }

    /// Assigns one field into `target` (the event, or an `each` element object).
    fn assign(
        &mut self,
        f: &FieldP,
        target: &mut Target<'_, '_, 't, 'i>,
        elem: Option<Src<'t, 'i>>,
    ) -> Result<(), RecordError> {
        if f.simple {
            if let (SourceP::Paths(paths), Target::Slots(s, sk)) = (&f.source, &mut *target) {
                return self.assign_plain(f, paths, s, sk, elem);
            }
        }
        if target.has(&f.to, f.slot) {
            return Ok(());
        }
        if let Some(w) = &f.when {
            if !self.when(f, w, elem) {
                return Ok(());
            }
        }
        // Source paths (most fields that reach here) inline: through `value`, the result came
        // back through memory and the reload stalled.
        let got = match &f.source {
            SourceP::Paths(paths) => {
                let mut found = None;
                for path in paths {
                    if let Some(v) = self.get(path, elem) {
                        found = Some((Out::Raw(v), Some((path, v))));
                        break;
                    }
                }
                found
            }
            _ => self.value(f, elem)?,
        };
        let Some((mut v, origin)) = got else {
            if let Some(d) = &f.default {
                target.put(&f.to, f.slot, Self::constant(d));
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
            match re.capture(s) {
                Some(m) => {
                    v = Out::Str(Cow::Borrowed(m));
                    // A partial extract leaves the full source value for `unmapped`.
                    consume = m.len() == s.len();
                }
                None => return Ok(()),
            }
        }
        let mut dest: (&[&'static str], LeafKind, u32) = (&f.to, f.kind, f.slot);
        match apply_transform(f.transform, v, origin.map(|o| o.1)) {
            Transformed::Value(x, keep_source) => {
                v = x;
                consume &= !keep_source;
            }
            Transformed::Rejected(orig) => match &f.otherwise {
                Some((path, kind)) => {
                    v = orig;
                    dest = (path, *kind, f.otherwise_slot);
                    if target.has(path, f.otherwise_slot) {
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
            let mut buf = [0u8; 128];
            let hit = match v.as_str() {
                None => None,
                Some(s) if !l.ignore_case || !s.bytes().any(|b| b.is_ascii_uppercase()) => {
                    l.values.get(s)
                }
                Some(s) => match lowered(s, &mut buf) {
                    Some(k) => l.values.get(k),
                    None => l.values.get(s.to_ascii_lowercase().as_str()),
                },
            }
            .or(l.default.as_ref());
            match hit {
                Some(c) => v = Self::constant(c),
                // Unknown value: leave the field unset and the source in `unmapped`.
                None => return Ok(()),
            }
        }
        let v = coerce_fast(v, dest.1).map_err(|why| {
            field_err(
                f,
                format!(
                    "{why} (from `{}`)",
                    origin.map(|o| o.0.text).unwrap_or("a constant")
                ),
            )
        })?;
        target.put(dest.0, dest.2, v);
        if consume {
            if let Some((p, _)) = origin {
                self.mark(p.node);
            }
        }
        Ok(())
    }

    /// Writes the parts of `src` no assignment consumed, as JSON; false (and nothing written)
    /// when nothing is left. `skip` is a path left out entirely (the payload inside an
    /// envelope). Written straight from the tape: no tree is built for `unmapped`.
    #[allow(clippy::too_many_arguments)]
    fn write_leftover(
        &self,
        src: Src<'t, 'i>,
        key: Option<&str>,
        node: Option<u32>,
        trie: &Trie,
        skip: &[&str],
        out: &mut Vec<u8>,
        red: &mut Option<Redact<'_>>,
    ) -> bool {
        if src.is_null() || node.is_some_and(|n| self.used[n as usize]) {
            return false;
        }
        let untracked = node.is_none_or(|n| trie.is_leaf(n));
        if untracked && skip.is_empty() {
            encode_whole(out, src, key, red);
            return true;
        }
        if src.is_object() {
            let start = out.len();
            out.push(b'{');
            let any = self.write_leftover_members(src, key, node, trie, skip, out, red);
            if !any {
                out.truncate(start);
                return false;
            }
            out.push(b'}');
            true
        } else if src.is_array() {
            let start = out.len();
            out.push(b'[');
            let mut any = false;
            for (n, e) in src.elements().filter(|e| !e.is_null()).enumerate() {
                if n > 0 {
                    out.push(b',');
                }
                // Index alignment is kept: a fully used element stays as {}.
                if self.write_leftover(e, key, node, trie, &[], out, red) {
                    any = true;
                } else {
                    out.extend_from_slice(b"{}");
                }
            }
            if !any {
                out.truncate(start);
                return false;
            }
            out.push(b']');
            true
        } else {
            encode_whole(out, src, key, red);
            true
        }
    }

    /// The members part of `write_leftover` for an object, comma-separated, no braces.
    /// Object and pair rules look at the whole object, used members included: see
    /// `write_object_redacted`.
    #[allow(clippy::too_many_arguments)]
    fn write_leftover_members(
        &self,
        src: Src<'t, 'i>,
        key: Option<&str>,
        node: Option<u32>,
        trie: &Trie,
        skip: &[&str],
        out: &mut Vec<u8>,
        red: &mut Option<Redact<'_>>,
    ) -> bool {
        let Some(r) = red.as_mut() else {
            return self
                .leftover_members_pass(src, node, trie, skip, out, red, None)
                .0;
        };
        write_object_redacted(out, r, key, src, |out, r, hits| {
            let mut red = Some(r.reborrow());
            self.leftover_members_pass(src, node, trie, skip, out, &mut red, hits)
        })
    }

    /// One pass of `write_leftover_members`, with the object's verdicts when they were
    /// computed. Returns (anything written, some key is an object or pair rule's trigger);
    /// triggers are only looked for when redacting without verdicts.
    #[allow(clippy::too_many_arguments)]
    fn leftover_members_pass(
        &self,
        src: Src<'t, 'i>,
        node: Option<u32>,
        trie: &Trie,
        skip: &[&str],
        out: &mut Vec<u8>,
        red: &mut Option<Redact<'_>>,
        hits: Option<&[(usize, MemberVerdict)]>,
    ) -> (bool, bool) {
        let mut any = false;
        // The record's top level: trie children were found by the lookups already.
        let known: Option<&[u32]> = match (&self.root_children, node) {
            (Some(r), Some(RECORD_ROOT)) if r.len() == src.len() && skip.is_empty() => Some(r),
            _ => None,
        };
        let verdicts = red.as_ref().and_then(|r| trie.key_verdicts(r.redactor));
        let probe = red.is_some() && hits.is_none();
        let known_may_trigger = match (node, verdicts) {
            (Some(n), Some(v)) => v[n as usize].children_trigger,
            _ => true,
        };
        let mut triggered = false;
        let mut hits = hits.unwrap_or_default().iter().peekable();
        for (i, (k, v)) in src.members().enumerate() {
            let child = match known {
                Some(r) => (r[i] != u32::MAX).then_some(r[i]),
                None => node.and_then(|n| trie.child(n, k)),
            };
            // This member's key checks: from the trie when it knows the key (a used member
            // needs only its trigger bit, and none when no child key of this node is a
            // trigger), else through the lane's memo.
            let kv = match (child, verdicts) {
                (Some(c), Some(vs)) => {
                    let nv = vs[c as usize];
                    triggered |= probe & known_may_trigger & nv.key.trigger;
                    if self.used[c as usize] {
                        continue;
                    }
                    Some(nv.key)
                }
                _ => red.as_mut().map(|r| {
                    let kv = r.key_verdict(k);
                    triggered |= probe & kv.trigger;
                    kv
                }),
            };
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
            if child.is_some_and(|c| self.used[c as usize]) {
                continue;
            }
            let mark = out.len();
            if any {
                out.push(b',');
            }
            crate::json::write_str(out, k);
            out.push(b':');
            while hits.next_if(|h| h.0 < i).is_some() {}
            let verdict = hits.next_if(|h| h.0 == i).map(|h| h.1);
            if let (Some(r), false) = (
                red.as_mut(),
                matches!(verdict, Some(MemberVerdict::Keep(_))),
            ) {
                let by_object = match verdict {
                    Some(MemberVerdict::Redact(rule)) => Some(rule),
                    _ => None,
                };
                // A kept member (a reference to a secret) gets no key rule: text rules only.
                let rule = by_object.or_else(|| {
                    kv.and_then(|kv| kv.rule).filter(|&rule| {
                        !(r.redactor.descends_into_containers(rule)
                            && (v.is_object() || v.is_array()))
                    })
                });
                if let Some(rule) = rule {
                    encode_src_blanked(out, v, rule, r);
                    any = true;
                    continue;
                }
            }
            // A string no rule tracks, the common leftover, written here rather than
            // through `write_leftover` and `encode_whole`.
            if let (Some(s), true) = (v.as_str(), sub_skip.is_empty()) {
                if child.is_none_or(|c| trie.is_leaf(c)) {
                    match red.as_mut() {
                        Some(r) => r.write_text(out, s),
                        None => crate::json::write_str(out, s),
                    }
                    any = true;
                    continue;
                }
            }
            if self.write_leftover(v, Some(k), child, trie, sub_skip, out, red) {
                any = true;
            } else {
                out.truncate(mark);
            }
        }
        (any, triggered)
    }

    /// Appends `,"unmapped":{...}` before the closing brace of an encoded event, when any
    /// source field was left over.
    fn append_unmapped(
        &self,
        input: &Input<'t, 'i>,
        trie: &Trie,
        out: &mut Vec<u8>,
        red: &mut Option<Redact<'_>>,
    ) {
        debug_assert_eq!(out.last(), Some(&b'}'));
        out.pop();
        let mark = out.len();
        out.extend_from_slice(b",\"unmapped\":{");
        let mut any = if input.record.is_object() {
            self.write_leftover_members(input.record, None, Some(RECORD_ROOT), trie, &[], out, red)
        } else {
            let m = out.len();
            out.extend_from_slice(b"\"@record\":");
            let wrote =
                self.write_leftover(input.record, None, Some(RECORD_ROOT), trie, &[], out, red);
            if !wrote {
                out.truncate(m);
            }
            wrote
        };
        let wraps: [(Option<Wrap>, u32, &str); 2] = [
            (input.carriers.carrier, CARRIER_ROOT, "@carrier"),
            (input.carriers.element, ELEMENT_ROOT, "@element"),
        ];
        for (wrap, root, key) in wraps {
            let Some(w) = wrap else { continue };
            let m = out.len();
            if any {
                out.push(b',');
            }
            crate::json::write_str(out, key);
            out.push(b':');
            if self.write_leftover(w.doc, None, Some(root), trie, w.payload, out, red) {
                any = true;
            } else {
                out.truncate(m);
            }
        }
        if any {
            out.push(b'}');
        } else {
            out.truncate(mark);
        }
        out.push(b'}');
    }
}

/// A source value written as it is, redacted when redaction is on.
fn encode_whole(
    out: &mut Vec<u8>,
    src: Src<'_, '_>,
    key: Option<&str>,
    red: &mut Option<Redact<'_>>,
) {
    match red {
        Some(r) => encode_src_redacted(out, src, key, r),
        None => encode_src(out, src),
    }
}

/// A string test with `ignore_case` (the lists were lowercased when the plan was compiled),
/// without lowercasing the value into a new string.
fn test_ignoring_case(test: &Test, s: &str) -> bool {
    let b = s.as_bytes();
    let starts = |x: &str| b.len() >= x.len() && b[..x.len()].eq_ignore_ascii_case(x.as_bytes());
    let ends =
        |x: &str| b.len() >= x.len() && b[b.len() - x.len()..].eq_ignore_ascii_case(x.as_bytes());
    match test {
        Test::In(l) => l.iter().any(|x| x.eq_ignore_ascii_case(s)),
        Test::InSet(set) => {
            let mut buf = [0u8; 128];
            match lowered(s, &mut buf) {
                Some(k) => set.contains(k),
                None => set.contains(s.to_ascii_lowercase().as_str()),
            }
        }
        Test::Prefix(l) => l.iter().any(|x| starts(x)),
        Test::PrefixByByte(bk) => b.first().is_some_and(|c| {
            bk[c.to_ascii_lowercase() as usize]
                .iter()
                .any(|x| starts(x))
        }),
        Test::Suffix(l) => l.iter().any(|x| ends(x)),
        Test::Contains(l) => l.iter().any(|x| contains_ignoring_case(b, x.as_bytes())),
        Test::Matches(re) => re.is_match(s),
        Test::Exists(_) | Test::Type(_) => unreachable!(),
    }
}

/// `s` ASCII-lowercased into `buf`, when it fits.
fn lowered<'b>(s: &str, buf: &'b mut [u8; 128]) -> Option<&'b str> {
    let d = buf.get_mut(..s.len())?;
    d.copy_from_slice(s.as_bytes());
    d.make_ascii_lowercase();
    // Lowercasing ASCII bytes keeps UTF-8 valid.
    std::str::from_utf8(d).ok()
}

/// `needle` (lowercase) in `hay`, ASCII case ignored.
fn contains_ignoring_case(hay: &[u8], needle: &[u8]) -> bool {
    let Some(&first) = needle.first() else {
        return true;
    };
    if hay.len() < needle.len() {
        return false;
    }
    let last_start = hay.len() - needle.len();
    let mut pos = 0;
    while pos <= last_start {
        let Some(off) = memchr::memchr2(first, first.to_ascii_uppercase(), &hay[pos..=last_start])
        else {
            return false;
        };
        pos += off;
        if hay[pos..pos + needle.len()].eq_ignore_ascii_case(needle) {
            return true;
        }
        pos += 1;
    }
    false
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

#[inline(always)]
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
    rfc3339_utc_fast(s).or_else(|| rfc3339_ms_general(s))
}

fn rfc3339_ms_general(s: &str) -> Option<i64> {
    let t = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()?;
    Some((t.unix_timestamp_nanos() / 1_000_000) as i64)
}

/// `YYYY-MM-DDTHH:MM:SS[.f{1,9}]Z` from 1970 on, the shape nearly every audit log writes,
/// without the general parser (which cost ~0.5% of a CloudTrail replay). None for anything
/// else, which the `time` crate then decides; a test holds the two to the same answers.
fn rfc3339_utc_fast(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() < 20
        || b[4] != b'-'
        || b[7] != b'-'
        || b[10] != b'T'
        || b[13] != b':'
        || b[16] != b':'
        || b[b.len() - 1] != b'Z'
    {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        b[r].iter().try_fold(0i64, |v, &c| {
            c.is_ascii_digit().then(|| v * 10 + i64::from(c - b'0'))
        })
    };
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, se) = (num(11..13)?, num(14..16)?, num(17..19)?);
    let ms = match &b[19..b.len() - 1] {
        [] => 0,
        [b'.', digits @ ..]
            if (1..=9).contains(&digits.len()) && digits.iter().all(u8::is_ascii_digit) =>
        {
            (0..3).fold(0i64, |v, i| {
                v * 10 + digits.get(i).map_or(0, |c| i64::from(c - b'0'))
            })
        }
        _ => return None,
    };
    let leap = y % 4 == 0 && (y % 100 != 0 || y % 400 == 0);
    let month_days = [
        31,
        if leap { 29 } else { 28 },
        31,
        30,
        31,
        30,
        31,
        31,
        30,
        31,
        30,
        31,
    ];
    if y < 1970
        || !(1..=12).contains(&mo)
        || d < 1
        || d > month_days[(mo - 1) as usize]
        || h > 23
        || mi > 59
        || se > 59
    {
        return None;
    }
    // Days since 1970-01-01 (H. Hinnant's days_from_civil; years from March).
    let yy = if mo <= 2 { y - 1 } else { y };
    let era = yy.div_euclid(400);
    let yoe = yy - era * 400;
    let doy = (153 * ((mo + 9) % 12) + 2) / 5 + d - 1;
    let days = era * 146_097 + yoe * 365 + yoe / 4 - yoe / 100 + doy - 719_468;
    Some(((days * 24 + h) * 60 + mi) * 60_000 + se * 1000 + ms)
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
/// `coerce` with the common cases (the value already has the leaf's type) inline, so that they
/// do not return through memory.
#[inline(always)]
fn coerce_fast<'t, 'i>(v: Out<'t, 'i>, kind: LeafKind) -> Result<Out<'t, 'i>, String> {
    match (kind, &v) {
        (LeafKind::Any, _)
        | (LeafKind::String, Out::Str(_))
        | (LeafKind::Integer | LeafKind::Number, Out::Int(_))
        | (LeafKind::Boolean, Out::Bool(_)) => Ok(v),
        (LeafKind::String, Out::Raw(s)) if s.as_str().is_some() => Ok(v),
        (LeafKind::Integer | LeafKind::Number, Out::Raw(s)) if s.as_i64().is_some() => {
            Ok(Out::Int(s.as_i64().unwrap_or_default()))
        }
        _ => coerce(v, kind),
    }
}

pub(super) fn coerce<'t, 'i>(v: Out<'t, 'i>, kind: LeafKind) -> Result<Out<'t, 'i>, String> {
    let got = |v: &Out| match v {
        Out::Raw(s) => s.type_name(),
        Out::Str(_) => "string",
        Out::Int(_) => "integer",
        Out::Bool(_) => "boolean",
        Out::Obj(_) => "object",
        Out::Arr(_) => "array",
        Out::Json(_) => "json",
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
        // No memo: detection looks at a few fields of records that may not be ours.
        let mut run = Run {
            input,
            root_children: None,
            used: &mut [],
            memo: &mut [],
            whens: &mut [],
            generation: 0,
            plan: self,
        };
        run.cond(&self.detect, None)
    }

    fn pick_class<'t, 'i>(&self, run: &mut Run<'_, 't, 'i, '_>) -> Option<(usize, i64)> {
        let (idx, class) = self
            .classes
            .iter()
            .enumerate()
            .find(|(_, c)| c.when.as_ref().is_none_or(|w| run.cond(w, None)))?;
        let activity = class
            .activities
            .iter()
            .find(|(w, _)| w.as_ref().is_none_or(|w| run.cond(w, None)))
            .map(|(_, id)| *id)
            .unwrap_or(99);
        Some((idx, activity))
    }

    /// `pick_class` through the lane's decision cache when the rules allow it.
    fn decide<'t, 'i>(
        &self,
        run: &mut Run<'_, 't, 'i, '_>,
        cache: &mut DecisionCache,
        key: &mut Vec<u8>,
    ) -> Option<(usize, i64)> {
        let Some(paths) = &self.decision_keys else {
            return self.pick_class(run);
        };
        key.clear();
        key.extend_from_slice(&self.id.to_le_bytes());
        for p in paths {
            match run.get(p, None) {
                None => key.push(0),
                Some(v) => match v.as_str() {
                    // Length-prefixed, so that ("ab","c") and ("a","bc") differ.
                    Some(s) => {
                        key.push(1);
                        key.extend_from_slice(&(s.len() as u32).to_le_bytes());
                        key.extend_from_slice(s.as_bytes());
                    }
                    // Conditions only test strings' values; other types by their kind.
                    None => key.push(match v.type_name() {
                        "object" => 2,
                        "array" => 3,
                        "boolean" => 4,
                        _ => 5,
                    }),
                },
            }
        }
        if let Some(&(c, a)) = cache.get(key.as_slice()) {
            return Some((c as usize, a));
        }
        let decided = self.pick_class(run)?;
        // Bounded: a source with unbounded distinct values must not grow memory.
        if cache.len() < 65_536 {
            cache.insert(key.as_slice().into(), (decided.0 as u32, decided.1));
        }
        Some(decided)
    }

    /// Maps one record to one OCSF event, validated against its class schema, and encodes it
    /// into `out`. Returns the class uid.
    pub fn map<'t, 'i>(
        &self,
        input: Input<'t, 'i>,
        scratch: &mut Scratch,
        out: &mut Vec<u8>,
        mut red: Option<Redact<'_>>,
    ) -> Result<i64, RecordError> {
        scratch.used.clear();
        scratch.used.resize(self.trie.nodes.len(), false);
        if scratch.memo.len() < self.trie.nodes.len() {
            scratch.memo.resize(self.trie.nodes.len(), [0; 3]);
        }
        if scratch.whens.len() < self.when_count as usize {
            scratch.whens.resize(self.when_count as usize, (0, false));
        }
        scratch.generation = scratch.generation.wrapping_add(1);
        if scratch.generation == 0 {
            // After 2^32 records, old stamps could match again: start clean.
            scratch.memo.iter_mut().for_each(|m| *m = [0; 3]);
            scratch.whens.iter_mut().for_each(|w| *w = (0, false));
            scratch.generation = 1;
        }
        let scratch_slots = &mut scratch.slots;
        let decisions = &mut scratch.decisions;
        let key = &mut scratch.key;
        scratch.root_children.clear();
        let mut run = Run {
            input,
            root_children: Some(&mut scratch.root_children),
            used: &mut scratch.used,
            memo: &mut scratch.memo,
            whens: &mut scratch.whens,
            generation: scratch.generation,
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
        let Some((class_idx, activity)) = self.decide(&mut run, decisions, key) else {
            return Err(RecordError::new(
                ErrorCode::WrongShape,
                Stage::Map,
                format!(
                    "no class rule of {} matches this record; add a final [[class]] without `when`",
                    run.plan.origin
                ),
            ));
        };
        let class = &self.classes[class_idx];
        let info = class.info;
        let h = &class.header;
        let sk = &class.skeleton;
        let mut slots = Slots {
            vals: recycle(std::mem::take(&mut scratch_slots.0)),
            present: std::mem::take(&mut scratch_slots.1),
            written: std::mem::take(&mut scratch_slots.2),
            prefix: ("", 0),
        };
        if slots.vals.len() < sk.nodes.len() {
            slots.vals.resize_with(sk.nodes.len(), || None);
        }
        slots.written.clear();
        slots.present.clear();
        slots.present.resize(sk.nodes.len(), false);
        let result = (|| {
            let act_caption = info.activity_caption(activity).unwrap_or("Other");
            let type_name = class
                .type_names
                .iter()
                .find(|(a, _)| *a == activity)
                .map(|(_, n)| *n)
                .unwrap_or("");
            let s = |x: &'static str| Out::Str(Cow::Borrowed(x));
            match class.header_json.iter().find(|(a, _)| *a == activity) {
                Some((_, json)) => {
                    // Encoded once per class and activity when the plan was compiled.
                    for slot in h.leading() {
                        slots.present[slot as usize] = true;
                    }
                    slots.present[0] = true;
                    slots.prefix = (json, h.leading().len());
                }
                None => {
                    slots.put(sk, h.class_uid, Out::Int(info.uid));
                    slots.put(sk, h.class_name, s(info.caption));
                    slots.put(sk, h.category_uid, Out::Int(info.category_uid()));
                    slots.put(sk, h.category_name, s(info.category_caption));
                    slots.put(sk, h.activity_id, Out::Int(activity));
                    slots.put(sk, h.activity_name, s(act_caption));
                    slots.put(sk, h.type_uid, Out::Int(info.uid * 100 + activity));
                    slots.put(sk, h.type_name, s(type_name));
                }
            }
            for f in &class.fields {
                match &f.source {
                    SourceP::Paths(paths) if f.simple => {
                        run.assign_plain(f, paths, &mut slots, sk, None)?
                    }
                    SourceP::Const(_) if f.fixed => {}
                    SourceP::Const(c) if f.konst => run.assign_const(f, c, &mut slots, sk)?,
                    _ => run.assign(f, &mut Target::Slots(&mut slots, sk), None)?,
                }
            }
            for (id_slot, caption_slot, caption) in [
                (
                    h.severity_id,
                    h.severity,
                    ocsf::severity_caption as fn(i64) -> &'static str,
                ),
                (h.status_id, h.status, ocsf::status_caption),
            ] {
                if id_slot == NEVER || slots.has(caption_slot) {
                    continue;
                }
                if let Some(id) = slots.get(id_slot).and_then(Out::as_i64) {
                    slots.put(sk, caption_slot, s(caption(id)));
                }
            }
            // Leaves with the same value in every event are encoded in the skeleton.
            for &id in &class.fixed_present {
                slots.present[id as usize] = true;
            }
            if sk.nodes[h.version as usize].fixed.is_none() {
                slots.put(sk, h.version, s(OCSF_VERSION));
            }
            if sk.nodes[h.profiles as usize].fixed.is_none() {
                slots.put(sk, h.profiles, Out::Json(class.profiles_json));
            }
            if let Some(v) = slots.validate(sk, &class.schema) {
                return Err(RecordError::new(
                    ErrorCode::SchemaViolation,
                    Stage::Validate,
                    format!("{} {}: {v}", info.name, self.origin),
                ));
            }
            out.clear();
            // Where `metadata.labels` would go, found while encoding: a fired rule splices
            // the labels in there instead of encoding the event a second time.
            let spot_slot = if h.labels != NEVER && !slots.has(h.labels) && red.is_some() {
                h.labels
            } else {
                NEVER
            };
            let before = red.as_ref().map_or(0, |r| r.counts.total());
            let spot = slots.encode_watching(sk, out, red.as_mut(), spot_slot);
            run.append_unmapped(&input, &self.trie, out, &mut red);
            if let Some(r) = red.as_mut().filter(|r| r.counts.total() > before) {
                // A value is missing on purpose: say so in the event, and which rules fired.
                if h.labels != NEVER {
                    let mut labels = vec![s("redacted")];
                    for (rule, _) in r.counts.iter() {
                        labels.push(Out::Str(Cow::Owned(format!("redacted:{rule}"))));
                    }
                    let labels = Out::Arr(labels);
                    match spot {
                        Some((pos, first)) => {
                            splice_labels(out, pos, first, &sk.nodes[h.labels as usize], &labels, r)
                        }
                        None => {
                            // Labels already set by the table (or no place found): encode
                            // again; the second pass redacts the same values again and the
                            // counts are restored after it.
                            slots.put(sk, h.labels, labels);
                            let saved = r.counts.clone();
                            let mut again = red.take();
                            out.clear();
                            slots.encode(sk, out, again.as_mut());
                            run.append_unmapped(&input, &self.trie, out, &mut again);
                            if let Some(a) = again {
                                *a.counts = saved;
                            }
                        }
                    }
                }
            }
            Ok(info.uid)
        })();
        for &w in &slots.written {
            match slots.vals[w as usize].take() {
                // Nothing to free: skip the drop glue.
                v @ Some(Out::Raw(_) | Out::Int(_) | Out::Bool(_) | Out::Json(_)) => {
                    std::mem::forget(v)
                }
                v @ Some(Out::Str(Cow::Borrowed(_))) => std::mem::forget(v),
                v => drop(v),
            }
        }
        scratch_slots.0 = recycle(slots.vals);
        scratch_slots.1 = slots.present;
        scratch_slots.2 = slots.written;
        result
    }
}

/// Inserts `"labels":[...]` at `pos` of an encoded event, as the encoder would have written
/// it there (redacted like any other leaf, without counting: a second encode's counts were
/// thrown away).
fn splice_labels(
    out: &mut Vec<u8>,
    pos: usize,
    first: bool,
    node: &super::skeleton::SkelNode,
    labels: &Out<'_, '_>,
    r: &mut Redact<'_>,
) {
    let mut ins = Vec::with_capacity(96);
    if !first {
        ins.push(b',');
    }
    ins.extend_from_slice(node.key_json.as_bytes());
    if node.plain {
        labels.encode(&mut ins);
    } else {
        let mut scratch = crate::redact::RedactionCounts::default();
        let mut quiet = Redact {
            redactor: r.redactor,
            counts: &mut scratch,
            clean: r.clean.as_deref_mut(),
        };
        labels.encode_redacted(&mut ins, Some(&mut quiet));
    }
    if first && out.get(pos) != Some(&b'}') {
        ins.push(b',');
    }
    out.splice(pos..pos, ins);
}

/// Reuses the slot vector for values of another lifetime without touching its elements.
/// Every element is `None` (`map` empties the slots it wrote before handing the vector back),
/// so no value crosses lifetimes.
fn recycle<'a, 'b>(v: Vec<Option<Out<'a, 'a>>>) -> Vec<Option<Out<'b, 'b>>> {
    debug_assert!(v.iter().all(Option::is_none));
    let mut v = std::mem::ManuallyDrop::new(v);
    // SAFETY: same element type but for lifetimes (which do not change layout), the buffer,
    // length and capacity come from a live vector that is not used again, and every element
    // is `None`, which holds no reference of either lifetime.
    unsafe {
        Vec::from_raw_parts(
            v.as_mut_ptr().cast::<Option<Out<'b, 'b>>>(),
            v.len(),
            v.capacity(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The pre-encoded header of every built-in class and activity is what filling the header
    /// slots one by one and encoding them writes.
    #[test]
    fn pre_encoded_headers_and_fixed_leaves_match_slot_encoding() {
        let mappings = crate::mapping::Mappings::load(None).expect("built-in tables");
        let mut checked = 0;
        for plan in mappings.plans() {
            for class in &plan.classes {
                assert!(
                    !class.header_json.is_empty(),
                    "{} {}: no pre-encoded header",
                    plan.origin,
                    class.info.name
                );
                let (sk, h, info) = (&class.skeleton, &class.header, class.info);
                // Fixed leaves are present in every event, with their ancestors.
                assert_eq!(sk.nodes[h.version as usize].fixed, Some("\"1.8.0\""));
                for id in
                    (0..sk.nodes.len() as u32).filter(|&i| sk.nodes[i as usize].fixed.is_some())
                {
                    let mut a = id;
                    while a != NEVER {
                        assert!(
                            class.fixed_present.contains(&a),
                            "{} {}",
                            info.name,
                            sk.path(id)
                        );
                        a = sk.nodes[a as usize].parent;
                    }
                }
                for &(activity, json) in &class.header_json {
                    let mut slots = Slots {
                        vals: vec![None; sk.nodes.len()],
                        present: vec![false; sk.nodes.len()],
                        written: Vec::new(),
                        prefix: ("", 0),
                    };
                    let s = |x: &'static str| Out::Str(Cow::Borrowed(x));
                    let type_name = class
                        .type_names
                        .iter()
                        .find(|(a, _)| *a == activity)
                        .map_or("", |(_, n)| *n);
                    slots.put(sk, h.class_uid, Out::Int(info.uid));
                    slots.put(sk, h.class_name, s(info.caption));
                    slots.put(sk, h.category_uid, Out::Int(info.category_uid()));
                    slots.put(sk, h.category_name, s(info.category_caption));
                    slots.put(sk, h.activity_id, Out::Int(activity));
                    let caption = info.activity_caption(activity).unwrap_or("Other");
                    slots.put(sk, h.activity_name, s(caption));
                    slots.put(sk, h.type_uid, Out::Int(info.uid * 100 + activity));
                    slots.put(sk, h.type_name, s(type_name));
                    let mut out = Vec::new();
                    slots.encode(sk, &mut out, None);
                    assert_eq!(
                        String::from_utf8(out).unwrap(),
                        format!("{{{json}}}"),
                        "{} activity {activity}",
                        info.name
                    );
                    checked += 1;
                }
            }
        }
        assert!(checked > 20, "only {checked} headers checked");
    }

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

    /// The fast path gives the general parser's answer on every string it takes, valid or not
    /// (random dates around the edges: month 0 and 13, Feb 29, 24:00, second 60, fractions of
    /// 0 to 11 digits, other offsets).
    #[test]
    fn fast_rfc3339_agrees_with_the_time_crate() {
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        let mut fast = 0;
        for _ in 0..200_000 {
            let frac: String = (0..next(12))
                .map(|_| char::from(b'0' + next(10) as u8))
                .collect();
            let s = format!(
                "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}{}{}",
                1960 + next(150),
                next(14),
                next(33),
                next(26),
                next(62),
                next(62),
                if frac.is_empty() {
                    String::new()
                } else {
                    format!(".{frac}")
                },
                ["Z", "Z", "Z", "z", "+00:00", "-05:30"][next(6) as usize],
            );
            let expected = rfc3339_ms_general(&s);
            assert_eq!(parse_rfc3339_ms(&s), expected, "{s}");
            fast += usize::from(rfc3339_utc_fast(&s).is_some());
        }
        assert!(fast > 10_000, "the fast path took only {fast} strings");
    }
}
