//! The OCSF event under construction, and its encoding to one JSON line.
//!
//! An event is a small tree whose leaves mostly borrow from the parsed record (`Raw`, borrowed
//! strings), so building it costs a few vector pushes and encoding copies straight from the
//! input buffer.

use crate::json::{self, Src};
use crate::redact::{KeyMemo, KeyVerdict, MemberVerdict, RedactionCounts, Redactor, RuleId};
use std::borrow::Cow;

/// Redaction while encoding: every string of the event passes through the redactor, with the
/// source key it sits under (key, object and pair rules) where the value is a source subtree.
pub struct Redact<'a> {
    pub redactor: &'a Redactor,
    pub counts: &'a mut RedactionCounts,
    /// Long strings already found clean in this lane (user agents, ARNs, error messages repeat
    /// across an audit log); exact strings, bounded, so a hit is never a guess.
    pub clean: Option<&'a mut CleanCache>,
}

/// A lane's memory of redaction work: strings the text rules found nothing in, long ones
/// (looked up before any scan) and shorter ones the text filter fired on (looked up before
/// the anchor search), and the verdicts of the keys of copied source subtrees. Strings the
/// filter rejects outright are never stored, so unique ids do not churn the set.
#[derive(Default)]
pub struct CleanCache {
    set: rustc_hash::FxHashSet<Box<str>>,
    /// Key verdicts, for the keys of the source subtrees an event copies.
    keys: KeyMemo,
}

impl CleanCache {
    /// From this length hashing a string is cheaper than filtering it.
    const LONG: usize = 64;
    /// Shorter strings the filter fired on are cached from this length.
    const MIN_LEN: usize = 12;
    const MAX_ENTRIES: usize = 16_384;

    fn insert(&mut self, s: &str) {
        if self.set.len() >= Self::MAX_ENTRIES {
            self.set.clear();
        }
        self.set.insert(s.into());
    }
}

impl Redact<'_> {
    /// The same redaction, counting into `tally` instead: for a first pass over an object
    /// that may have to be written again once its object verdicts are known.
    #[inline]
    fn counting_into<'b>(&'b mut self, tally: &'b mut RedactionCounts) -> Redact<'b> {
        Redact {
            redactor: self.redactor,
            counts: tally,
            clean: self.clean.as_deref_mut(),
        }
    }

    /// This redaction for a shorter while (a callee that wants its own `Redact`).
    #[inline]
    pub fn reborrow(&mut self) -> Redact<'_> {
        Redact {
            redactor: self.redactor,
            counts: &mut *self.counts,
            clean: self.clean.as_deref_mut(),
        }
    }

    /// Key rule and trigger check of one source key, through the lane's memo.
    #[inline]
    pub fn key_verdict(&mut self, key: &str) -> KeyVerdict {
        match self.clean.as_deref_mut() {
            Some(c) => c.keys.verdict(self.redactor, key),
            None => self.redactor.key_verdict(key),
        }
    }

    /// The text rules on one string, through the lane's cache of known-clean strings.
    #[inline]
    pub fn text<'s>(&mut self, s: &'s str) -> Cow<'s, str> {
        if self.clean.is_none() {
            return self.redactor.redact_text(s, self.counts);
        }
        if s.len() >= CleanCache::LONG {
            return self.text_long(s);
        }
        if !self.redactor.text_might_match(s) {
            return Cow::Borrowed(s);
        }
        self.text_matched(s)
    }

    /// Writes `s` as a JSON string, redacted by the text rules.
    #[inline]
    pub fn write_text(&mut self, out: &mut Vec<u8>, s: &str) {
        match self.text(s) {
            Cow::Borrowed(s) => json::write_str(out, s),
            Cow::Owned(s) => json::write_str(out, &s),
        }
    }

    // Out of line: the hash lookup and the insertion would otherwise weigh on every short
    // string's call.
    #[inline(never)]
    fn text_long<'s>(&mut self, s: &'s str) -> Cow<'s, str> {
        let Some(cache) = self.clean.as_deref_mut() else {
            return self.redactor.redact_text(s, self.counts);
        };
        if cache.set.contains(s) {
            return Cow::Borrowed(s);
        }
        let out = self.redactor.redact_text(s, self.counts);
        if matches!(out, Cow::Borrowed(_)) {
            cache.insert(s);
        }
        out
    }

    /// A string the text filter fired on.
    #[inline(never)]
    fn text_matched<'s>(&mut self, s: &'s str) -> Cow<'s, str> {
        let cache = match self.clean.as_deref_mut() {
            Some(c) if s.len() >= CleanCache::MIN_LEN => c,
            _ => return self.redactor.redact_text_matched(s, self.counts),
        };
        if cache.set.contains(s) {
            return Cow::Borrowed(s);
        }
        let out = self.redactor.redact_text_matched(s, self.counts);
        if matches!(out, Cow::Borrowed(_)) {
            cache.insert(s);
        }
        out
    }
}

