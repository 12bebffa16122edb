//! Compiling a mapping table into a plan: every path resolved against the OCSF schema of each
//! class it can land in, every source path interned in one trie (so the engine can tell which
//! source fields it used), regexes compiled, lookups indexed. A table that does not compile is
//! a startup error naming the file, the line and what is wrong.

use super::extract::Extract;
use super::skeleton::{Skeleton, NEVER};
use super::table::{self, Cond, Field, LookupRef, OneOrMany, Table};
use crate::event::Out;
use crate::ocsf::schema::{ClassSchema, LeafKind};
use crate::ocsf::{self, ClassInfo};
use crate::record::SourceKind;
use regex::Regex;
use std::collections::HashMap;
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
#[error("{file}:{line}: {message}")]
pub struct TableError {
    pub file: String,
    pub line: usize,
    pub message: String,
}

/// Strings of a plan live as long as the process: plans are compiled once at start.
fn leak(s: &str) -> &'static str {
    Box::leak(s.to_string().into_boxed_str())
}

/// A node of the source-path trie. Node 0 is the record root, node 1 the carrier root.
#[derive(Debug, Default)]
pub struct TrieNode {
    pub children: Vec<(&'static str, u32)>,
    /// The node this one hangs from and the key leading here (roots: themselves, "").
    pub parent: u32,
    pub key: &'static str,
    /// Index of `children` for nodes with many of them (the record root): buckets keyed by
    /// length and first and last byte, so a lookup compares one or two keys, no hashing.
    pub index: Option<Box<Buckets>>,
}

#[derive(Debug, Default)]
pub struct Trie {
    pub nodes: Vec<TrieNode>,
    /// Redaction verdicts on each node's key, computed once for the first redactor that
    /// asks (in practice the only one): writing `unmapped` then reads them instead of
    /// running the key filters on every member of every record.
    pub key_verdicts: std::sync::OnceLock<KeyVerdicts>,
}

/// What a redactor says about a trie node's key, by node id.
#[derive(Debug)]
pub struct KeyVerdicts {
    redactor: crate::redact::Redactor,
    pub nodes: Vec<NodeVerdict>,
}

#[derive(Debug, Clone, Copy)]
pub struct NodeVerdict {
    /// The key checks on this node's key.
    pub key: crate::redact::KeyVerdict,
    /// Some child's key is a trigger: members of this node's object with a trie node of
    /// their own need no trigger check when it is false.
    pub children_trigger: bool,
}

pub const RECORD_ROOT: u32 = 0;
pub const CARRIER_ROOT: u32 = 1;
pub const ELEMENT_ROOT: u32 = 2;

/// Trie children by `bucket(key)`.
pub type Buckets = [Vec<(&'static str, u32)>; 64];

#[inline(always)]
fn bucket(key: &str) -> usize {
    let b = key.as_bytes();
    match (b.first(), b.last()) {
        (Some(f), Some(l)) => (b.len() * 7 + *f as usize * 3 + *l as usize) & 63,
        _ => 0,
    }
}

impl Trie {
    fn new() -> Trie {
        Trie {
            nodes: vec![
                TrieNode::default(),
                TrieNode::default(),
                TrieNode::default(),
            ],
            key_verdicts: std::sync::OnceLock::new(),
        }
    }

    /// The key verdicts of `r`, when it is the redactor they were computed for.
    #[inline]
    pub fn key_verdicts(&self, r: &crate::redact::Redactor) -> Option<&[NodeVerdict]> {
        let v = self.key_verdicts.get_or_init(|| {
            let keys: Vec<_> = self.nodes.iter().map(|n| r.key_verdict(n.key)).collect();
            KeyVerdicts {
                redactor: r.clone(),
                nodes: self
                    .nodes
                    .iter()
                    .zip(&keys)
                    .map(|(n, &key)| NodeVerdict {
                        key,
                        children_trigger: n.children.iter().any(|&(_, c)| keys[c as usize].trigger),
                    })
                    .collect(),
            }
        });
        v.redactor.same_rules(r).then_some(v.nodes.as_slice())
    }

    fn intern(&mut self, from: u32, segs: &[&'static str]) -> u32 {
        let mut cur = from;
        for seg in segs {
            let next = self.nodes[cur as usize]
                .children
                .iter()
                .find(|(k, _)| k == seg)
                .map(|(_, id)| *id);
            cur = match next {
                Some(id) => id,
                None => {
                    let id = self.nodes.len() as u32;
                    self.nodes.push(TrieNode {
                        children: Vec::new(),
                        parent: cur,
                        key: seg,
                        index: None,
                    });
                    self.nodes[cur as usize].children.push((seg, id));
                    id
                }
            };
        }
        cur
    }

    // Always inlined: as a call (which the compiler chose or not from one build to the next)
    // it cost ~1.5k instructions per CloudTrail record.
    #[inline(always)]
    pub fn child(&self, node: u32, key: &str) -> Option<u32> {
        let n = &self.nodes[node as usize];
        let candidates = match &n.index {
            Some(ix) => &ix[bucket(key)],
            None => &n.children,
        };
        // A plain loop: `Iterator::find` here was sometimes left as an out-of-line call.
        for &(k, id) in candidates {
            if crate::json::key_eq(k, key) {
                return Some(id);
            }
        }
        None
    }

    pub fn is_leaf(&self, node: u32) -> bool {
        self.nodes[node as usize].children.is_empty()
    }
}

/// Which document a source path starts from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Root {
    /// The record (or, inside `each`, the current element).
    Record,
    /// The envelope the record came in: `@carrier.` paths.
    Carrier,
    /// The carrier's list element around the record: `@element.` paths.
    Element,
}

/// A source path: segments from a base (the record, the carrier, or an `each` element).
#[derive(Debug, Clone)]
pub struct SrcPath {
    pub text: &'static str,
    pub root: Root,
    pub segs: Vec<&'static str>,
    pub node: u32,
}

#[derive(Debug)]
pub enum Test {
    In(Vec<String>),
    /// Prefix lists bucketed by first byte: activity rules list dozens of verbs.
    PrefixByByte(Box<[Vec<String>; 256]>),
    /// Long `in` lists (class selection by eventName) are hashed.
    InSet(rustc_hash::FxHashSet<String>),
    Prefix(Vec<String>),
    Suffix(Vec<String>),
    Contains(Vec<String>),
    Matches(Regex),
    Exists(bool),
    Type(&'static str),
}

#[derive(Debug)]
pub enum CondP {
    Test {
        path: SrcPath,
        test: Test,
        ignore_case: bool,
    },
    All(Vec<CondP>),
    Any(Vec<CondP>),
    Not(Box<CondP>),
}

#[derive(Debug, Clone)]
pub enum ConstV {
    Str(&'static str),
    Int(i64),
    Bool(bool),
    StrList(Vec<&'static str>),
}

#[derive(Debug)]
pub struct LookupP {
    pub values: rustc_hash::FxHashMap<String, ConstV>,
    pub ignore_case: bool,
    pub default: Option<ConstV>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transform {
    None,
    /// RFC 3339 string (or epoch number) to integer epoch milliseconds.
    EpochMs,
    /// An RFC 3339 string as OCSF `datetime_t` (copied when it already conforms).
    Datetime,
    /// Accepts an IP address; anything else is rejected (see `otherwise`).
    Ip,
    /// "true"/"false"/"yes"/"no" (any case) or a JSON boolean.
    Bool,
    /// Any scalar as a string.
    String,
    Lower,
    /// First element of an array (consumes the array only when it has at most one element).
    First,
    /// All but the first element of an array.
    Rest,
    /// true when the source is present (and not null).
    Present,
}

impl Transform {
    fn parse(s: &str) -> Option<Transform> {
        Some(match s {
            "epoch_ms" => Transform::EpochMs,
            "datetime" => Transform::Datetime,
            "ip" => Transform::Ip,
            "bool" => Transform::Bool,
            "string" => Transform::String,
            "lower" => Transform::Lower,
            "first" => Transform::First,
            "rest" => Transform::Rest,
            "present" => Transform::Present,
            _ => return None,
        })
    }
    const NAMES: &'static str = "epoch_ms, datetime, ip, bool, string, lower, first, rest, present";
}

#[derive(Debug)]
pub enum Piece {
    Lit(&'static str),
    Path(SrcPath),
}

#[derive(Debug)]
pub enum SourceP {
    Paths(Vec<SrcPath>),
    Const(ConstV),
    Template(Vec<Piece>),
    Join(Vec<SrcPath>, &'static str),
    Each {
        path: SrcPath,
        fields: Vec<FieldP>,
        /// An element field reads the element itself (`from = "."`): the array is consumed.
        whole: bool,
    },
}

#[derive(Debug)]
pub struct FieldP {
    pub line: usize,
    pub to_text: &'static str,
    pub to: Vec<&'static str>,
    pub kind: LeafKind,
    pub source: SourceP,
    pub transform: Transform,
    pub extract: Option<Extract>,
    pub lookup: Option<Arc<LookupP>>,
    pub default: Option<ConstV>,
    pub otherwise: Option<(Vec<&'static str>, LeafKind)>,
    pub when: Option<CondP>,
    /// Skeleton leaves of `to` and `otherwise` (NEVER inside `each`, which builds trees).
    pub slot: u32,
    pub otherwise_slot: u32,
    /// The values this field writes may violate the schema in ways coercion cannot rule out.
    pub check: bool,
    /// `from` alone: the engine copies the first present path, nothing else to do.
    pub simple: bool,
    /// `value`, maybe with `when`, and nothing else: the engine writes the constant.
    pub konst: bool,
    /// An unconditional constant encoded in the skeleton (`SkelNode::fixed`): skipped per record.
    pub fixed: bool,
    /// The `when` condition's id: fields with the same condition share one, so that a record
    /// evaluates it once (`Plan::when_count` ids; u32::MAX without `when`).
    pub when_id: u32,
}

/// Skeleton slots the engine itself writes.
#[derive(Debug, Clone, Copy)]
pub struct Header {
    pub class_uid: u32,
    pub class_name: u32,
    pub category_uid: u32,
    pub category_name: u32,
    pub activity_id: u32,
    pub activity_name: u32,
    pub type_uid: u32,
    pub type_name: u32,
    pub severity_id: u32,
    pub severity: u32,
    pub status_id: u32,
    pub status: u32,
    pub version: u32,
    pub profiles: u32,
    /// `metadata.labels`: set when redaction removed a value from the event.
    pub labels: u32,
}

impl Header {
    /// The class and activity attributes, in the order OCSF lists them first in an event.
    pub fn leading(&self) -> [u32; 8] {
        [
            self.class_uid,
            self.class_name,
            self.category_uid,
            self.category_name,
            self.activity_id,
            self.activity_name,
            self.type_uid,
            self.type_name,
        ]
    }

    /// The slots only the engine writes, with constants (no source text can reach them).
    fn engine_written(&self) -> impl Iterator<Item = u32> {
        let rest = [
            self.severity,
            self.status,
            self.version,
            self.profiles,
            self.labels,
        ];
        self.leading().into_iter().chain(rest)
    }
}

#[derive(Debug)]
pub struct ClassP {
    pub info: &'static ClassInfo,
    pub schema: Arc<ClassSchema>,
    pub when: Option<CondP>,
    pub activities: Vec<(Option<CondP>, i64)>,
    /// The class's own fields, then the table's common fields.
    pub fields: Vec<FieldP>,
    pub skeleton: Skeleton,
    pub header: Header,
    /// `type_name` per activity id, built once.
    pub type_names: Vec<(i64, &'static str)>,
    /// `metadata.profiles` pre-encoded.
    pub profiles_json: &'static str,
    /// Per activity id: the header attributes (`Header::leading`) encoded as the event's first
    /// members. Empty when they are not the skeleton's first root children or a field also
    /// writes one of them; the engine then fills their slots one by one.
    pub header_json: Vec<(i64, &'static str)>,
    /// The fixed leaves (`SkelNode::fixed`) and their ancestors: present in every event.
    pub fixed_present: Vec<u32>,
}

#[derive(Debug)]
pub struct Plan {
    pub source: SourceKind,
    pub origin: String,
    pub detect: CondP,
    pub require: Vec<(CondP, String)>,
    pub classes: Vec<ClassP>,
    pub trie: Trie,
    pub profiles: Vec<&'static str>,
    /// The record fields the class and activity rules read. When they are few, plain record
    /// paths, the (class, activity) decision is a function of their values and is cached per
    /// lane: CloudTrail decides by eventName alone, and there are only so many eventNames.
    pub decision_keys: Option<Vec<SrcPath>>,
    /// Distinguishes plans in a lane's decision cache.
    pub id: u32,
    /// Distinct `when` conditions of the fields (`FieldP::when_id`).
    pub when_count: u32,
}

/// Encodes into the skeleton the leaves every event of the class gets with the same value:
/// unconditional constants that are their slot's only writer, and the engine's
/// `metadata.version` and `metadata.profiles`. Marks those fields `fixed` and returns the nodes
/// each event marks present for them (the leaves and their ancestors).
fn fix_constants(
    sk: &mut Skeleton,
    h: &Header,
    fields: &mut [FieldP],
    profiles_json: &'static str,
) -> Vec<u32> {
    let mut writers = vec![0u32; sk.nodes.len()];
    for f in fields.iter() {
        for slot in [f.slot, f.otherwise_slot] {
            if slot != NEVER {
                writers[slot as usize] += 1;
            }
        }
    }
    // The engine reads or writes these itself.
    let engine = [h.severity_id, h.severity, h.status_id, h.status, h.labels];
    let mut fixed = Vec::new();
    for f in fields.iter_mut() {
        let SourceP::Const(c) = &f.source else {
            continue;
        };
        if !f.konst
            || f.when.is_some()
            || f.slot == NEVER
            || writers[f.slot as usize] != 1
            || engine.contains(&f.slot)
            || h.leading().contains(&f.slot)
        {
            continue;
        }
        let value = match c {
            ConstV::Str(s) => Out::Str((*s).into()),
            ConstV::Int(i) => Out::Int(*i),
            ConstV::Bool(b) => Out::Bool(*b),
            ConstV::StrList(l) => Out::Arr(l.iter().map(|s| Out::Str((*s).into())).collect()),
        };
        // A constant the engine would reject at run time stays a per-record field, so that
        // every record still gets that error.
        let Ok(value) = super::engine::coerce(value, f.kind) else {
            continue;
        };
        let mut json = Vec::new();
        value.encode(&mut json);
        f.fixed = true;
        fixed.push((f.slot, json));
    }
    for (slot, value) in [
        (h.version, Out::Str(ocsf::OCSF_VERSION.into())),
        (h.profiles, Out::Json(profiles_json)),
    ] {
        if slot != NEVER && writers[slot as usize] == 0 {
            let mut json = Vec::new();
            value.encode(&mut json);
            fixed.push((slot, json));
        }
    }
    let mut present = vec![false; sk.nodes.len()];
    for (slot, json) in fixed {
        sk.nodes[slot as usize].fixed = Some(leak(&String::from_utf8_lossy(&json)));
        let mut id = slot;
        while id != NEVER && !present[id as usize] {
            present[id as usize] = true;
            id = sk.nodes[id as usize].parent;
        }
    }
    (0..sk.nodes.len() as u32)
        .filter(|&id| present[id as usize])
        .collect()
}

/// Gives each field's `when` an id, the same for conditions that are written the same (their
/// compiled form, paths included, prints the same); `each` sub-fields too.
fn number_whens(fields: &mut [FieldP], ids: &mut HashMap<String, u32>) {
    for f in fields {
        if let Some(w) = &f.when {
            let next = ids.len() as u32;
            f.when_id = *ids.entry(format!("{w:?}")).or_insert(next);
        }
        if let SourceP::Each { fields, .. } = &mut f.source {
            number_whens(fields, ids);
        }
    }
}

/// `ClassP::header_json`: what encoding the header slots would write, per activity.
fn header_json(
    info: &'static ClassInfo,
    sk: &Skeleton,
    h: &Header,
    type_names: &[(i64, &'static str)],
) -> Vec<(i64, &'static str)> {
    let leading = h.leading();
    let root = &sk.nodes[0].children;
    let fits = root.len() >= leading.len()
        && root[..leading.len()] == leading
        && leading.iter().all(|&id| {
            let n = &sk.nodes[id as usize];
            n.leaf && !n.sourced
        });
    if !fits {
        return Vec::new();
    }
    let s = |x: &'static str| Out::Str(std::borrow::Cow::Borrowed(x));
    info.activities
        .iter()
        .map(|&(activity, caption)| {
            let type_name = type_names
                .iter()
                .find(|(a, _)| *a == activity)
                .map_or("", |(_, n)| *n);
            let values = [
                Out::Int(info.uid),
                s(info.caption),
                Out::Int(info.category_uid()),
                s(info.category_caption),
                Out::Int(activity),
                s(caption),
                Out::Int(info.uid * 100 + activity),
                s(type_name),
            ];
            let mut json = Vec::new();
            for (n, (&slot, v)) in leading.iter().zip(&values).enumerate() {
                if n > 0 {
                    json.push(b',');
                }
                json.extend_from_slice(sk.nodes[slot as usize].key_json.as_bytes());
                v.encode(&mut json);
            }
            (activity, leak(&String::from_utf8_lossy(&json)))
        })
        .collect()
}

fn collect_paths(c: &CondP, out: &mut Vec<SrcPath>) -> bool {
    match c {
        CondP::All(v) | CondP::Any(v) => v.iter().all(|x| collect_paths(x, out)),
        CondP::Not(x) => collect_paths(x, out),
        CondP::Test { path, .. } => {
            if path.root != Root::Record || path.segs.iter().any(|s| s.parse::<usize>().is_ok()) {
                return false;
            }
            if !out.iter().any(|p| p.node == path.node) {
                out.push(path.clone());
            }
            true
        }
    }
}

struct Compiler<'a> {
    file: &'a str,
    text: &'a str,
    trie: Trie,
    lookups: HashMap<String, Arc<LookupP>>,
    schemas: HashMap<&'static str, Arc<ClassSchema>>,
}

fn line_of(text: &str, offset: usize) -> usize {
    memchr::memchr_iter(b'\n', &text.as_bytes()[..offset.min(text.len())]).count() + 1
}

/// Splits `a.b."c.d".e` into segments; quotes allow dots inside a key.
pub fn split_path(p: &str) -> Result<Vec<String>, String> {
    let mut segs = Vec::new();
    let mut cur = String::new();
    let mut chars = p.chars().peekable();
    let mut quoted_seg = false;
    while let Some(c) = chars.next() {
        match c {
            '"' if cur.is_empty() && !quoted_seg => {
                quoted_seg = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some(ch) => cur.push(ch),
                        None => return Err(format!("unclosed quote in path `{p}`")),
                    }
                }
            }
            '.' => {
                if cur.is_empty() && !quoted_seg {
                    return Err(format!("empty segment in path `{p}`"));
                }
                segs.push(std::mem::take(&mut cur));
                quoted_seg = false;
            }
            _ if quoted_seg => return Err(format!("text after a quoted segment in `{p}`")),
            _ => cur.push(c),
        }
    }
    if cur.is_empty() && !quoted_seg {
        return Err(format!("empty segment in path `{p}`"));
    }
    segs.push(cur);
    Ok(segs)
}

impl Compiler<'_> {
    fn err(&self, line: usize, message: impl Into<String>) -> TableError {
        TableError {
            file: self.file.to_string(),
            line,
            message: message.into(),
        }
    }

    fn line<T>(&self, s: &toml::Spanned<T>) -> usize {
        line_of(self.text, s.span().start)
    }

    fn src_path(&mut self, p: &str, base: u32, line: usize) -> Result<SrcPath, TableError> {
        let (root, rest) = if let Some(r) = p.strip_prefix("@carrier.") {
            (Root::Carrier, r)
        } else if let Some(r) = p.strip_prefix("@element.") {
            (Root::Element, r)
        } else {
            (Root::Record, p)
        };
        if rest == "." || rest.is_empty() {
            return Ok(SrcPath {
                text: leak(p),
                root,
                segs: Vec::new(),
                node: base,
            });
        }
        let segs: Vec<&'static str> = split_path(rest)
            .map_err(|e| self.err(line, e))?
            .iter()
            .map(|s| leak(s))
            .collect();
        let start = match root {
            Root::Carrier => CARRIER_ROOT,
            Root::Element => ELEMENT_ROOT,
            Root::Record => base,
        };
        let node = self.trie.intern(start, &segs);
        Ok(SrcPath {
            text: leak(p),
            root,
            segs,
            node,
        })
    }

    fn cond(&mut self, c: &Cond, base: u32, line: usize) -> Result<CondP, TableError> {
        let combos = [c.all.is_some(), c.any.is_some(), c.not.is_some()];
        let tests = [
            c.one_of.is_some(),
            c.eq.is_some(),
            c.prefix.is_some(),
            c.suffix.is_some(),
            c.contains.is_some(),
            c.matches.is_some(),
            c.exists.is_some(),
            c.json_type.is_some(),
        ];
        let n_combo = combos.iter().filter(|x| **x).count();
        let n_test = tests.iter().filter(|x| **x).count();
        if n_combo + n_test != 1 {
            return Err(self.err(
                line,
                "a condition needs exactly one of: in, eq, prefix, suffix, contains, matches, \
                 exists, type, all, any, not",
            ));
        }
        if let Some(list) = &c.all {
            return Ok(CondP::All(
                list.iter()
                    .map(|x| self.cond(x, base, line))
                    .collect::<Result<_, _>>()?,
            ));
        }
        if let Some(list) = &c.any {
            return Ok(CondP::Any(
                list.iter()
                    .map(|x| self.cond(x, base, line))
                    .collect::<Result<_, _>>()?,
            ));
        }
        if let Some(x) = &c.not {
            return Ok(CondP::Not(Box::new(self.cond(x, base, line)?)));
        }
        let field = c
            .field
            .as_deref()
            .ok_or_else(|| self.err(line, "a condition test needs `field`"))?;
        let path = self.src_path(field, base, line)?;
        let norm = |v: &Vec<String>| -> Vec<String> {
            if c.ignore_case {
                v.iter().map(|s| s.to_ascii_lowercase()).collect()
            } else {
                v.clone()
            }
        };
        let test = if let Some(v) = &c.one_of {
            if v.len() > 6 {
                Test::InSet(norm(v).into_iter().collect())
            } else {
                Test::In(norm(v))
            }
        } else if let Some(v) = &c.eq {
            Test::In(norm(&vec![v.clone()]))
        } else if let Some(v) = &c.prefix {
            let v = norm(v);
            if v.len() > 6 && v.iter().all(|p| !p.is_empty()) {
                let mut buckets: Box<[Vec<String>; 256]> =
                    Box::new(std::array::from_fn(|_| Vec::new()));
                for p in v {
                    buckets[p.as_bytes()[0] as usize].push(p);
                }
                Test::PrefixByByte(buckets)
            } else {
                Test::Prefix(v)
            }
        } else if let Some(v) = &c.suffix {
            Test::Suffix(norm(v))
        } else if let Some(v) = &c.contains {
            Test::Contains(norm(v))
        } else if let Some(re) = &c.matches {
            let re = if c.ignore_case {
                format!("(?i){re}")
            } else {
                re.clone()
            };
            Test::Matches(Regex::new(&re).map_err(|e| self.err(line, format!("bad regex: {e}")))?)
        } else if let Some(e) = c.exists {
            Test::Exists(e)
        } else {
            let t = c.json_type.as_deref().unwrap_or_default();
            match t {
                "string" | "number" | "boolean" | "object" | "array" => Test::Type(leak(t)),
                other => {
                    return Err(self.err(
                        line,
                        format!("unknown type `{other}` (string, number, boolean, object, array)"),
                    ))
                }
            }
        };
        Ok(CondP::Test {
            path,
            test,
            ignore_case: c.ignore_case,
        })
    }

    fn constant(&self, v: &toml::Value, line: usize) -> Result<ConstV, TableError> {
        Ok(match v {
            toml::Value::String(s) => ConstV::Str(leak(s)),
            toml::Value::Integer(i) => ConstV::Int(*i),
            toml::Value::Boolean(b) => ConstV::Bool(*b),
            toml::Value::Array(a) if a.iter().all(|x| x.is_str()) => {
                ConstV::StrList(a.iter().filter_map(|x| x.as_str()).map(leak).collect())
            }
            other => {
                return Err(self.err(
                    line,
                    format!(
                        "constant {other} is not a string, integer, boolean or list of strings"
                    ),
                ))
            }
        })
    }

    fn lookup(&self, l: &table::Lookup, line: usize) -> Result<LookupP, TableError> {
        let mut values = rustc_hash::FxHashMap::default();
        for (k, v) in &l.values {
            let key = if l.ignore_case {
                k.to_ascii_lowercase()
            } else {
                k.clone()
            };
            values.insert(key, self.constant(v, line)?);
        }
        Ok(LookupP {
            values,
            ignore_case: l.ignore_case,
            default: l
                .default
                .as_ref()
                .map(|d| self.constant(d, line))
                .transpose()?,
        })
    }

    fn resolve(
        &self,
        schema: &ClassSchema,
        prefix: &[&'static str],
        path: &str,
        line: usize,
    ) -> Result<(Vec<&'static str>, LeafKind), TableError> {
        let segs: Vec<&'static str> = split_path(path)
            .map_err(|e| self.err(line, e))?
            .iter()
            .map(|s| leak(s))
            .collect();
        let full: Vec<&str> = prefix.iter().chain(segs.iter()).copied().collect();
        let kind = schema
            .resolve(&full.join("."))
            .map_err(|e| self.err(line, e))?;
        Ok((segs, kind))
    }

    fn field(
        &mut self,
        f: &Field,
        schema: &ClassSchema,
        prefix: &[&'static str],
        base: u32,
    ) -> Result<FieldP, TableError> {
        let line = self.line(&f.to);
        // `to = "."` inside `each`: the element itself is the array item (arrays of strings).
        let (to, kind) = if f.to.get_ref() == "." && !prefix.is_empty() {
            let kind = schema
                .resolve_items(&prefix.join("."))
                .map_err(|e| self.err(line, e))?;
            (Vec::new(), kind)
        } else {
            self.resolve(schema, prefix, f.to.get_ref(), line)?
        };
        let sources = [
            f.from.is_some(),
            f.value.is_some(),
            f.template.is_some(),
            f.join.is_some(),
            f.each.is_some(),
        ]
        .iter()
        .filter(|x| **x)
        .count();
        if sources != 1 {
            return Err(self.err(
                line,
                format!(
                    "`{}` needs exactly one of: from, value, template, join, each",
                    f.to.get_ref()
                ),
            ));
        }
        if f.fields.is_some() != f.each.is_some() {
            return Err(self.err(line, "`each` and `fields` go together"));
        }
        let source = if let Some(from) = &f.from {
            let paths = match from {
                OneOrMany::One(_) | OneOrMany::Many(_) => from.to_vec(),
            };
            if paths.is_empty() {
                return Err(self.err(line, "`from` is empty"));
            }
            SourceP::Paths(
                paths
                    .iter()
                    .map(|p| self.src_path(p, base, line))
                    .collect::<Result<_, _>>()?,
            )
        } else if let Some(v) = &f.value {
            SourceP::Const(self.constant(v, line)?)
        } else if let Some(t) = &f.template {
            SourceP::Template(self.template(t, base, line)?)
        } else if let Some(j) = &f.join {
            let sep = leak(f.sep.as_deref().unwrap_or(""));
            SourceP::Join(
                j.iter()
                    .map(|p| self.src_path(p, base, line))
                    .collect::<Result<_, _>>()?,
                sep,
            )
        } else {
            let each = f.each.as_deref().unwrap_or_default();
            let path = self.src_path(each, base, line)?;
            if !matches!(kind, LeafKind::Array) {
                return Err(self.err(
                    line,
                    format!(
                        "`each` needs an array attribute, `{}` is not one",
                        f.to.get_ref()
                    ),
                ));
            }
            let elem_prefix: Vec<&'static str> = prefix.iter().chain(to.iter()).copied().collect();
            let mut fields = Vec::new();
            let mut whole = false;
            for sub in f.fields.as_deref().unwrap_or_default() {
                if let Some(OneOrMany::One(p)) = &sub.from {
                    whole |= p == ".";
                }
                fields.push(self.field(sub, schema, &elem_prefix, path.node)?);
            }
            SourceP::Each {
                path,
                fields,
                whole,
            }
        };
        if let (LeafKind::Object { free_form: false }, SourceP::Paths(_)) = (&kind, &source) {
            return Err(self.err(
                line,
                format!(
                    "`{}` is an OCSF object: assign its attributes one by one",
                    f.to.get_ref()
                ),
            ));
        }
        let transform = match &f.transform {
            None => Transform::None,
            Some(t) => Transform::parse(t).ok_or_else(|| {
                self.err(
                    line,
                    format!("unknown transform `{t}` (known: {})", Transform::NAMES),
                )
            })?,
        };
        let extract = match &f.extract {
            None => None,
            Some(re) => {
                let r = Extract::new(re).map_err(|e| self.err(line, format!("bad regex: {e}")))?;
                if r.captures_len() != 2 {
                    return Err(self.err(line, "`extract` needs exactly one capture group"));
                }
                Some(r)
            }
        };
        let lookup = match &f.lookup {
            None => None,
            Some(LookupRef::Named(n)) => Some(
                self.lookups
                    .get(n)
                    .cloned()
                    .ok_or_else(|| self.err(line, format!("no lookup table named `{n}`")))?,
            ),
            Some(LookupRef::Inline(l)) => Some(Arc::new(self.lookup(l, line)?)),
        };
        let otherwise = match &f.otherwise {
            None => None,
            Some(o) => Some(self.resolve(schema, prefix, o, line)?),
        };
        let when = f
            .when
            .as_ref()
            .map(|c| self.cond(c, base, line))
            .transpose()?;
        let simple = matches!(source, SourceP::Paths(_))
            && transform == Transform::None
            && extract.is_none()
            && lookup.is_none()
            && f.default.is_none()
            && otherwise.is_none()
            && when.is_none();
        let konst = matches!(source, SourceP::Const(_))
            && transform == Transform::None
            && extract.is_none()
            && lookup.is_none()
            && f.default.is_none()
            && otherwise.is_none();
        Ok(FieldP {
            simple,
            konst,
            fixed: false,
            when_id: u32::MAX,
            line,
            to_text: leak(f.to.get_ref()),
            to,
            kind,
            source,
            transform,
            extract,
            lookup,
            default: f
                .default
                .as_ref()
                .map(|d| self.constant(d, line))
                .transpose()?,
            otherwise,
            when,
            slot: NEVER,
            otherwise_slot: NEVER,
            check: false,
        })
    }

    /// Lays out the class's output: engine-written header slots first, then every field's
    /// target in table order; checks constants and lookup values against the schema now, so
    /// that per event only source-derived values with constraints are checked.
    fn skeleton(
        &self,
        schema: &ClassSchema,
        fields: &mut [FieldP],
        class_line: usize,
        class: &str,
    ) -> Result<(Skeleton, Header), TableError> {
        let mut sk = Skeleton::new();
        let fixed = |sk: &mut Skeleton, path: &[&'static str]| {
            sk.leaf(schema, path)
                .map_err(|e| self.err(class_line, format!("class `{class}`: {e}")))
        };
        let class_uid = fixed(&mut sk, &["class_uid"])?;
        let class_name = fixed(&mut sk, &["class_name"])?;
        let category_uid = fixed(&mut sk, &["category_uid"])?;
        let category_name = fixed(&mut sk, &["category_name"])?;
        let activity_id = fixed(&mut sk, &["activity_id"])?;
        let activity_name = fixed(&mut sk, &["activity_name"])?;
        let type_uid = fixed(&mut sk, &["type_uid"])?;
        let type_name = fixed(&mut sk, &["type_name"])?;
        for f in fields.iter_mut() {
            let err = |e: String| self.err(f.line, format!("in class `{class}`: {e}"));
            f.slot = sk.leaf(schema, &f.to).map_err(err)?;
            if let Some((o, _)) = &f.otherwise {
                f.otherwise_slot = sk.leaf(schema, o).map_err(err)?;
            }
            let leaf_schema = sk.nodes[f.slot as usize].schema;
            let path = f.to_text;
            let check_const = |c: &ConstV| -> Result<(), TableError> {
                let v = match c {
                    ConstV::Str(s) => crate::event::Out::Str((*s).into()),
                    ConstV::Int(i) => crate::event::Out::Int(*i),
                    ConstV::Bool(b) => crate::event::Out::Bool(*b),
                    ConstV::StrList(l) => crate::event::Out::Arr(
                        l.iter()
                            .map(|s| crate::event::Out::Str((*s).into()))
                            .collect(),
                    ),
                };
                match schema.check_at(leaf_schema, &v, path) {
                    Some(viol) => Err(err(format!("constant is not valid OCSF: {viol}"))),
                    None => Ok(()),
                }
            };
            let mut needs = schema.needs_check(leaf_schema);
            if let SourceP::Const(cv) = &f.source {
                check_const(cv)?;
                needs = false;
            }
            if let Some(d) = &f.default {
                check_const(d)?;
            }
            if let Some(l) = &f.lookup {
                for v in l.values.values().chain(l.default.iter()) {
                    check_const(v)?;
                }
                needs = false;
            }
            if matches!(
                f.transform,
                Transform::Datetime | Transform::Ip | Transform::EpochMs | Transform::Present
            ) {
                needs = false;
            }
            f.check = needs;
            sk.nodes[f.slot as usize].check |= needs;
            let plain = matches!(f.source, SourceP::Const(_))
                || f.lookup.is_some()
                || matches!(
                    f.transform,
                    Transform::Datetime | Transform::Ip | Transform::EpochMs | Transform::Present
                );
            // Defaults are constants; an `otherwise` slot takes what the transform rejected.
            {
                let n = &mut sk.nodes[f.slot as usize];
                n.sourced |= !plain;
                n.plain = !n.sourced;
            }
            if f.otherwise_slot != NEVER {
                let o = f.otherwise_slot as usize;
                sk.nodes[o].check |= schema.needs_check(sk.nodes[o].schema);
                sk.nodes[o].sourced = true;
                sk.nodes[o].plain = false;
            }
        }
        let existing = |sk: &Skeleton, key: &str| {
            sk.nodes[0]
                .children
                .iter()
                .copied()
                .find(|&c| sk.nodes[c as usize].key == key)
                .unwrap_or(NEVER)
        };
        let severity_id = existing(&sk, "severity_id");
        let severity = match severity_id {
            NEVER => NEVER,
            _ => fixed(&mut sk, &["severity"])?,
        };
        let status_id = existing(&sk, "status_id");
        let status = match status_id {
            NEVER => NEVER,
            _ => fixed(&mut sk, &["status"])?,
        };
        let version = fixed(&mut sk, &["metadata", "version"])?;
        let profiles = fixed(&mut sk, &["metadata", "profiles"])?;
        let labels = fixed(&mut sk, &["metadata", "labels"]).unwrap_or(NEVER);
        let header = Header {
            class_uid,
            class_name,
            category_uid,
            category_name,
            activity_id,
            activity_name,
            type_uid,
            type_name,
            severity_id,
            severity,
            status_id,
            status,
            version,
            profiles,
            labels,
        };
        for id in header.engine_written() {
            if id != NEVER && !sk.nodes[id as usize].sourced {
                sk.nodes[id as usize].plain = true;
            }
        }
        sk.finish(schema);
        // A required attribute no field can ever write fails every event: say so now.
        for (id, n) in sk.nodes.iter().enumerate() {
            if n.leaf {
                continue;
            }
            if let Some((name, _)) = n.required.iter().find(|(_, c)| *c == NEVER) {
                let at = sk.path(id as u32);
                return Err(self.err(
                    class_line,
                    format!(
                        "class `{class}`: `{name}` is required in `{at}` but no field assigns it"
                    ),
                ));
            }
        }
        Ok((sk, header))
    }

    fn template(&mut self, t: &str, base: u32, line: usize) -> Result<Vec<Piece>, TableError> {
        let mut pieces = Vec::new();
        let mut rest = t;
        while let Some(open) = rest.find('{') {
            if open > 0 {
                pieces.push(Piece::Lit(leak(&rest[..open])));
            }
            let close = rest[open..]
                .find('}')
                .ok_or_else(|| self.err(line, format!("unclosed `{{` in template `{t}`")))?;
            let path = &rest[open + 1..open + close];
            pieces.push(Piece::Path(self.src_path(path, base, line)?));
            rest = &rest[open + close + 1..];
        }
        if !rest.is_empty() {
            pieces.push(Piece::Lit(leak(rest)));
        }
        Ok(pieces)
    }

    fn schema(&mut self, info: &'static ClassInfo) -> Result<Arc<ClassSchema>, TableError> {
        if let Some(s) = self.schemas.get(info.name) {
            return Ok(s.clone());
        }
        let s = Arc::new(
            ClassSchema::compile(info.name, info.schema_json)
                .map_err(|e| self.err(0, e.to_string()))?,
        );
        self.schemas.insert(info.name, s.clone());
        Ok(s)
    }
}

/// Compiles a table. `file` names it in errors; `text` is its content.
pub fn compile(kind: SourceKind, file: &str, text: &str) -> Result<Plan, TableError> {
    let table: Table = toml::from_str(text).map_err(|e| TableError {
        file: file.to_string(),
        line: e.span().map(|s| line_of(text, s.start)).unwrap_or(0),
        message: e.message().to_string(),
    })?;
    let mut c = Compiler {
        file,
        text,
        trie: Trie::new(),
        lookups: HashMap::new(),
        schemas: HashMap::new(),
    };
    if table.source.get_ref() != kind.as_str() {
        return Err(c.err(
            c.line(&table.source),
            format!(
                "table says source `{}` but is loaded as `{}`",
                table.source.get_ref(),
                kind.as_str()
            ),
        ));
    }
    if table.ocsf_version.get_ref() != ocsf::OCSF_VERSION {
        return Err(c.err(
            c.line(&table.ocsf_version),
            format!(
                "ocsf_version `{}` is not supported; this build emits {}",
                table.ocsf_version.get_ref(),
                ocsf::OCSF_VERSION
            ),
        ));
    }
    for p in &table.profiles {
        if !["cloud", "datetime"].contains(&p.as_str()) {
            return Err(c.err(
                1,
                format!(
                    "profile `{p}` is not exported; add it to scripts/export-ocsf-schemas.py first"
                ),
            ));
        }
    }
    for (name, l) in &table.lookups {
        let lp = c.lookup(l, 1).map_err(|mut e| {
            e.message = format!("lookup `{name}`: {}", e.message);
            e
        })?;
        c.lookups.insert(name.clone(), Arc::new(lp));
    }
    let detect = c.cond(&table.detect, RECORD_ROOT, 1)?;
    let require = table
        .require
        .iter()
        .map(|r| Ok((c.cond(&r.when, RECORD_ROOT, 1)?, r.message.clone())))
        .collect::<Result<Vec<_>, TableError>>()?;
    let mut classes = Vec::new();
    if table.classes.is_empty() {
        return Err(c.err(1, "a table needs at least one [[class]]"));
    }
    for rule in &table.classes {
        let line = c.line(&rule.name);
        let info = ocsf::class_by_name(rule.name.get_ref()).ok_or_else(|| {
            let names: Vec<&str> = ocsf::CLASSES.iter().map(|c| c.name).collect();
            c.err(
                line,
                format!(
                    "unknown OCSF class `{}` (known: {})",
                    rule.name.get_ref(),
                    names.join(", ")
                ),
            )
        })?;
        let schema = c.schema(info)?;
        let when = rule
            .when
            .as_ref()
            .map(|w| c.cond(w, RECORD_ROOT, line))
            .transpose()?;
        let mut activities = Vec::new();
        for a in &rule.activities {
            let aline = c.line(&a.id);
            let id = *a.id.get_ref();
            if info.activity_caption(id).is_none() {
                return Err(c.err(
                    aline,
                    format!("activity id {id} does not exist in class `{}`", info.name),
                ));
            }
            let w = a
                .when
                .as_ref()
                .map(|w| c.cond(w, RECORD_ROOT, aline))
                .transpose()?;
            activities.push((w, id));
        }
        if activities.last().is_none_or(|(w, _)| w.is_some()) {
            return Err(c.err(
                line,
                format!(
                    "class `{}` needs a last activity rule without `when` (the fallback, usually 99 Other)",
                    info.name
                ),
            ));
        }
        let mut fields = Vec::new();
        for f in rule.fields.iter().chain(table.fields.iter()) {
            fields.push(c.field(f, &schema, &[], RECORD_ROOT).map_err(|mut e| {
                e.message = format!("in class `{}`: {}", info.name, e.message);
                e
            })?);
        }
        let (skeleton, header) = c.skeleton(&schema, &mut fields, line, info.name)?;
        let type_names: Vec<(i64, &'static str)> = info
            .activities
            .iter()
            .map(|(id, cap)| (*id, leak(&format!("{}: {cap}", info.caption))))
            .collect();
        let profiles_json =
            leak(&serde_json::to_string(&table.profiles).unwrap_or_else(|_| "[]".to_string()));
        let header_json = header_json(info, &skeleton, &header, &type_names);
        let mut skeleton = skeleton;
        let fixed_present = fix_constants(&mut skeleton, &header, &mut fields, profiles_json);
        // Every event has the header and the fixed leaves: their requirements cannot fail.
        let always: Vec<u32> = fixed_present
            .iter()
            .copied()
            .chain(header.leading())
            .collect();
        skeleton.prune_guaranteed(&always);
        classes.push(ClassP {
            info,
            schema,
            when,
            activities,
            fields,
            skeleton,
            header,
            type_names,
            profiles_json,
            header_json,
            fixed_present,
        });
    }
    let mut keys = Vec::new();
    let cacheable = classes.iter().all(|cl: &ClassP| {
        cl.when.as_ref().is_none_or(|w| collect_paths(w, &mut keys))
            && cl
                .activities
                .iter()
                .all(|(w, _)| w.as_ref().is_none_or(|w| collect_paths(w, &mut keys)))
    });
    let decision_keys = (cacheable && keys.len() <= 4).then_some(keys);
    static NEXT_ID: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(1);
    for n in &mut c.trie.nodes {
        if n.children.len() > 3 {
            let mut ix: Box<Buckets> = Box::new(std::array::from_fn(|_| Vec::new()));
            for &(k, id) in &n.children {
                ix[bucket(k)].push((k, id));
            }
            n.index = Some(ix);
        }
    }
    let mut whens = HashMap::new();
    for class in &mut classes {
        number_whens(&mut class.fields, &mut whens);
    }
    Ok(Plan {
        when_count: whens.len() as u32,
        source: kind,
        origin: file.to_string(),
        detect,
        require,
        classes,
        trie: c.trie,
        profiles: table.profiles.iter().map(|p| leak(p)).collect(),
        decision_keys,
        id: NEXT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_split_on_dots_outside_quotes() {
        assert_eq!(split_path("a.b").unwrap(), ["a", "b"]);
        assert_eq!(
            split_path(r#"claims."http://x.y/z".v"#).unwrap(),
            ["claims", "http://x.y/z", "v"]
        );
        assert!(split_path("a..b").is_err());
        assert!(split_path(r#"a."b"#).is_err());
    }

    /// Fields written with the same `when` share its id (one evaluation per record); others
    /// do not.
    #[test]
    fn equal_when_conditions_share_an_id() {
        let plan = compile(
            SourceKind::CloudTrail,
            "mappings/cloudtrail.toml",
            include_str!("../../mappings/cloudtrail.toml"),
        )
        .expect("built-in table");
        let mut by_text: HashMap<String, Vec<u32>> = HashMap::new();
        for class in &plan.classes {
            for f in class.fields.iter().filter(|f| f.when.is_some()) {
                assert!(f.when_id < plan.when_count);
                by_text
                    .entry(format!("{:?}", f.when))
                    .or_default()
                    .push(f.when_id);
            }
        }
        let mut ids: Vec<u32> = Vec::new();
        for same in by_text.values() {
            assert!(same.iter().all(|&id| id == same[0]), "{same:?}");
            ids.push(same[0]);
        }
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(
            ids.len(),
            by_text.len(),
            "different conditions got the same id"
        );
        assert!(
            by_text.values().any(|v| v.len() > 1),
            "no shared condition to test"
        );
    }
}