#[derive(Debug, Clone)]
pub enum Out<'t, 'i> {
    Str(Cow<'i, str>),
    Int(i64),
    Bool(bool),
    /// A source value copied as it is (null members and elements are dropped on output).
    Raw(Src<'t, 'i>),
    Obj(Vec<(&'i str, Out<'t, 'i>)>),
    Arr(Vec<Out<'t, 'i>>),
    /// Pre-encoded JSON, checked when the plan was compiled (e.g. `metadata.profiles`).
    Json(&'static str),
}

impl<'t, 'i> Out<'t, 'i> {
    pub fn obj() -> Self {
        Out::Obj(Vec::new())
    }

    /// Member of an object.
    pub fn get(&self, key: &str) -> Option<&Out<'t, 'i>> {
        match self {
            Out::Obj(m) => m.iter().find(|(k, _)| *k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    pub fn get_path(&self, path: &[&str]) -> Option<&Out<'t, 'i>> {
        let mut cur = self;
        for seg in path {
            cur = cur.get(seg)?;
        }
        Some(cur)
    }

    pub fn has_path(&self, path: &[&str]) -> bool {
        self.get_path(path).is_some()
    }

    /// Sets `path` to `v`, creating intermediate objects. An existing value is replaced.
    /// Returns false when an intermediate segment holds a non-object (the table assigns both a
    /// value and its fields, which plan compilation rejects, so this is defensive).
    pub fn set(&mut self, path: &[&'i str], v: Out<'t, 'i>) -> bool {
        let Some((last, parents)) = path.split_last() else {
            return false;
        };
        let mut cur = self;
        for seg in parents {
            let Out::Obj(members) = cur else {
                return false;
            };
            let pos = match members.iter().position(|(k, _)| k == seg) {
                Some(p) => p,
                None => {
                    members.push((seg, Out::obj()));
                    members.len() - 1
                }
            };
            cur = &mut members[pos].1;
        }
        let Out::Obj(members) = cur else {
            return false;
        };
        match members.iter_mut().find(|(k, _)| k == last) {
            Some(slot) => slot.1 = v,
            None => members.push((last, v)),
        }
        true
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Out::Str(s) => Some(s),
            Out::Raw(s) => s.as_str(),
            _ => None,
        }
    }

    pub fn as_i64(&self) -> Option<i64> {
        match self {
            Out::Int(i) => Some(*i),
            Out::Raw(s) => s.as_i64(),
            _ => None,
        }
    }

    /// Appends this value as JSON, redacted when `red` is given.
    #[inline]
    pub fn encode_redacted(&self, out: &mut Vec<u8>, red: Option<&mut Redact<'_>>) {
        let Some(r) = red else {
            return self.encode(out);
        };
        // The common leaf, a source string, without the dispatch below.
        if let Out::Raw(src) = self {
            if let Some(s) = src.as_str() {
                return r.write_text(out, s);
            }
        }
        self.encode_redacted_with(out, r)
    }

    fn encode_redacted_with(&self, out: &mut Vec<u8>, r: &mut Redact<'_>) {
        match self {
            Out::Str(s) => r.write_text(out, s),
            Out::Raw(src) => encode_src_redacted(out, *src, None, r),
            Out::Obj(members) => {
                out.push(b'{');
                for (n, (k, v)) in members.iter().enumerate() {
                    if n > 0 {
                        out.push(b',');
                    }
                    json::write_str(out, k);
                    out.push(b':');
                    v.encode_redacted_with(out, r);
                }
                out.push(b'}');
            }
            Out::Arr(items) => {
                out.push(b'[');
                for (n, v) in items.iter().enumerate() {
                    if n > 0 {
                        out.push(b',');
                    }
                    v.encode_redacted_with(out, r);
                }
                out.push(b']');
            }
            Out::Int(_) | Out::Bool(_) | Out::Json(_) => self.encode(out),
        }
    }

    /// Appends this value as JSON.
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Out::Str(s) => json::write_str(out, s),
            Out::Int(i) => json::write_i64(out, *i),
            Out::Bool(true) => out.extend_from_slice(b"true"),
            Out::Bool(false) => out.extend_from_slice(b"false"),
            Out::Raw(src) => encode_src(out, *src),
            Out::Json(j) => out.extend_from_slice(j.as_bytes()),
            Out::Obj(members) => {
                out.push(b'{');
                for (n, (k, v)) in members.iter().enumerate() {
                    if n > 0 {
                        out.push(b',');
                    }
                    json::write_str(out, k);
                    out.push(b':');
                    v.encode(out);
                }
                out.push(b'}');
            }
            Out::Arr(items) => {
                out.push(b'[');
                for (n, v) in items.iter().enumerate() {
                    if n > 0 {
                        out.push(b',');
                    }
                    v.encode(out);
                }
                out.push(b']');
            }
        }
    }
}

/// Copies a source value, dropping nulls (OCSF forbids them; they carry no content).
pub fn encode_src(out: &mut Vec<u8>, v: Src<'_, '_>) {
    if let Some(s) = v.as_str() {
        json::write_str(out, s);
    } else if let Some(st) = v.as_static() {
        json::write_static(out, st);
    } else if v.is_array() {
        out.push(b'[');
        let mut first = true;
        for x in v.elements().filter(|x| !x.is_null()) {
            if !first {
                out.push(b',');
            }
            first = false;
            encode_src(out, x);
        }
        out.push(b']');
    } else {
        out.push(b'{');
        let mut first = true;
        for (k, x) in v.members().filter(|(_, x)| !x.is_null()) {
            if !first {
                out.push(b',');
            }
            first = false;
            json::write_str(out, k);
            out.push(b':');
            encode_src(out, x);
        }
        out.push(b'}');
    }
}

/// `encode_src` with redaction: the same walk `Redactor::redact_json` does on a tree (object
/// and pair rules, key rules, `--flag value` pairs in arrays, text rules on every string), done
/// on the tape while writing, so an event costs no tree and no second pass.
pub fn encode_src_redacted(
    out: &mut Vec<u8>,
    v: Src<'_, '_>,
    parent: Option<&str>,
    r: &mut Redact<'_>,
) {
    if let Some(s) = v.as_str() {
        r.write_text(out, s);
    } else if let Some(st) = v.as_static() {
        json::write_static(out, st);
    } else if v.is_array() {
        out.push(b'[');
        let mut first = true;
        let mut pending: Option<RuleId> = None;
        for x in v.elements().filter(|x| !x.is_null()) {
            if !first {
                out.push(b',');
            }
            first = false;
            if let Some(rule) = pending.take() {
                // ["--db-password", "S3cret"]: the flag names the next element.
                if let Some(s) = x.as_str().filter(|s| !s.is_empty() && !s.starts_with('-')) {
                    let rep = r.redactor.replace_counted(rule, s, r.counts);
                    json::write_str(out, &rep);
                    continue;
                }
            }
            pending = x.as_str().and_then(|s| r.redactor.flag_element_rule(s));
            encode_src_redacted(out, x, parent, r);
        }
        out.push(b']');
    } else {
        write_object_redacted(out, r, parent, v, |out, r, verdicts| {
            (
                (),
                encode_members_redacted(out, v, r, verdicts.unwrap_or_default()),
            )
        });
    }
}

/// Writes the source object `v` through `pass`, which writes its members with the object's
/// verdicts when given them and says whether it saw a key that an object, path or pair rule
/// looks for.
///
/// Those rules see the whole object, so a member's verdict can depend on a key after it. The
/// first pass, without verdicts, notes the trigger keys; only an object that holds one gets
/// its verdicts, and only one with a verdict is written again. The first pass counts into
/// its own tally, kept only when it stands, so that nothing is counted twice.
pub fn write_object_redacted<T>(
    out: &mut Vec<u8>,
    r: &mut Redact<'_>,
    parent: Option<&str>,
    v: Src<'_, '_>,
    mut pass: impl FnMut(&mut Vec<u8>, &mut Redact<'_>, Option<&[(usize, MemberVerdict)]>) -> (T, bool),
) -> T {
    let start = out.len();
    let mut tally = RedactionCounts::default();
    let (written, triggered) = pass(out, &mut r.counting_into(&mut tally), None);
    if triggered {
        let verdicts = object_verdicts(r.redactor, parent, v);
        if !verdicts.is_empty() {
            out.truncate(start);
            return pass(out, r, Some(&verdicts)).0;
        }
    }
    if !tally.is_empty() {
        r.counts.merge(tally);
    }
    written
}

/// `Redactor::object_verdicts` on the members of the source object `v`, listed on the stack
/// when they are few: the objects that set off object and pair rules are mostly small, and
/// most get no verdict, so a heap list per object cost more than the rules.
fn object_verdicts(
    redactor: &Redactor,
    parent: Option<&str>,
    v: Src<'_, '_>,
) -> Vec<(usize, MemberVerdict)> {
    const FEW: usize = 16;
    if v.len() <= FEW {
        let mut members = [("", None); FEW];
        for (slot, (k, x)) in members.iter_mut().zip(v.members()) {
            *slot = (k, x.as_str());
        }
        redactor.object_verdicts(parent, &members[..v.len()])
    } else {
        let members: Vec<(&str, Option<&str>)> =
            v.members().map(|(k, x)| (k, x.as_str())).collect();
        redactor.object_verdicts(parent, &members)
    }
}

/// The object case of `encode_src_redacted` with the object's verdicts (in member order;
/// empty when none were computed). True when no verdicts were given and some key is one an
/// object, path or pair rule looks for.
fn encode_members_redacted(
    out: &mut Vec<u8>,
    v: Src<'_, '_>,
    r: &mut Redact<'_>,
    verdicts: &[(usize, MemberVerdict)],
) -> bool {
    let probe = verdicts.is_empty();
    let mut triggered = false;
    let mut verdicts = verdicts.iter().peekable();
    out.push(b'{');
    let mut first = true;
    for (i, (k, x)) in v.members().enumerate() {
        let kv = r.key_verdict(k);
        triggered |= probe && kv.trigger;
        if x.is_null() {
            continue;
        }
        if !first {
            out.push(b',');
        }
        first = false;
        json::write_str(out, k);
        out.push(b':');
        while verdicts.next_if(|v| v.0 < i).is_some() {}
        let verdict = verdicts.next_if(|v| v.0 == i).map(|v| v.1);
        match verdict {
            Some(MemberVerdict::Redact(rule)) => {
                encode_src_blanked(out, x, rule, r);
                continue;
            }
            // A reference to a secret: no key rule, text rules only.
            Some(MemberVerdict::Keep(_)) => {
                encode_src_redacted(out, x, Some(k), r);
                continue;
            }
            None => {}
        }
        if let Some(rule) = kv.rule {
            if !(r.redactor.descends_into_containers(rule) && (x.is_object() || x.is_array())) {
                encode_src_blanked(out, x, rule, r);
                continue;
            }
        }
        // Strings, the common member, without another call.
        match x.as_str() {
            Some(s) => r.write_text(out, s),
            None => encode_src_redacted(out, x, Some(k), r),
        }
    }
    out.push(b'}');
    triggered
}

/// Every leaf replaced by `rule`'s replacement (what a key rule does to the value under it);
/// empty strings hold nothing and stay.
pub fn encode_src_blanked(out: &mut Vec<u8>, v: Src<'_, '_>, rule: RuleId, r: &mut Redact<'_>) {
    if let Some(s) = v.as_str() {
        if s.is_empty() {
            out.extend_from_slice(b"\"\"");
        } else {
            let rep = r.redactor.replace_counted(rule, s, r.counts);
            json::write_str(out, &rep);
        }
    } else if let Some(st) = v.as_static() {
        let mut text = Vec::new();
        json::write_static(&mut text, st);
        let rep = r
            .redactor
            .replace_counted(rule, &String::from_utf8_lossy(&text), r.counts);
        json::write_str(out, &rep);
    } else if v.is_array() {
        out.push(b'[');
        for (n, x) in v.elements().filter(|x| !x.is_null()).enumerate() {
            if n > 0 {
                out.push(b',');
            }
            encode_src_blanked(out, x, rule, r);
        }
        out.push(b']');
    } else {
        out.push(b'{');
        for (n, (k, x)) in v.members().filter(|(_, x)| !x.is_null()).enumerate() {
            if n > 0 {
                out.push(b',');
            }
            json::write_str(out, k);
            out.push(b':');
            encode_src_blanked(out, x, rule, r);
        }
        out.push(b'}');
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_creates_parents_and_encode_drops_nulls() {
        let mut buf = br#"{"a":null,"b":[1,null,"x"],"c":{"d":null}}"#.to_vec();
        let tape = simd_json::to_tape(&mut buf).unwrap();
        let root = Src::root(&tape);
        let mut ev = Out::obj();
        assert!(ev.set(&["x", "y", "z"], Out::Int(1)));
        assert!(ev.set(&["x", "w"], Out::Str("s".into())));
        assert!(ev.set(&["x", "y", "z"], Out::Int(2)));
        assert!(ev.set(&["raw"], Out::Raw(root)));
        let mut out = Vec::new();
        ev.encode(&mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            r#"{"x":{"y":{"z":2},"w":"s"},"raw":{"b":[1,"x"],"c":{}}}"#
        );
    }

    fn encode_redacted_json(
        json: &str,
        cache: Option<&mut CleanCache>,
    ) -> (String, RedactionCounts) {
        let mut buf = json.as_bytes().to_vec();
        let tape = simd_json::to_tape(&mut buf).unwrap();
        let redactor = Redactor::builtin();
        let mut counts = RedactionCounts::default();
        let mut r = Redact {
            redactor: &redactor,
            counts: &mut counts,
            clean: cache,
        };
        let mut out = Vec::new();
        encode_src_redacted(&mut out, Src::root(&tape), None, &mut r);
        (String::from_utf8(out).unwrap(), counts)
    }

    #[test]
    fn a_verdict_set_off_by_a_later_key_redacts_the_member_before_it_and_counts_once() {
        // The pair rule's name comes after the value it condemns, and a text rule fires in
        // the same object: the object is written twice, and its counts must not be.
        let json = r#"{"note":"curl -u admin:hunter2 https://example.com","value":"s3cr3t-v4lue","name":"DB_PASSWORD","nested":{"password":"p4ss"}}"#;
        for cache in [None, Some(&mut CleanCache::default())] {
            let (out, counts) = encode_redacted_json(json, cache);
            assert!(!out.contains("s3cr3t-v4lue"), "{out}");
            assert!(!out.contains("hunter2"), "{out}");
            assert!(!out.contains("p4ss"), "{out}");
            assert!(out.contains(r#""name":"DB_PASSWORD""#), "{out}");
            // One replacement per secret: the value, the password in the command line and
            // the nested key rule.
            assert_eq!(counts.total(), 3, "{out} {:?}", counts);
        }
    }

    #[test]
    fn object_rules_see_every_member_of_a_large_object() {
        // Past the members listed on the stack: the pair's name is the 20th member.
        let mut members: Vec<String> = (0..18).map(|i| format!(r#""m{i}":"v{i}""#)).collect();
        members.push(r#""value":"s3cr3t-v4lue""#.into());
        members.push(r#""name":"DB_PASSWORD""#.into());
        let (out, counts) = encode_redacted_json(
            &format!("{{{}}}", members.join(",")),
            Some(&mut CleanCache::default()),
        );
        assert!(!out.contains("s3cr3t-v4lue"), "{out}");
        assert!(out.contains(r#""m17":"v17""#), "{out}");
        assert_eq!(counts.total(), 1, "{out} {:?}", counts);
    }

    #[test]
    fn an_object_without_trigger_keys_is_written_once_with_its_counts() {
        let json = r#"{"sessionToken":"FwoGZXIvYXdzEJr","ok":"plain text","list":[{"password":"a1b2c3"}]}"#;
        let (out, counts) = encode_redacted_json(json, Some(&mut CleanCache::default()));
        assert!(
            !out.contains("FwoGZXIvYXdzEJr") && !out.contains("a1b2c3"),
            "{out}"
        );
        assert!(out.contains(r#""ok":"plain text""#), "{out}");
        assert_eq!(counts.total(), 2, "{out} {:?}", counts);
    }
}
