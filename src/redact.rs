//! Secret redaction: everything that decides which parts of an audit event are
//! secrets and replaces them before any byte leaves auditnorm.
//!
//! This module owns the rule language (the built-in `rules/redaction.toml`
//! plus operator override files), the compiled matchers, the replacement
//! format (`[REDACTED:<rule>]`, or `[REDACTED:<rule>:<8 hex>]` with a keyed
//! HMAC so one secret can be followed across events without being revealed),
//! and the per-rule counts exported as metrics.
//!
//! Three layers, because secrets leak in three ways:
//! * by position: the value under `password`, `sessionToken`, a Kubernetes
//!   Secret's `data`, `{"name": "DB_PASSWORD", "value": ...}` (key, object,
//!   path and pair rules; callers that walk events themselves use
//!   [`Redactor::key_rule`] and [`Redactor::object_verdicts`], whose `Keep`
//!   verdicts mark values that only name a secret, such as a CodeBuild
//!   variable of type SECRETS_MANAGER);
//! * by shape: JWTs, PEM keys, vendor tokens, URL passwords (pattern rules);
//! * inside free text: JSON documents carried in strings, query strings,
//!   command lines, `NAME=value` ([`Redactor::redact_text`]).
//!
//! Cost model: the service budget is about 0.5 µs of redaction per event, so
//! the common string (no secret, no anchor) costs one branch-free pass of a
//! bigram filter, no allocation, and comes back borrowed; keys likewise. Only
//! when the filter fires does the Aho-Corasick anchor search run, and only
//! when an anchor is found does anything else. Every later stage is linear in
//! the input: hand-written scanners that only move forward, and `regex`
//! (finite automata, no backtracking) confined to bounded windows that do not
//! overlap by more than a constant.
//!
//! Dead letters that are not one JSON document (NDJSON, records cut short,
//! damaged JSON) are read by a tolerant one-pass tokenizer into the span tree
//! the rules walk, so object, path and pair rules apply to them too, and only
//! secrets are replaced ([`Redactor::redact_bytes`]). Only dead letters pay
//! for it.

use std::borrow::{Borrow, Cow};
use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::sync::{Arc, OnceLock};

use aho_corasick::automaton::OverlappingState;
use aho_corasick::{AhoCorasick, AhoCorasickKind, Input, MatchKind};
use hmac::{Hmac, Mac};
use regex::{Regex, RegexBuilder};
use serde::Deserialize;
use serde_json::Value;
use sha2::Sha256;
use toml::Spanned;

/// The built-in rule set, compiled into the binary so a deployment without
/// config files is still safe.
pub const BUILTIN_RULES: &str = include_str!("../rules/redaction.toml");
const BUILTIN_ORIGIN: &str = "rules/redaction.toml (built-in)";

// Key-rule exceptions live in a u64 bitset and pattern watermarks in a stack
// array, so the hot paths never allocate; these caps make that possible.
const MAX_KEY_RULES: usize = 64;
const MAX_PATTERN_RULES: usize = 64;
// Normalised keys longer than this go through a heap buffer (rare: only very
// long annotation keys).
const NORM_CAP: usize = 128;
// How far back from `=` / `: ` we look for a key; bounds the work per anchor.
const KEY_SCAN_MAX: usize = 128;
// Embedded JSON deeper than this is scanned as plain text instead, which
// keeps the recursive span parser's stack bounded.
const MAX_JSON_DEPTH: usize = 64;
// Dead letters only: how many layers of JSON carried in a string are decoded
// and read as JSON (each layer is one more linear pass over at most the
// bytes of the layer before).
const MAX_DECODE_DEPTH: u8 = 3;
// A shorter HMAC key makes low-entropy secrets (PINs, short passwords)
// recoverable by brute force from the published tag.
const MIN_HASH_KEY_LEN: usize = 16;
const MAX_PATTERN_LEN: usize = 65536;

type HmacSha256 = Hmac<Sha256>;

// ------------------------------------------------------------------ errors

/// A rule set that cannot be loaded. Every variant names the file (its origin
/// as given to [`Redactor::from_sources`]) and, where there is one, the line.
#[derive(Debug, thiserror::Error)]
pub enum RuleSetError {
    #[error("{origin}:{line}:{column}: {message}; fix the TOML at that place (the field list is at the top of rules/redaction.toml)")]
    Syntax {
        origin: String,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("{origin}:{line}: rule `{rule}`: {problem}")]
    InvalidRule {
        origin: String,
        line: usize,
        rule: String,
        problem: String,
    },
    #[error("{origin}:{line}: rule `{name}` is already defined at {first_origin}:{first_line}; rename one of them, or list `{name}` under `disable` before redefining it")]
    DuplicateRule {
        origin: String,
        line: usize,
        name: String,
        first_origin: String,
        first_line: usize,
    },
    #[error("{origin}:{line}: `disable` names `{name}`, which neither the built-in rules nor an earlier override define; check the spelling against the names in rules/redaction.toml")]
    UnknownDisabled {
        origin: String,
        line: usize,
        name: String,
    },
    #[error(
        "{count} {what} rules are enabled but at most {max} are supported; disable or merge some"
    )]
    TooManyRules {
        what: &'static str,
        count: usize,
        max: usize,
    },
    #[error("the redaction hash key is {len} bytes; give at least {MIN_HASH_KEY_LEN} random bytes, or none for plain [REDACTED:<rule>] markers")]
    HashKeyTooShort { len: usize },
}

// ------------------------------------------------------------- public types

/// A compiled rule, as returned by [`Redactor::key_rule`] and
/// [`Redactor::object_rules`]. Only meaningful for the redactor that made it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RuleId(u16);

impl RuleId {
    /// Position of the rule in [`Redactor::rule_names`].
    pub fn index(self) -> usize {
        usize::from(self.0)
    }
}

/// What [`Redactor::object_verdicts`] says about one member of an object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemberVerdict {
    /// Redact the whole value with this rule.
    Redact(RuleId),
    /// The value names or locates a secret (a secret's id, a parameter name):
    /// no key, object, path or pair rule redacts it. This `keep` rule said so.
    Keep(RuleId),
}

/// How many secrets each rule replaced. Cheap to create (empty, no
/// allocation); keep one per batch or thread and [`merge`](Self::merge) them
/// for metrics.
#[derive(Clone, Debug, Default)]
pub struct RedactionCounts {
    // A handful of rules fire in practice, so a short vector searched
    // linearly beats a map, and it only grows on the (rare) match path.
    entries: Vec<(Arc<str>, u64)>,
}

impl RedactionCounts {
    /// `(rule name, count)` for every rule that fired, in first-fired order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, u64)> + '_ {
        self.entries.iter().map(|(name, n)| (&**name, *n))
    }

    /// All replacements made.
    pub fn total(&self) -> u64 {
        self.entries.iter().map(|(_, n)| n).sum()
    }

    /// The count for one rule name (0 if it never fired).
    pub fn get(&self, rule: &str) -> u64 {
        self.entries
            .iter()
            .find(|(name, _)| &**name == rule)
            .map_or(0, |(_, n)| *n)
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Adds another set of counts (by rule name, so counts from different
    /// redactors combine correctly). Accepts either an owned value or a
    /// reference.
    pub fn merge(&mut self, other: impl Borrow<RedactionCounts>) {
        for (name, n) in &other.borrow().entries {
            self.add(name, *n);
        }
    }

    fn add(&mut self, name: &Arc<str>, n: u64) {
        if let Some(entry) = self
            .entries
            .iter_mut()
            .find(|(have, _)| Arc::ptr_eq(have, name) || have == name)
        {
            entry.1 += n;
        } else {
            self.entries.push((Arc::clone(name), n));
        }
    }
}

/// The compiled rule set. Build once ([`Redactor::builtin`] or
/// [`Redactor::from_sources`]) and share: it is immutable, `Send + Sync`, and
/// cloning is a reference-count increment.
#[derive(Clone)]
pub struct Redactor {
    inner: Arc<Inner>,
}

impl fmt::Debug for Redactor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Redactor")
            .field("rules", &self.rule_names())
            .field("hashed", &self.inner.mac.is_some())
            .finish()
    }
}

// ------------------------------------------------------------ raw TOML form

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    disable: Vec<Spanned<String>>,
    #[serde(default)]
    key_defaults: Option<RawKeyDefaults>,
    #[serde(default)]
    rule: Vec<Spanned<RawRule>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawKeyDefaults {
    #[serde(default)]
    except_suffix: Vec<String>,
    #[serde(default)]
    except_contains: Vec<String>,
}

// One flat struct for every kind rather than an enum tagged by `kind`:
// serde buffers internally tagged content and loses the spans that point
// error messages at a line. Fields foreign to a kind are rejected in compile().
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    name: Spanned<String>,
    kind: Spanned<String>,
    #[serde(default)]
    #[allow(dead_code)] // documentation for readers of the rules file
    description: Option<String>,
    exact: Option<Vec<String>>,
    contains: Option<Vec<String>>,
    except: Option<Vec<String>>,
    except_contains: Option<Vec<String>>,
    except_suffix: Option<Vec<String>>,
    on_object: Option<Spanned<String>>,
    suffix: Option<Spanned<String>>,
    has: Option<Vec<String>>,
    has_any: Option<Vec<String>>,
    equals: Option<BTreeMap<String, Vec<String>>>,
    parent: Option<Vec<String>>,
    redact: Option<Vec<String>>,
    keep: Option<Vec<String>>,
    names: Option<Vec<String>>,
    values: Option<Vec<String>>,
    anchors: Option<Vec<String>>,
    regex: Option<Spanned<String>>,
    max_len: Option<usize>,
    min_len: Option<usize>,
    looks_random: Option<bool>,
}

impl RawRule {
    fn present_fields(&self) -> Vec<&'static str> {
        let mut v = Vec::new();
        let mut note = |present: bool, name: &'static str| {
            if present {
                v.push(name);
            }
        };
        note(self.exact.is_some(), "exact");
        note(self.contains.is_some(), "contains");
        note(self.except.is_some(), "except");
        note(self.except_contains.is_some(), "except_contains");
        note(self.except_suffix.is_some(), "except_suffix");
        note(self.on_object.is_some(), "on_object");
        note(self.suffix.is_some(), "suffix");
        note(self.has.is_some(), "has");
        note(self.has_any.is_some(), "has_any");
        note(self.equals.is_some(), "equals");
        note(self.parent.is_some(), "parent");
        note(self.redact.is_some(), "redact");
        note(self.keep.is_some(), "keep");
        note(self.names.is_some(), "names");
        note(self.values.is_some(), "values");
        note(self.anchors.is_some(), "anchors");
        note(self.regex.is_some(), "regex");
        note(self.max_len.is_some(), "max_len");
        note(self.min_len.is_some(), "min_len");
        note(self.looks_random.is_some(), "looks_random");
        v
    }
}

// ---------------------------------------------------------- compiled rules

struct RuleMeta {
    name: Arc<str>,
    // For key rules: an object/array value is searched rather than blanked.
    descend: bool,
}

#[derive(Clone, Copy)]
enum RoleKind {
    Exact,
    Contains,
    ExceptExact,
    ExceptContains,
    ExceptSuffix,
    GlobalExceptContains,
    GlobalExceptSuffix,
}

#[derive(Clone, Copy)]
struct Role {
    kind: RoleKind,
    slot: u8,
}

/// Key rules compiled into one automaton over normalised keys, so a lookup
/// is one pass over the key with no allocation, whatever the rule count.
struct KeyMatcher {
    filter: BigramFilter,
    ac: Option<AhoCorasick>,
    // roles[role_start[p]..role_start[p + 1]] are the roles of pattern p.
    role_start: Vec<u32>,
    roles: Vec<Role>,
    ids: Vec<RuleId>,
    min_len: usize,
}

enum ValuePat {
    Exact(String),
    Prefix(String),
}

impl ValuePat {
    fn matches(&self, v: &str) -> bool {
        match self {
            ValuePat::Exact(x) => v.eq_ignore_ascii_case(x),
            ValuePat::Prefix(x) => {
                v.len() >= x.len() && v.as_bytes()[..x.len()].eq_ignore_ascii_case(x.as_bytes())
            }
        }
    }
}

struct ObjectRule {
    id: RuleId,
    // Normalised parent keys; an empty entry means "top level".
    parent: Option<Vec<Box<[u8]>>>,
    has: Vec<Box<[u8]>>,
    has_any: Vec<Box<[u8]>>,
    equals: Vec<(Box<[u8]>, Vec<ValuePat>)>,
    redact: Vec<Box<[u8]>>,
    // Members whose values name or locate a secret rather than hold one.
    keep: Vec<Box<[u8]>>,
}

struct PairRule {
    id: RuleId,
    names: Vec<Box<[u8]>>,
    values: Vec<Box<[u8]>>,
}

struct PatternRule {
    id: RuleId,
    regex: Regex,
    has_groups: bool,
    max_len: usize,
    min_len: usize,
    looks_random: bool,
}

/// What an anchor found by the text automaton sets off.
#[derive(Clone, Copy)]
enum Action {
    /// `NAME=value`
    Assign,
    /// `--name value`
    Flag,
    /// `"name": value` in JSON text that did not parse as a whole
    JsonKey,
    /// `\"name\": \"value\"`: JSON escaped inside JSON
    EscapedJsonKey,
    /// `Name: value`
    Header,
    /// A pattern rule, by its index among the pattern rules.
    Pattern(u8),
}

struct Inner {
    rules: Vec<RuleMeta>,
    keys: KeyMatcher,
    objects: Vec<ObjectRule>,
    pairs: Vec<PairRule>,
    // Normalised member keys without which no object/path/pair rule can fire.
    triggers: Vec<Box<[u8]>>,
    // Prefilter for `triggers`: indexed by a key's first normalised byte (either
    // case), the bits `1 << (last normalised byte & 63)` a trigger can end with.
    trigger_ends: Box<[u64; 256]>,
    // Consulted only when `trigger_ends` lets a key through, indexed by its
    // last byte: the bits `1 << (byte before it & 63)` a trigger can have
    // there, and the shortest trigger ending in it (a key is never shorter
    // than its normalised form). They turn away "sessionContext" and
    // "principalId", in every CloudTrail event, before any comparison.
    trigger_pens: Box<[u64; 256]>,
    trigger_short: Box<[u8; 256]>,
    trigger_min_len: usize,
    patterns: Vec<PatternRule>,
    // Prefilter for `text_ac`: one table entry per bigram, two instructions
    // per byte.
    text_pairs: PairFilter,
    text_ac: AhoCorasick,
    actions: Vec<Vec<Action>>,
    min_text_len: usize,
    mac: Option<HmacSha256>,
    // Distinguishes this rule set in the per-thread key verdict cache.
    id: u64,
}

/// Keys this long skip the bigram filter and go straight to the verdict cache:
/// hashing them is cheaper than filtering them (Azure claim URIs, long
/// annotation keys), and they repeat from event to event.
const LONG_KEY: usize = 32;
const KEY_CACHE_MAX: usize = 4096;

/// Verdicts of the keys the bigram filter could not settle, and of long keys,
/// per thread: audit events repeat a few hundred keys, and a filter hit costs
/// a normalisation, a needle check and an automaton pass. Exact keys, so a hit
/// is never a guess; bounded (cleared when full); tied to one rule set.
struct KeyCache {
    owner: u64,
    verdicts: rustc_hash::FxHashMap<Box<str>, Option<RuleId>>,
}

thread_local! {
    static KEY_CACHE: std::cell::RefCell<KeyCache> = const {
        std::cell::RefCell::new(KeyCache {
            owner: 0,
            verdicts: std::collections::HashMap::with_hasher(rustc_hash::FxBuildHasher),
        })
    };
}

/// What the key checks say about one key: its key rule, and whether an object, path or pair
/// rule looks for it (`object_might_match` on the key alone).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeyVerdict {
    pub rule: Option<RuleId>,
    pub trigger: bool,
}

/// A lane's memo of key verdicts, direct-mapped by the key's length and end bytes. Audit
/// events repeat a few hundred keys; a hit costs a hash of two words and an exact compare of
/// two overlapping windows, where the filter walks every byte of the key and mispredicts the
/// end of its loop for every key of a new length. Keys of 4 to 32 bytes only; exact, so a hit
/// is never a guess; tied to one rule set.
pub struct KeyMemo {
    owner: u64,
    slots: Box<[MemoSlot; KEY_MEMO_SLOTS]>,
}

#[derive(Clone, Copy)]
struct MemoSlot {
    /// 0: empty.
    len: u8,
    verdict: KeyVerdict,
    /// The key's two windows (see `KeyMemo::verdict`).
    lo: u128,
    hi: u128,
}

const KEY_MEMO_SLOTS: usize = 1024;

impl Default for KeyMemo {
    fn default() -> Self {
        KeyMemo {
            owner: 0,
            slots: Box::new(
                [MemoSlot {
                    len: 0,
                    verdict: KeyVerdict {
                        rule: None,
                        trigger: false,
                    },
                    lo: 0,
                    hi: 0,
                }; KEY_MEMO_SLOTS],
            ),
        }
    }
}

impl KeyMemo {
    /// The verdict of `key` under `r`, from the memo when it holds the key.
    #[inline]
    pub fn verdict(&mut self, r: &Redactor, key: &str) -> KeyVerdict {
        let b = key.as_bytes();
        let n = b.len();
        if !(4..=32).contains(&n) {
            return r.key_verdict(key);
        }
        // Two windows that together cover the key: for a key of the same length, equal
        // windows mean equal keys.
        let (lo, hi) = if n >= 16 {
            (
                u128::from_le_bytes(b[..16].try_into().expect("16 bytes")),
                u128::from_le_bytes(b[n - 16..].try_into().expect("16 bytes")),
            )
        } else if n >= 8 {
            (
                u128::from(u64::from_le_bytes(b[..8].try_into().expect("8 bytes"))),
                u128::from(u64::from_le_bytes(b[n - 8..].try_into().expect("8 bytes"))),
            )
        } else {
            (
                u128::from(u32::from_le_bytes(b[..4].try_into().expect("4 bytes"))),
                u128::from(u32::from_le_bytes(b[n - 4..].try_into().expect("4 bytes"))),
            )
        };
        let h = (lo as u64 ^ (hi as u64).rotate_left(29) ^ (n as u64) << 56)
            .wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let at = (h >> 54) as usize % KEY_MEMO_SLOTS;
        let slot = &self.slots[at];
        if usize::from(slot.len) == n && slot.lo == lo && slot.hi == hi && self.owner == r.inner.id
        {
            return slot.verdict;
        }
        self.miss(r, key, at, (lo, hi))
    }

    #[cold]
    #[inline(never)]
    fn miss(&mut self, r: &Redactor, key: &str, at: usize, (lo, hi): (u128, u128)) -> KeyVerdict {
        if self.owner != r.inner.id {
            for s in self.slots.iter_mut() {
                s.len = 0;
            }
            self.owner = r.inner.id;
        }
        let v = r.key_verdict(key);
        self.slots[at] = MemoSlot {
            len: key.len() as u8,
            verdict: v,
            lo,
            hi,
        };
        v
    }
}

static NEXT_RULE_SET_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

// ----------------------------------------------------------- construction

impl Redactor {
    /// The built-in rules, plain markers. The rules file is compiled into the
    /// binary and covered by tests, so this cannot fail at run time; the
    /// compiled set is cached and shared.
    pub fn builtin() -> Redactor {
        static BUILTIN: OnceLock<Redactor> = OnceLock::new();
        BUILTIN
            .get_or_init(|| {
                Redactor::from_sources(true, &[], None)
                    .expect("built-in rules/redaction.toml is valid (checked by tests)")
            })
            .clone()
    }

    /// Compiles the built-in rules (when `builtin`) followed by each override
    /// file in order. Overrides may `disable` rules defined before them and
    /// add new ones. `hash_key` switches replacements to the keyed-hash form;
    /// the caller reads it from a secret file or environment, never from the
    /// rules.
    pub fn from_sources(
        builtin: bool,
        overrides: &[(String, String)],
        hash_key: Option<Vec<u8>>,
    ) -> Result<Redactor, RuleSetError> {
        let mac = match hash_key {
            None => None,
            Some(k) if k.len() < MIN_HASH_KEY_LEN => {
                return Err(RuleSetError::HashKeyTooShort { len: k.len() })
            }
            Some(k) => Some(
                <HmacSha256 as Mac>::new_from_slice(&k).expect("HMAC accepts keys of any length"),
            ),
        };

        let mut sources: Vec<(&str, &str, bool)> = vec![(BUILTIN_ORIGIN, BUILTIN_RULES, builtin)];
        for (origin, text) in overrides {
            sources.push((origin, text, true));
        }

        let mut known: HashSet<String> = HashSet::new();
        let mut active: Vec<Pending> = Vec::new();
        let mut defaults = RawKeyDefaults::default();
        for (origin, text, include) in sources {
            let file: RawFile = toml::from_str(text).map_err(|e| {
                let (line, column) = e.span().map_or((1, 1), |span| line_col(text, span.start));
                RuleSetError::Syntax {
                    origin: origin.to_string(),
                    line,
                    column,
                    message: e.message().trim_end().to_string(),
                }
            })?;
            if !include {
                // Overrides may disable built-in names even when the built-in
                // set is off, so one override file works in both setups.
                known.extend(file.rule.iter().map(|r| r.get_ref().name.get_ref().clone()));
                continue;
            }
            for d in &file.disable {
                let name = d.get_ref();
                if !known.contains(name) {
                    return Err(RuleSetError::UnknownDisabled {
                        origin: origin.to_string(),
                        line: line_col(text, d.span().start).0,
                        name: name.clone(),
                    });
                }
                active.retain(|p| p.raw.name.get_ref() != name);
            }
            if let Some(kd) = file.key_defaults {
                defaults.except_suffix.extend(kd.except_suffix);
                defaults.except_contains.extend(kd.except_contains);
            }
            for r in file.rule {
                let line = line_col(text, r.span().start).0;
                let raw = r.into_inner();
                let name = raw.name.get_ref().clone();
                if let Some(first) = active.iter().find(|p| *p.raw.name.get_ref() == name) {
                    return Err(RuleSetError::DuplicateRule {
                        origin: origin.to_string(),
                        line,
                        name,
                        first_origin: first.origin.to_string(),
                        first_line: first.line,
                    });
                }
                known.insert(name);
                active.push(Pending {
                    origin,
                    text,
                    line,
                    raw,
                });
            }
        }
        compile(active, defaults, mac).map(|inner| Redactor {
            inner: Arc::new(inner),
        })
    }

    /// Names of the enabled rules; `RuleId::index` points into this list.
    pub fn rule_names(&self) -> Vec<&str> {
        self.inner.rules.iter().map(|r| &*r.name).collect()
    }

    /// The name of a rule (as it appears in replacements and counts).
    pub fn rule_name(&self, rule: RuleId) -> &str {
        &self.inner.rules[rule.index()].name
    }

    /// For a key rule: true when an object or array under the key is to be
    /// searched with all rules (its children checked one by one) rather than
    /// blanked as a whole.
    pub fn descends_into_containers(&self, rule: RuleId) -> bool {
        self.inner.rules[rule.index()].descend
    }
}

struct Pending<'a> {
    origin: &'a str,
    text: &'a str,
    line: usize,
    raw: RawRule,
}

impl Pending<'_> {
    fn invalid(&self, problem: impl Into<String>) -> RuleSetError {
        self.invalid_at(self.line, problem)
    }

    fn invalid_at(&self, line: usize, problem: impl Into<String>) -> RuleSetError {
        RuleSetError::InvalidRule {
            origin: self.origin.to_string(),
            line,
            rule: self.raw.name.get_ref().clone(),
            problem: problem.into(),
        }
    }

    fn line_of<T>(&self, s: &Spanned<T>) -> usize {
        line_col(self.text, s.span().start).0
    }
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text.as_bytes()[..offset.min(text.len())];
    let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
    let line_start = before
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |i| i + 1);
    (line, before.len() - line_start + 1)
}

struct KeySpec {
    exact: Vec<Vec<u8>>,
    contains: Vec<Vec<u8>>,
    except: Vec<Vec<u8>>,
    except_contains: Vec<Vec<u8>>,
    except_suffix: Vec<Vec<u8>>,
}

fn compile(
    active: Vec<Pending<'_>>,
    defaults: RawKeyDefaults,
    mac: Option<HmacSha256>,
) -> Result<Inner, RuleSetError> {
    if active.len() > usize::from(u16::MAX) {
        return Err(RuleSetError::TooManyRules {
            what: "redaction",
            count: active.len(),
            max: usize::from(u16::MAX),
        });
    }
    let mut rules = Vec::with_capacity(active.len());
    let mut key_specs: Vec<(RuleId, KeySpec)> = Vec::new();
    let mut objects = Vec::new();
    let mut pairs = Vec::new();
    let mut patterns: Vec<(PatternRule, Vec<String>)> = Vec::new();

    for (index, p) in active.iter().enumerate() {
        let id = RuleId(index as u16);
        let raw = &p.raw;
        let name = raw.name.get_ref();
        if name.is_empty()
            || !name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        {
            return Err(p.invalid_at(
                p.line_of(&raw.name),
                "names may use only a-z, 0-9 and _ (they appear inside [REDACTED:<name>]); rename it",
            ));
        }
        let kind = raw.kind.get_ref().as_str();
        let allowed: &[&str] = match kind {
            "key" => &[
                "exact",
                "contains",
                "except",
                "except_contains",
                "except_suffix",
                "on_object",
            ],
            "path" => &["suffix"],
            "object" => &["has", "has_any", "equals", "parent", "redact", "keep"],
            "pair" => &["names", "values"],
            "pattern" => &["anchors", "regex", "max_len", "min_len", "looks_random"],
            other => {
                return Err(p.invalid_at(
                    p.line_of(&raw.kind),
                    format!("unknown kind `{other}`; use one of key, path, object, pair, pattern"),
                ))
            }
        };
        if let Some(field) = raw
            .present_fields()
            .into_iter()
            .find(|f| !allowed.contains(f))
        {
            return Err(p.invalid(format!(
                "field `{field}` does not apply to kind `{kind}` (allowed: {}); remove it or change `kind`",
                allowed.join(", ")
            )));
        }
        let mut descend = false;
        match kind {
            "key" => {
                descend = match raw.on_object.as_ref().map(|s| s.get_ref().as_str()) {
                    None | Some("redact") => false,
                    Some("descend") => true,
                    Some(other) => {
                        return Err(p.invalid_at(
                            p.line_of(raw.on_object.as_ref().expect("present")),
                            format!("on_object = \"{other}\" is not understood; use \"redact\" or \"descend\""),
                        ))
                    }
                };
                let norm_list = |list: &Option<Vec<String>>, field: &str| {
                    list.iter()
                        .flatten()
                        .map(|n| {
                            let v = normalize_owned(n);
                            if v.is_empty() {
                                Err(p.invalid(format!(
                                    "{field} entry {n:?} is empty once `_ - .` and spaces are removed; write the letters of the key"
                                )))
                            } else {
                                Ok(v)
                            }
                        })
                        .collect::<Result<Vec<_>, _>>()
                };
                let spec = KeySpec {
                    exact: norm_list(&raw.exact, "exact")?,
                    contains: norm_list(&raw.contains, "contains")?,
                    except: norm_list(&raw.except, "except")?,
                    except_contains: norm_list(&raw.except_contains, "except_contains")?,
                    except_suffix: norm_list(&raw.except_suffix, "except_suffix")?,
                };
                if spec.exact.is_empty() && spec.contains.is_empty() {
                    return Err(
                        p.invalid("a key rule needs `exact` or `contains` needles; add one")
                    );
                }
                key_specs.push((id, spec));
            }
            "path" => {
                let suffix = raw.suffix.as_ref().ok_or_else(|| {
                    p.invalid("a path rule needs `suffix = \"parent.key\"`; add it")
                })?;
                let segs: Vec<&str> = suffix.get_ref().split('.').collect();
                let line = p.line_of(suffix);
                let (parent, key) = match segs.as_slice() {
                    [parent, key] if !parent.is_empty() && !key.is_empty() => (*parent, *key),
                    _ => {
                        return Err(p.invalid_at(
                            line,
                            "`suffix` must be two dot-separated keys, \"parent.key\" (object rules see only the parent key); for a single key write a key rule",
                        ))
                    }
                };
                objects.push(ObjectRule {
                    id,
                    parent: Some(vec![normalize_owned(parent).into()]),
                    has: Vec::new(),
                    has_any: Vec::new(),
                    equals: Vec::new(),
                    redact: vec![normalize_owned(key).into()],
                    keep: Vec::new(),
                });
            }
            "object" => {
                let keys = |list: &Option<Vec<String>>| -> Vec<Box<[u8]>> {
                    list.iter()
                        .flatten()
                        .map(|k| normalize_owned(k).into())
                        .collect()
                };
                let redact = keys(&raw.redact);
                let keep = keys(&raw.keep);
                if redact.is_empty() && keep.is_empty() {
                    return Err(p.invalid(
                        "an object rule needs `redact = [...]` (or `keep = [...]`) member keys; add them",
                    ));
                }
                if let Some(k) = raw
                    .keep
                    .iter()
                    .flatten()
                    .find(|k| redact.iter().any(|r| **r == *normalize_owned(k)))
                {
                    return Err(p.invalid(format!(
                        "`{k}` is listed in both `redact` and `keep`; keep it in one"
                    )));
                }
                let equals = raw
                    .equals
                    .iter()
                    .flatten()
                    .map(|(k, vals)| {
                        let pats = vals
                            .iter()
                            .map(|v| match v.strip_suffix('*') {
                                Some(prefix) => ValuePat::Prefix(prefix.to_string()),
                                None => ValuePat::Exact(v.clone()),
                            })
                            .collect();
                        (normalize_owned(k).into(), pats)
                    })
                    .collect();
                let rule = ObjectRule {
                    id,
                    parent: raw
                        .parent
                        .as_ref()
                        .map(|l| l.iter().map(|k| normalize_owned(k).into()).collect()),
                    has: keys(&raw.has),
                    has_any: keys(&raw.has_any),
                    equals,
                    redact,
                    keep,
                };
                if rule.parent.is_none()
                    && rule.has.is_empty()
                    && rule.has_any.is_empty()
                    && rule.equals.is_empty()
                {
                    return Err(p.invalid(
                        "an object rule without conditions would redact those keys everywhere; add has/has_any/equals/parent, or write a key rule",
                    ));
                }
                objects.push(rule);
            }
            "pair" => {
                let keys = |list: &Option<Vec<String>>| -> Vec<Box<[u8]>> {
                    list.iter()
                        .flatten()
                        .map(|k| normalize_owned(k).into())
                        .collect()
                };
                let (names, values) = (keys(&raw.names), keys(&raw.values));
                if names.is_empty() || values.is_empty() {
                    return Err(p.invalid("a pair rule needs both `names` and `values`; add them"));
                }
                pairs.push(PairRule { id, names, values });
            }
            "pattern" => {
                let regex_src = raw
                    .regex
                    .as_ref()
                    .ok_or_else(|| p.invalid("a pattern rule needs `regex`; add it"))?;
                let anchors = raw.anchors.clone().unwrap_or_default();
                if anchors.is_empty() {
                    return Err(p.invalid(
                        "a pattern rule needs `anchors`: literal strings every match starts with; add them",
                    ));
                }
                if let Some(a) = anchors.iter().find(|a| a.len() < 3) {
                    return Err(p.invalid(format!(
                        "anchor {a:?} is shorter than 3 bytes and would fire on most strings; use a longer literal"
                    )));
                }
                let max_len = raw.max_len.unwrap_or(1024);
                if max_len == 0 || max_len > MAX_PATTERN_LEN {
                    return Err(p.invalid(format!(
                        "max_len = {max_len} is outside 1..={MAX_PATTERN_LEN}; pick a bound on the match length"
                    )));
                }
                let shortest_anchor = anchors.iter().map(String::len).min().unwrap_or(1);
                let min_len = raw.min_len.unwrap_or(shortest_anchor);
                if min_len > max_len {
                    return Err(p.invalid(format!(
                        "min_len = {min_len} is larger than max_len = {max_len}; lower min_len or raise max_len"
                    )));
                }
                let regex = RegexBuilder::new(regex_src.get_ref())
                    .size_limit(1 << 20)
                    .dfa_size_limit(2 << 20)
                    .build()
                    .map_err(|e| {
                        p.invalid_at(
                            p.line_of(regex_src),
                            format!("regex does not compile ({e}); fix the syntax (Rust `regex` crate: no look-around or backreferences)"),
                        )
                    })?;
                let has_groups = regex.captures_len() > 1;
                patterns.push((
                    PatternRule {
                        id,
                        regex,
                        has_groups,
                        max_len,
                        min_len,
                        looks_random: raw.looks_random.unwrap_or(false),
                    },
                    anchors,
                ));
            }
            _ => unreachable!("kind checked above"),
        }
        rules.push(RuleMeta {
            name: Arc::from(name.as_str()),
            descend,
        });
    }

    if key_specs.len() > MAX_KEY_RULES {
        return Err(RuleSetError::TooManyRules {
            what: "key",
            count: key_specs.len(),
            max: MAX_KEY_RULES,
        });
    }
    if patterns.len() > MAX_PATTERN_RULES {
        return Err(RuleSetError::TooManyRules {
            what: "pattern",
            count: patterns.len(),
            max: MAX_PATTERN_RULES,
        });
    }

    let keys = build_key_matcher(&key_specs, &defaults);

    let mut triggers: Vec<Box<[u8]>> = Vec::new();
    for t in objects
        .iter()
        .flat_map(|o| o.redact.iter().chain(o.keep.iter()))
        .chain(pairs.iter().flat_map(|p| p.values.iter()))
    {
        if !triggers.contains(t) {
            triggers.push(t.clone());
        }
    }

    // Pattern anchors go before the structural ones and longest first, so at
    // a shared start position leftmost-first picks the specific anchor
    // ("-----BEGIN" over "--").
    fn add_anchor(list: &mut Vec<(String, Vec<Action>)>, lit: &str, action: Action) {
        if let Some(entry) = list.iter_mut().find(|(l, _)| l == lit) {
            entry.1.push(action);
        } else {
            list.push((lit.to_string(), vec![action]));
        }
    }
    let mut anchor_list: Vec<(String, Vec<Action>)> = Vec::new();
    for (slot, (_, anchors)) in patterns.iter().enumerate() {
        for a in anchors {
            add_anchor(&mut anchor_list, a, Action::Pattern(slot as u8));
        }
    }
    anchor_list.sort_by_key(|(lit, _)| std::cmp::Reverse(lit.len()));
    if !key_specs.is_empty() {
        for (lit, action) in [
            ("\\\":", Action::EscapedJsonKey),
            ("\":", Action::JsonKey),
            ("\" :", Action::JsonKey),
            ("--", Action::Flag),
            (": ", Action::Header),
            ("=", Action::Assign),
        ] {
            add_anchor(&mut anchor_list, lit, action);
        }
    }
    let text_ac = AhoCorasick::builder()
        .match_kind(MatchKind::LeftmostFirst)
        .build(anchor_list.iter().map(|(l, _)| l.as_bytes()))
        .expect("anchor automaton fits the default limits");
    let anchor_min_len = |actions: &[Action]| {
        actions
            .iter()
            .map(|a| match a {
                Action::Pattern(slot) => patterns[usize::from(*slot)].0.min_len,
                // `k=v`, `--k v`, `"k":v`, `k: v`
                _ => 3,
            })
            .min()
            .unwrap_or(0)
    };
    let text_needles = anchor_list
        .iter()
        .map(|(l, a)| (l.as_bytes(), false, anchor_min_len(a)))
        .collect::<Vec<_>>();
    let text_pairs = PairFilter::new(&text_needles);
    let actions = anchor_list.into_iter().map(|(_, a)| a).collect();

    // Shortest string that could hold anything: `k=v` for the shortest key
    // needle, or the shortest pattern match.
    let min_text_len = keys
        .min_len
        .saturating_add(2)
        .min(
            patterns
                .iter()
                .map(|(p, _)| p.min_len)
                .min()
                .unwrap_or(usize::MAX),
        )
        .max(1);

    let case_bits = |b: u8| 1u64 << (b & 63) | 1u64 << (b.to_ascii_uppercase() & 63);
    let mut trigger_ends = Box::new([0u64; 256]);
    let mut trigger_pens = Box::new([0u64; 256]);
    let mut trigger_short = Box::new([u8::MAX; 256]);
    for t in &triggers {
        if let (Some(&first), Some(&last)) = (t.first(), t.last()) {
            trigger_ends[usize::from(first)] |= case_bits(last);
            trigger_ends[usize::from(first.to_ascii_uppercase())] |= case_bits(last);
            // A one-byte trigger has no byte before its last.
            let pen = t.len().checked_sub(2).map_or(u64::MAX, |i| case_bits(t[i]));
            trigger_pens[usize::from(last)] |= pen;
            trigger_pens[usize::from(last.to_ascii_uppercase())] |= pen;
            let len = t.len().min(usize::from(u8::MAX)) as u8;
            for l in [last, last.to_ascii_uppercase()] {
                trigger_short[usize::from(l)] = trigger_short[usize::from(l)].min(len);
            }
        }
    }
    let trigger_min_len = triggers.iter().map(|t| t.len()).min().unwrap_or(0);
    if trigger_min_len == 0 {
        // A trigger that normalises to nothing: no first or last byte to test.
        trigger_ends.fill(u64::MAX);
        trigger_pens.fill(u64::MAX);
        trigger_short.fill(0);
    }

    Ok(Inner {
        rules,
        keys,
        objects,
        pairs,
        triggers,
        trigger_ends,
        trigger_pens,
        trigger_short,
        trigger_min_len,
        patterns: patterns.into_iter().map(|(p, _)| p).collect(),
        text_pairs,
        text_ac,
        actions,
        min_text_len,
        mac,
        id: NEXT_RULE_SET_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
    })
}

fn build_key_matcher(specs: &[(RuleId, KeySpec)], defaults: &RawKeyDefaults) -> KeyMatcher {
    let mut table: Vec<(Vec<u8>, Vec<Role>)> = Vec::new();
    let mut add = |needle: &[u8], role: Role| {
        if let Some(entry) = table.iter_mut().find(|(n, _)| n == needle) {
            entry.1.push(role);
        } else {
            table.push((needle.to_vec(), vec![role]));
        }
    };
    let mut min_len = usize::MAX;
    for (slot, (_, spec)) in specs.iter().enumerate() {
        let slot = slot as u8;
        for (list, kind) in [
            (&spec.exact, RoleKind::Exact),
            (&spec.contains, RoleKind::Contains),
            (&spec.except, RoleKind::ExceptExact),
            (&spec.except_contains, RoleKind::ExceptContains),
            (&spec.except_suffix, RoleKind::ExceptSuffix),
        ] {
            for n in list {
                if matches!(kind, RoleKind::Exact | RoleKind::Contains) {
                    min_len = min_len.min(n.len());
                }
                add(n, Role { kind, slot });
            }
        }
    }
    if !specs.is_empty() {
        for n in &defaults.except_suffix {
            let n = normalize_owned(n);
            if !n.is_empty() {
                add(
                    &n,
                    Role {
                        kind: RoleKind::GlobalExceptSuffix,
                        slot: 0,
                    },
                );
            }
        }
        for n in &defaults.except_contains {
            let n = normalize_owned(n);
            if !n.is_empty() {
                add(
                    &n,
                    Role {
                        kind: RoleKind::GlobalExceptContains,
                        slot: 0,
                    },
                );
            }
        }
    }
    let mut role_start = Vec::with_capacity(table.len() + 1);
    let mut roles = Vec::new();
    for (_, r) in &table {
        role_start.push(roles.len() as u32);
        roles.extend_from_slice(r);
    }
    role_start.push(roles.len() as u32);
    let ac = (!table.is_empty()).then(|| {
        // Keys are a dozen bytes: a prefilter only adds overhead, and the
        // DFA is the fastest automaton for this small needle set.
        AhoCorasick::builder()
            .match_kind(MatchKind::Standard)
            .kind(Some(AhoCorasickKind::DFA))
            .prefilter(false)
            .build(table.iter().map(|(n, _)| n.as_slice()))
            .expect("key automaton fits the default limits")
    });
    let all_contains: Vec<&[u8]> = specs
        .iter()
        .flat_map(|(_, s)| s.contains.iter().map(Vec::as_slice))
        .collect();
    let mut positives: Vec<(&[u8], bool, usize)> = Vec::new();
    for (_, spec) in specs {
        positives.extend(spec.exact.iter().map(|n| (n.as_slice(), true, 0)));
        // A needle containing another contains-needle ("secretaccesskey"
        // holds "secret") is already covered by that one's bigram.
        positives.extend(
            spec.contains
                .iter()
                .filter(|n| {
                    !all_contains
                        .iter()
                        .any(|o| o.len() < n.len() && n.windows(o.len()).any(|w| w == *o))
                })
                .map(|n| (n.as_slice(), false, 0)),
        );
    }
    KeyMatcher {
        filter: BigramFilter::new(&positives, true),
        ac,
        role_start,
        roles,
        ids: specs.iter().map(|(id, _)| *id).collect(),
        min_len,
    }
}

// --------------------------------------------------------- bigram filter

// What typical audit events are made of: field names (keys) and values from
// CloudTrail, GCP, Azure and Kubernetes, one item per line. Needles are
// fingerprinted by the bigram rarest in these, so the filters stay quiet on
// ordinary events.
const TYPICAL_KEYS: &str = "eventVersion userIdentity type principalId arn accountId \
accessKeyId userName sessionContext sessionIssuer attributes creationDate mfaAuthenticated \
webIdFederationData invokedBy eventTime eventSource eventName awsRegion sourceIPAddress userAgent \
requestParameters responseElements additionalEventData requestID eventID readOnly resources ARN \
resourceType eventType apiVersion managementEvent recipientAccountId sharedEventID vpcEndpointId \
eventCategory tlsDetails tlsVersion cipherSuite clientProvidedHostHeader bucketName key Host \
instanceId instancesSet items imageId instanceType keyName roleArn roleSessionName durationSeconds \
expiration assumedRoleUser policyArn groupName description tagSet tags Key Value filterSet name \
values maxResults errorCode errorMessage SignatureVersion CipherSuite bytesTransferredIn \
bytesTransferredOut AuthenticationMethod functionName runtime handler timeout memorySize \
subnetIds securityGroupIds vpcConfig protoPayload status authenticationInfo principalEmail \
serviceAccountDelegationInfo requestMetadata callerIp callerSuppliedUserAgent requestAttributes \
time destinationAttributes serviceName methodName permission granted resourceAttributes \
resourceName request response insertId labels project_id zone instance_id logName \
receiveTimestamp severity timestamp operation id producer first last resourceId operationName \
category resultType resultSignature resultDescription durationMs callerIpAddress correlationId \
identity action scope claims level location properties statusCode serviceRequestId entity \
message hierarchy tenantId subscriptionId resourceGroupName resourceProviderName \
submissionTimestamp eventTimestamp eventDataId httpRequest clientRequestId clientIpAddress method \
kind auditID stage requestURI verb user username uid groups extra impersonatedUser sourceIPs \
objectRef namespace apiGroup subresource responseStatus metadata code requestReceivedTimestamp \
stageTimestamp annotations creationTimestamp spec containers image ports containerPort protocol \
valueFrom volumeMounts mountPath volumes configMap nodeName restartPolicy serviceAccountName \
dnsPolicy parentId pageSize orderBy parent config region origin count path evidence role \
roleAssignmentScope roleDefinitionId principalType hostname vmId osType provisioningState";

// Keys present in nearly every event of some source: weighted as if seen ten
// times, so a needle's bigram is not one that every event carries.
const HOT_KEYS: &str = "eventVersion userIdentity principalId accountId accessKeyId \
sessionContext sessionIssuer attributes creationDate mfaAuthenticated eventTime eventSource \
eventName awsRegion sourceIPAddress userAgent requestParameters responseElements requestID \
eventID readOnly resources eventType managementEvent recipientAccountId eventCategory \
tlsDetails tlsVersion cipherSuite clientProvidedHostHeader bucketName protoPayload \
authenticationInfo principalEmail requestMetadata callerIp callerSuppliedUserAgent serviceName \
methodName authorizationInfo resourceName insertId logName receiveTimestamp severity timestamp \
resourceId operationName category resultType callerIpAddress correlationId identity level \
properties auditID stage requestURI verb username objectRef namespace responseStatus \
requestReceivedTimestamp stageTimestamp annotations";

const TYPICAL_VALUES: &str = "AssumedRole\narn:aws:sts::123456789012:assumed-role/Admin/alice\n\
2024-05-01T12:00:00Z\ns3.amazonaws.com\nGetObject\nus-east-1\n203.0.113.7\n\
aws-cli/2.13.0 Python/3.11.4 Linux/5.10.0 exe/x86_64.amzn.2 prompt/off command/s3.cp\n\
logs/2024/05/01/app.log.gz\nAwsApiCall\nTLSv1.2\nECDHE-RSA-AES128-GCM-SHA256\n\
type.googleapis.com/google.cloud.audit.AuditLog\nalice@example.com\n\
google.iam.admin.v1.CreateServiceAccountKey\nprojects/my-proj/serviceAccounts/sa@my-proj.iam.gserviceaccount.com\n\
/api/v1/namespaces/default/pods\nkubectl/v1.28.2 (linux/amd64) kubernetes/89a4ea3\n\
system:serviceaccount:kube-system:replicaset-controller\nMicrosoft.Compute/virtualMachines/write\n\
/subscriptions/0b1f6471-1bf0-4dda-aec3-cb9272f09590/resourceGroups/rg-prod/providers/\n\
Succeeded\nAdministrative\nInformational\nmy-bucket\nbackup-bucket\nAWS::S3::Object\n\
Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko)\n\
arn:aws:iam::123456789012:role/service-role/lambda-exec\nsystem:authenticated\n\
Microsoft.KeyVault/vaults/secrets/read\nstorage.googleapis.com\ncompute.instances.insert";

/// English letter frequency (per mille), the tie-breaker for bigrams the
/// corpus does not contain.
fn byte_weight(c: u8) -> u32 {
    const LETTERS: [u32; 26] = [
        82, 15, 28, 43, 127, 22, 20, 61, 70, 2, 8, 40, 24, 67, 75, 19, 1, 60, 63, 91, 28, 10, 24,
        2, 20, 1,
    ];
    match c {
        // 'x' is rare in prose but not in audit data (hex, "example", "x86").
        b'x' | b'X' => 30,
        b'a'..=b'z' => LETTERS[usize::from(c - b'a')],
        b'A'..=b'Z' => LETTERS[usize::from(c - b'A')] / 2 + 1,
        b'0'..=b'9' => 50,
        b'-' | b'.' | b'/' => 80,
        b':' => 70,
        b' ' => 60,
        b'_' => 30,
        _ => 5,
    }
}

/// Rejects, in one pass, strings that contain no needle: each needle is
/// represented by one of its bigrams, and a string can only contain the
/// needle if it contains that bigram. Each byte's entry packs the bits of the
/// bigrams it starts (low half) and ends (high half), so the scan costs one
/// table load per byte and no load depends on the previous one; an automaton
/// pays a dependent load per byte and is several times slower on the short
/// strings audit events are made of.
struct BigramFilter {
    // Per byte: [bits of the bigrams it starts, bits of those it ends]. Two
    // u32 halves rather than one u64, so the scan needs no shifts: per byte
    // one AND with the end half and one OR into the result, from memory.
    table: Box<[[u32; 2]; 256]>,
    // Bits that only `exact` needles use, and the normalised lengths those
    // needles have (bit 63: 63 or longer).
    exact_bits: u64,
    exact_lens: u64,
    // Shortest string in which each bit's needles can lead to a match.
    min_len: [u32; 32],
    // For keys: the needles behind each bit, checked on the normalised key
    // before the full exception analysis runs.
    needles: Vec<Vec<(Box<[u8]>, bool)>>,
}

/// The text prefilter the hot path runs: one byte per possible bigram
/// (64 KiB, indexed by the two bytes read as one little-endian `u16`), so the
/// scan is one 16-bit load and one OR per byte, with no dependence between
/// positions. Each entry holds the length classes (see `len_class`) in which a
/// needle whose chosen bigram this is can still lead to a match; a string is a
/// candidate when some bigram it contains allows the class of its length.
/// Only ever says "maybe" for more strings than the needles occur in: every
/// needle's chosen bigram (or, for a one-byte needle, that byte followed by
/// anything or by the end) is in the table with a class mask covering every
/// length at or above the needle's `min_len`.
struct PairFilter {
    table: Box<[u8; 65536]>,
    // One-byte needles at the end of the string (no byte follows them).
    last: [u8; 256],
    // The class bit of each length (lengths past 255 share the top class).
    len_class: [u8; 256],
}

impl PairFilter {
    fn new(needles: &[(&[u8], bool, usize)]) -> PairFilter {
        let mut seen = vec![0u32; 65536];
        for v in TYPICAL_VALUES.split('\n') {
            for w in v.as_bytes().windows(2) {
                seen[usize::from(w[0]) << 8 | usize::from(w[1])] += 1;
            }
        }
        // Class boundaries: up to 7 of the distinct `min_len`s below 256,
        // spread over their range. Class c holds lengths in
        // [bounds[c - 1], bounds[c]).
        let mut lens: Vec<usize> = needles
            .iter()
            .map(|&(_, _, m)| m)
            .filter(|&m| (1..256).contains(&m))
            .collect();
        lens.sort_unstable();
        lens.dedup();
        let mut bounds: Vec<usize> = if lens.len() <= 7 {
            lens.clone()
        } else {
            (0..7).map(|i| lens[i * (lens.len() - 1) / 6]).collect()
        };
        bounds.dedup();
        let class_of = |len: usize| bounds.iter().filter(|&&b| len >= b).count();
        let mut len_class = [0u8; 256];
        for (len, c) in len_class.iter_mut().enumerate() {
            *c = 1 << class_of(len);
        }
        // The classes containing a length >= m: from class_of(m) up.
        let mask_from = |m: usize| -> u8 { !((1u16 << class_of(m.min(255))) - 1) as u8 };
        let mut f = PairFilter {
            table: vec![0u8; 65536]
                .into_boxed_slice()
                .try_into()
                .expect("65536 entries"),
            last: [0; 256],
            len_class,
        };
        let idx = |a: u8, b: u8| usize::from(u16::from_le_bytes([a, b]));
        for &(needle, _, min_len) in needles {
            let mask = mask_from(min_len);
            match needle {
                [] => {}
                [c] => {
                    f.last[usize::from(*c)] |= mask;
                    for b in 0..=255u8 {
                        f.table[idx(*c, b)] |= mask;
                    }
                }
                _ => {
                    let pair = rarest_pair(needle, &seen);
                    f.table[idx(pair.0, pair.1)] |= mask;
                }
            }
        }
        f
    }

    /// Could `b` contain one of the needles, at a length that can match?
    #[inline]
    fn may_contain(&self, b: &[u8]) -> bool {
        let t = &*self.table;
        // Read as one 16-bit load (separate byte loads would cost a shift and
        // an add per position).
        let at = |w: &[u8], i: usize| {
            let pair: [u8; 2] = w[i..i + 2].try_into().expect("two bytes");
            t[usize::from(u16::from_le_bytes(pair))]
        };
        let mut acc = 0u8;
        // Eight bigrams per step: nine bytes, one bounds check.
        let mut chunks = b;
        while let [_, _, _, _, _, _, _, _, _, ..] = chunks {
            let w = &chunks[..9];
            acc |= at(w, 0) | at(w, 1) | at(w, 2) | at(w, 3);
            acc |= at(w, 4) | at(w, 5) | at(w, 6) | at(w, 7);
            chunks = &chunks[8..];
        }
        for w in chunks.windows(2) {
            acc |= at(w, 0);
        }
        let Some(&end) = b.last() else {
            return false;
        };
        acc |= self.last[usize::from(end)];
        acc & self.len_class[b.len().min(255)] != 0
    }
}

/// The bigram of `needle` (two bytes or more) that typical text holds least often (`seen`:
/// counts by the two bytes as a big-endian u16), ties broken towards rarer bytes: the one a
/// filter keys the needle on.
fn rarest_pair(needle: &[u8], seen: &[u32]) -> (u8, u8) {
    needle
        .windows(2)
        .map(|w| (w[0], w[1]))
        .min_by_key(|&(a, b)| {
            let n = seen[usize::from(a) << 8 | usize::from(b)];
            (u64::from(n) << 32) | u64::from(byte_weight(a) * byte_weight(b))
        })
        .expect("needle has two bytes")
}

// Low-half bit of a single-byte needle; its high-half twin is set for every
// byte, so "followed by anything (or the end)" always completes it.
const SINGLE_BIT: u64 = 1 << 31;
const BIGRAM_BITS: usize = 31;

impl BigramFilter {
    /// Needles are `(bytes, exact, min_len)`: a string shorter than
    /// `min_len` cannot match the rule the needle belongs to. `fold` =
    /// case-insensitive and separator-blind (for keys).
    fn new(needles: &[(&[u8], bool, usize)], fold: bool) -> BigramFilter {
        let mut seen = vec![0u32; 65536];
        let items: Vec<(Vec<u8>, u32)> = if fold {
            TYPICAL_KEYS
                .split(' ')
                .map(|k| (normalize_owned(k), 1))
                .chain(HOT_KEYS.split(' ').map(|k| (normalize_owned(k), 10)))
                .collect()
        } else {
            TYPICAL_VALUES
                .split('\n')
                .map(|v| (v.as_bytes().to_vec(), 1))
                .collect()
        };
        for (item, weight) in &items {
            for w in item.windows(2) {
                seen[usize::from(w[0]) << 8 | usize::from(w[1])] += weight;
            }
        }
        let mut table = Box::new([0u64; 256]);
        let mut f = BigramFilter {
            table: Box::new([[0; 2]; 256]),
            exact_bits: 0,
            exact_lens: 0,
            min_len: [u32::MAX; 32],
            needles: vec![Vec::new(); 32],
        };
        let mut first_bytes: Vec<u8> = Vec::new();
        let mut contains_bits = 0u64;
        for &(needle, exact, min_len) in needles {
            if exact {
                f.exact_lens |= 1u64 << needle.len().min(63);
            }
            let bit = if needle.len() == 1 {
                table[usize::from(needle[0])] |= SINGLE_BIT;
                SINGLE_BIT
            } else {
                let pair = rarest_pair(needle, &seen);
                // One bit per first byte: bigrams sharing a bit then share
                // their first byte, so the bit still means exactly "one of
                // these bigrams occurs". Past 31 first bytes bits are shared
                // across groups: weaker, still never rejecting a needle.
                let index = first_bytes
                    .iter()
                    .position(|&p| p == pair.0)
                    .unwrap_or_else(|| {
                        first_bytes.push(pair.0);
                        first_bytes.len() - 1
                    });
                let bit = 1u64 << (index % BIGRAM_BITS);
                table[usize::from(pair.0)] |= bit;
                table[usize::from(pair.1)] |= bit << 32;
                bit
            };
            if exact {
                f.exact_bits |= bit;
            } else {
                contains_bits |= bit;
            }
            let slot = bit.trailing_zeros() as usize;
            f.min_len[slot] = f.min_len[slot].min(min_len.min(u32::MAX as usize) as u32);
            f.needles[slot].push((needle.into(), exact));
        }
        for entry in table.iter_mut() {
            *entry |= SINGLE_BIT << 32;
        }
        if fold {
            for c in b'A'..=b'Z' {
                table[usize::from(c)] = table[usize::from(c.to_ascii_lowercase())];
            }
        }
        for (pair, &e) in f.table.iter_mut().zip(table.iter()) {
            *pair = [e as u32, (e >> 32) as u32];
        }
        // A bigram shared with a `contains` needle must not be narrowed by
        // the exact-length check.
        f.exact_bits &= !contains_bits;
        f
    }

    /// Bits of the needles the key, normalised, could match (0: none).
    #[inline]
    fn key_bits(&self, b: &[u8]) -> u64 {
        let table = &*self.table;
        let mut acc = 0u32;
        let mut prev = 0u32;
        let mut seps = 0u8;
        for &c in b {
            let e = &table[usize::from(c)];
            acc |= prev & e[1];
            prev = e[0];
            seps |= SEP[usize::from(c)];
        }
        if seps != 0 {
            // snake_case and dotted keys: bigrams span the separators.
            return self.key_bits_skipping_separators(b);
        }
        acc |= prev & SINGLE_BIT as u32;
        self.key_verdict(u64::from(acc), b.len())
    }

    #[cold]
    #[inline(never)]
    fn key_bits_skipping_separators(&self, b: &[u8]) -> u64 {
        let table = &*self.table;
        let mut acc = 0u32;
        let mut prev = 0u32;
        let mut seps = 0usize;
        for &c in b {
            if is_sep(c) {
                seps += 1;
                continue;
            }
            let e = &table[usize::from(c)];
            acc |= prev & e[1];
            prev = e[0];
        }
        acc |= prev & SINGLE_BIT as u32;
        self.key_verdict(u64::from(acc), b.len() - seps)
    }

    /// `acc`, or 0 when only `exact` needles are behind it and none of them
    /// has the key's normalised length `len`.
    #[inline]
    fn key_verdict(&self, acc: u64, len: usize) -> u64 {
        if acc & !self.exact_bits == 0 && self.exact_lens & (1u64 << len.min(63)) == 0 {
            return 0;
        }
        acc
    }
}

/// 1 for the bytes normalisation drops (see `is_sep`).
static SEP: [u8; 256] = {
    let mut t = [0u8; 256];
    t[b'_' as usize] = 1;
    t[b'-' as usize] = 1;
    t[b'.' as usize] = 1;
    t[b' ' as usize] = 1;
    t
};

// ------------------------------------------------------------ key matching

#[inline]
fn is_sep(b: u8) -> bool {
    matches!(b, b'_' | b'-' | b'.' | b' ')
}

fn normalize_owned(key: &str) -> Vec<u8> {
    key.bytes()
        .filter(|&b| !is_sep(b))
        .map(|b| b.to_ascii_lowercase())
        .collect()
}

/// `key`, normalised, equals `needle` (already normalised). No allocation.
fn norm_eq(key: &str, needle: &[u8]) -> bool {
    let mut j = 0;
    for &b in key.as_bytes() {
        if is_sep(b) {
            continue;
        }
        if j >= needle.len() || b.to_ascii_lowercase() != needle[j] {
            return false;
        }
        j += 1;
    }
    j == needle.len()
}

impl KeyMatcher {
    /// `bits`: what the filter saw; the caller has ruled out the common
    /// case already (raw length bounds normalised length from above).
    #[cold]
    #[inline(never)]
    fn lookup(&self, key: &str, bits: u64) -> Option<RuleId> {
        let mut buf = [0u8; NORM_CAP];
        let mut n = 0;
        for &b in key.as_bytes() {
            if is_sep(b) {
                continue;
            }
            if n == NORM_CAP {
                let owned = normalize_owned(key);
                if !self.confirmed(bits, &owned) {
                    return None;
                }
                return self.lookup_normalized(&owned);
            }
            buf[n] = b.to_ascii_lowercase();
            n += 1;
        }
        let k = &buf[..n];
        if !self.confirmed(bits, k) {
            return None;
        }
        self.lookup_normalized(k)
    }

    /// Does the normalised key hold one of the needles behind `bits`? Most
    /// filter hits end here ("creationDate" has the "cr" of "secret").
    fn confirmed(&self, mut bits: u64, k: &[u8]) -> bool {
        while bits != 0 {
            let slot = bits.trailing_zeros() as usize;
            bits &= bits - 1;
            let hit = self.filter.needles[slot].iter().any(|(needle, exact)| {
                if *exact {
                    **needle == *k
                } else {
                    contains(k, needle)
                }
            });
            if hit {
                return true;
            }
        }
        false
    }

    fn lookup_normalized(&self, k: &[u8]) -> Option<RuleId> {
        let ac = self.ac.as_ref()?;
        if k.len() < self.min_len {
            return None;
        }
        let input = Input::new(k);
        let mut state = OverlappingState::start();
        let mut exact: Option<u8> = None;
        // (slot, needle length); more than 8 distinct contains-hits on one
        // key does not happen with sane rules, and dropping extras only
        // loses a tie-break, never a match of the first eight.
        let mut cands = [(0u8, 0usize); 8];
        let mut ncand = 0;
        let mut excepted = 0u64;
        let mut global_except = false;
        loop {
            ac.find_overlapping(input.clone(), &mut state);
            let Some(m) = state.get_match() else { break };
            let suffix = m.end() == k.len();
            let full = suffix && m.start() == 0;
            let p = m.pattern().as_usize();
            let roles = &self.roles[self.role_start[p] as usize..self.role_start[p + 1] as usize];
            for role in roles {
                let bit = 1u64 << role.slot;
                match role.kind {
                    RoleKind::Exact => {
                        if full && exact.is_none_or(|e| role.slot < e) {
                            exact = Some(role.slot);
                        }
                    }
                    RoleKind::Contains => {
                        if ncand < cands.len() {
                            cands[ncand] = (role.slot, m.len());
                            ncand += 1;
                        }
                    }
                    RoleKind::ExceptExact => {
                        if full {
                            excepted |= bit;
                        }
                    }
                    RoleKind::ExceptContains => excepted |= bit,
                    RoleKind::ExceptSuffix => {
                        if suffix {
                            excepted |= bit;
                        }
                    }
                    RoleKind::GlobalExceptContains => global_except = true,
                    RoleKind::GlobalExceptSuffix => {
                        if suffix {
                            global_except = true;
                        }
                    }
                }
            }
        }
        if let Some(slot) = exact {
            return Some(self.ids[usize::from(slot)]);
        }
        if global_except {
            return None;
        }
        let mut best: Option<(u8, usize)> = None;
        for &(slot, len) in &cands[..ncand] {
            if excepted & (1u64 << slot) != 0 {
                continue;
            }
            let better = match best {
                None => true,
                Some((bs, bl)) => len > bl || (len == bl && slot < bs),
            };
            if better {
                best = Some((slot, len));
            }
        }
        best.map(|(slot, _)| self.ids[usize::from(slot)])
    }
}

/// Substring test for short keys: checking the first byte before comparing
/// avoids a `memcmp` call per position.
fn contains(hay: &[u8], needle: &[u8]) -> bool {
    let Some((&first, rest)) = needle.split_first() else {
        return true;
    };
    if hay.len() < needle.len() {
        return false;
    }
    (0..=hay.len() - needle.len()).any(|i| hay[i] == first && &hay[i + 1..i + needle.len()] == rest)
}

impl ObjectRule {
    fn applies(&self, parent_key: Option<&str>, members: &[(&str, Option<&str>)]) -> bool {
        if let Some(parents) = &self.parent {
            let ok = match parent_key {
                None => parents.iter().any(|p| p.is_empty()),
                Some(pk) => parents.iter().any(|p| !p.is_empty() && norm_eq(pk, p)),
            };
            if !ok {
                return false;
            }
        }
        let present = |needle: &[u8]| members.iter().any(|(k, _)| norm_eq(k, needle));
        self.has.iter().all(|h| present(h))
            && (self.has_any.is_empty() || self.has_any.iter().any(|h| present(h)))
            && self.equals.iter().all(|(key, pats)| {
                members.iter().any(|(k, v)| {
                    norm_eq(k, key) && v.is_some_and(|v| pats.iter().any(|p| p.matches(v)))
                })
            })
    }
}

// ------------------------------------------------------------- public API

impl Redactor {
    /// The key rule whose value must be redacted entirely when it sits under
    /// `key` (case-insensitive, `_ - .` and spaces ignored). Hot path: one
    /// automaton pass over the key, no allocation.
    #[inline]
    pub fn key_rule(&self, key: &str) -> Option<RuleId> {
        let keys = &self.inner.keys;
        if key.len() < keys.min_len {
            return None;
        }
        if key.len() >= LONG_KEY {
            return self.key_rule_cached(key, None);
        }
        let bits = keys.filter.key_bits(key.as_bytes());
        if bits == 0 {
            return None;
        }
        self.key_rule_cached(key, Some(bits))
    }

    /// `key_rule` through the thread's verdict cache; `bits`: the filter's
    /// answer when it already ran.
    #[cold]
    #[inline(never)]
    fn key_rule_cached(&self, key: &str, bits: Option<u64>) -> Option<RuleId> {
        let uncached = || {
            let keys = &self.inner.keys;
            let bits = bits.unwrap_or_else(|| keys.filter.key_bits(key.as_bytes()));
            if bits == 0 {
                return None;
            }
            keys.lookup(key, bits)
        };
        KEY_CACHE
            .try_with(|cache| {
                let Ok(mut cache) = cache.try_borrow_mut() else {
                    return uncached();
                };
                if cache.owner != self.inner.id {
                    cache.verdicts.clear();
                    cache.owner = self.inner.id;
                }
                if let Some(&v) = cache.verdicts.get(key) {
                    return v;
                }
                let v = uncached();
                if cache.verdicts.len() >= KEY_CACHE_MAX {
                    cache.verdicts.clear();
                }
                cache.verdicts.insert(key.into(), v);
                v
            })
            .unwrap_or_else(|_| uncached())
    }

    /// Given the keys and string values of ONE object's direct members (in
    /// order), the member indexes that must be fully redacted by object,
    /// path and pair rules, in ascending index order. `parent_key` is the key
    /// the object sits under (for objects inside an array, the array's key).
    /// Members a `keep` rule names are left out. Returns an empty, unallocated
    /// Vec when nothing applies. [`object_verdicts`](Self::object_verdicts)
    /// also lists the kept members, which key rules must leave alone too.
    pub fn object_rules(
        &self,
        parent_key: Option<&str>,
        members: &[(&str, Option<&str>)],
    ) -> Vec<(usize, RuleId)> {
        let verdicts = self.object_verdicts(parent_key, members);
        if verdicts.is_empty() {
            return Vec::new();
        }
        verdicts
            .into_iter()
            .filter_map(|(i, v)| match v {
                MemberVerdict::Redact(rule) => Some((i, rule)),
                MemberVerdict::Keep(_) => None,
            })
            .collect()
    }

    /// What object, path and pair rules say about the members of ONE object
    /// (arguments as for [`object_rules`](Self::object_rules)), in ascending
    /// member order: redact the value, or keep it because it names a secret
    /// rather than holding one. A kept value is not redacted by any key,
    /// object, path or pair rule; text rules still apply to it. Members
    /// without a verdict get the key rules as usual.
    pub fn object_verdicts(
        &self,
        parent_key: Option<&str>,
        members: &[(&str, Option<&str>)],
    ) -> Vec<(usize, MemberVerdict)> {
        let mut out: Vec<(usize, MemberVerdict)> = Vec::new();
        for rule in &self.inner.objects {
            if !rule.applies(parent_key, members) {
                continue;
            }
            for (i, (k, _)) in members.iter().enumerate() {
                if rule.redact.iter().any(|t| norm_eq(k, t)) {
                    out.push((i, MemberVerdict::Redact(rule.id)));
                } else if rule.keep.iter().any(|t| norm_eq(k, t)) {
                    out.push((i, MemberVerdict::Keep(rule.id)));
                }
            }
        }
        for pair in &self.inner.pairs {
            let named = members.iter().any(|(k, v)| {
                pair.names.iter().any(|n| norm_eq(k, n))
                    && v.is_some_and(|v| self.key_rule(v).is_some())
            });
            if !named {
                continue;
            }
            for (i, (k, _)) in members.iter().enumerate() {
                if pair.values.iter().any(|t| norm_eq(k, t)) {
                    out.push((i, MemberVerdict::Redact(pair.id)));
                }
            }
        }
        // One entry per member: a keep, else the first rule in file order.
        // Sorted and deduplicated at the end rather than checked per push: an
        // object repeating one key many times (a damaged dead letter) stays
        // n log n.
        out.sort_by_key(|&(i, v)| (i, !matches!(v, MemberVerdict::Keep(_))));
        out.dedup_by_key(|&mut (i, _)| i);
        out
    }

    /// Whether `other` is this rule set (a clone of it): verdicts cached for one hold for
    /// the other.
    pub fn same_rules(&self, other: &Redactor) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }

    /// Both key checks on one key (what [`KeyMemo`] remembers).
    pub fn key_verdict(&self, key: &str) -> KeyVerdict {
        KeyVerdict {
            rule: self.key_rule(key),
            trigger: self.key_might_trigger(key),
        }
    }

    /// [`object_might_match`](Self::object_might_match) for one key.
    #[inline]
    pub fn key_might_trigger(&self, key: &str) -> bool {
        let inner = &*self.inner;
        !inner.triggers.is_empty() && inner.might_trigger(key)
    }

    /// Cheap pre-check for [`object_rules`](Self::object_rules): false when
    /// none of the keys is one an object, path or pair rule could redact.
    #[inline]
    pub fn object_might_match<'k, I: Iterator<Item = &'k str>>(&self, keys: &mut I) -> bool {
        let inner = &*self.inner;
        if inner.triggers.is_empty() {
            return false;
        }
        keys.any(|k| inner.might_trigger(k))
    }
}

impl Inner {
    /// Could `key`, normalised, be one of the triggers? A first/last byte and
    /// length check rejects nearly every key before any comparison.
    #[inline]
    fn might_trigger(&self, key: &str) -> bool {
        self.trigger_bytes_fit(key.as_bytes()) && self.triggers.iter().any(|t| norm_eq(key, t))
    }

    /// The table part of `might_trigger`: false only for keys that cannot
    /// normalise to a trigger.
    #[inline]
    fn trigger_bytes_fit(&self, b: &[u8]) -> bool {
        if b.len() < self.trigger_min_len {
            return false;
        }
        let (Some(&first), Some(&last)) = (b.first(), b.last()) else {
            return true;
        };
        if is_sep(first) || is_sep(last) {
            return true;
        }
        if self.trigger_ends[usize::from(first)] & (1u64 << (last & 63)) == 0
            || b.len() < usize::from(self.trigger_short[usize::from(last)])
        {
            return false;
        }
        match b.len().checked_sub(2).map(|i| b[i]) {
            Some(pen) if !is_sep(pen) => {
                self.trigger_pens[usize::from(last)] & (1u64 << (pen & 63)) != 0
            }
            _ => true,
        }
    }
}

impl Redactor {
    /// Redacts pattern secrets and embedded forms (JSON carried in a string,
    /// query strings, command lines, `NAME=value`, header lines) inside a
    /// free string, keeping the rest intact. Borrowed when nothing matched.
    #[inline]
    pub fn redact_text<'a>(&self, s: &'a str, counts: &mut RedactionCounts) -> Cow<'a, str> {
        let inner = &*self.inner;
        if s.len() < inner.min_text_len || !inner.text_pairs.may_contain(s.as_bytes()) {
            return Cow::Borrowed(s);
        }
        self.redact_text_slow(s, counts)
    }

    /// The cheap first step of [`redact_text`](Self::redact_text), for callers
    /// that keep their own cache of clean strings: false means `redact_text`
    /// returns `s` borrowed and counts nothing.
    #[inline]
    pub fn text_might_match(&self, s: &str) -> bool {
        let inner = &*self.inner;
        s.len() >= inner.min_text_len && inner.text_pairs.may_contain(s.as_bytes())
    }

    /// [`redact_text`](Self::redact_text) for a string that
    /// [`text_might_match`](Self::text_might_match) accepted (the filter is
    /// not run again).
    pub fn redact_text_matched<'a>(
        &self,
        s: &'a str,
        counts: &mut RedactionCounts,
    ) -> Cow<'a, str> {
        self.redact_text_slow(s, counts)
    }

    // Kept out of line so the common path above stays a few instructions
    // around the filter loop, without this path's stack frame.
    #[cold]
    #[inline(never)]
    fn redact_text_slow<'a>(&self, s: &'a str, counts: &mut RedactionCounts) -> Cow<'a, str> {
        let Some(first) = self.inner.text_ac.find(s) else {
            return Cow::Borrowed(s);
        };
        let mut edits = Vec::new();
        self.scan_text(s, first.start(), &mut edits, &[]);
        if edits.is_empty() {
            return Cow::Borrowed(s);
        }
        Cow::Owned(self.apply_edits(s, edits, counts))
    }

    /// The replacement for `secret` matched by `rule`.
    /// The replacement for `secret`, counted against `rule` (for walkers outside this module,
    /// such as the event encoder, which redact values in place of `redact_value`).
    pub fn replace_counted(
        &self,
        rule: RuleId,
        secret: &str,
        counts: &mut RedactionCounts,
    ) -> String {
        counts.add(&self.inner.rules[rule.index()].name, 1);
        self.replacement(rule, secret)
    }

    pub fn replacement(&self, rule: RuleId, secret: &str) -> String {
        let mut out = String::with_capacity(48);
        self.write_replacement(&mut out, rule, secret);
        out
    }

    /// Whole-tree redaction for serde_json values (dead letters, tests): key,
    /// object, path and pair rules at every depth, and text rules on every
    /// string that is not redacted whole.
    pub fn redact_json(&self, v: &mut Value, counts: &mut RedactionCounts) {
        self.walk_json(v, None, counts);
    }

    /// Redacts every leaf of `v` with `rule` (what a key rule does to the
    /// value under its key). Numbers and booleans become replacement strings;
    /// nulls and empty strings hold nothing and stay.
    pub fn redact_value(&self, v: &mut Value, rule: RuleId, counts: &mut RedactionCounts) {
        match v {
            Value::String(s) => {
                if !s.is_empty() {
                    *s = self.replacement(rule, s);
                    counts.add(&self.inner.rules[rule.index()].name, 1);
                }
            }
            Value::Number(n) => {
                *v = Value::String(self.replacement(rule, &n.to_string()));
                counts.add(&self.inner.rules[rule.index()].name, 1);
            }
            Value::Bool(b) => {
                *v = Value::String(self.replacement(rule, if *b { "true" } else { "false" }));
                counts.add(&self.inner.rules[rule.index()].name, 1);
            }
            Value::Null => {}
            Value::Array(items) => {
                for item in items {
                    self.redact_value(item, rule, counts);
                }
            }
            Value::Object(map) => {
                for (_, item) in map.iter_mut() {
                    self.redact_value(item, rule, counts);
                }
            }
        }
    }

    /// Redacts the raw bytes of a dead letter. A JSON document that parses is
    /// redacted as a tree and re-serialised. Anything else (NDJSON, JSON cut
    /// short or damaged, text, bytes that are not UTF-8) keeps its bytes and
    /// only the secrets in it are replaced: key, object, path and pair rules
    /// apply to whatever JSON structure can be read from it (see
    /// `TolerantParser`), text rules to each line. Bytes that are not UTF-8
    /// come back as they were, unless they are part of a secret.
    pub fn redact_bytes(&self, raw: &[u8], counts: &mut RedactionCounts) -> Vec<u8> {
        let trimmed = raw.trim_ascii();
        if matches!(trimmed.first(), Some(b'{' | b'[')) {
            if let Ok(mut v) = serde_json::from_slice::<Value>(trimmed) {
                self.redact_json(&mut v, counts);
                let mut out = serde_json::to_vec(&v).expect("a Value always serialises");
                if raw.ends_with(b"\n") {
                    out.push(b'\n');
                }
                return out;
            }
        }
        let text = match std::str::from_utf8(raw) {
            Ok(s) => Cow::Borrowed(s),
            Err(_) => Cow::Owned(shadow_text(raw)),
        };
        let edits = self.damaged_edits(&text);
        if edits.is_empty() {
            return raw.to_vec();
        }
        self.apply_edits_to_bytes(raw, edits, counts)
    }

    /// The edits of `redact_bytes` for input that is not one JSON document.
    /// Dead letters only: the event path never comes here.
    fn damaged_edits(&self, s: &str) -> Vec<Edit> {
        let mut edits = Vec::new();
        // Tree edits go first: where they cover the same bytes as a text
        // edit, the rule that saw the object names the replacement.
        let tree_keys = self.tolerant_json(s, 0, &mut edits);
        let b = s.as_bytes();
        let mut at = 0;
        while at < b.len() {
            let line_end = b[at..]
                .iter()
                .position(|&c| c == b'\n')
                .map_or(b.len(), |k| at + k);
            let body_end = if line_end > at && b[line_end - 1] == b'\r' {
                line_end - 1
            } else {
                line_end
            };
            let line = &s[at..body_end];
            if self.text_might_match(line) {
                if let Some(first) = self.inner.text_ac.find(line) {
                    let lo = tree_keys.partition_point(|&k| k < at);
                    let hi = tree_keys.partition_point(|&k| k < body_end);
                    let keys: Vec<usize> = tree_keys[lo..hi].iter().map(|&k| k - at).collect();
                    let mut line_edits = Vec::new();
                    self.scan_text(line, first.start(), &mut line_edits, &keys);
                    edits.extend(line_edits.into_iter().map(|mut e| {
                        e.start += at;
                        e.end += at;
                        e
                    }));
                }
            }
            at = line_end + 1;
        }
        edits
    }
}

/// `raw` as text of the same length: each byte of an invalid UTF-8 sequence
/// becomes NUL, which no rule matches and every scanner takes as part of the
/// value around it, so positions found in the text are positions in `raw`
/// that do not split any character `raw` holds.
fn shadow_text(raw: &[u8]) -> String {
    let mut s = String::with_capacity(raw.len());
    for chunk in raw.utf8_chunks() {
        s.push_str(chunk.valid());
        s.extend(std::iter::repeat_n('\0', chunk.invalid().len()));
    }
    s
}

// ------------------------------------------------------------- tree walks

/// The verdict on member `i` in `object_verdicts`' answer (sorted by member).
fn verdict_of(verdicts: &[(usize, MemberVerdict)], i: usize) -> Option<MemberVerdict> {
    verdicts
        .binary_search_by_key(&i, |h| h.0)
        .ok()
        .map(|at| verdicts[at].1)
}

impl Redactor {
    fn walk_json(&self, v: &mut Value, parent: Option<&str>, counts: &mut RedactionCounts) {
        match v {
            Value::String(s) => {
                if let Cow::Owned(o) = self.redact_text(s, counts) {
                    *s = o;
                }
            }
            Value::Array(items) => {
                // ["--db-password", "S3cret"]: container args split flag and
                // value into separate elements.
                let mut pending: Option<RuleId> = None;
                for item in items.iter_mut() {
                    if let Some(rule) = pending.take() {
                        if let Value::String(s) = item {
                            if !s.is_empty() && !s.starts_with('-') {
                                self.redact_value(item, rule, counts);
                                continue;
                            }
                        }
                    }
                    pending = match item {
                        Value::String(s) => self.flag_element_rule(s),
                        _ => None,
                    };
                    self.walk_json(item, parent, counts);
                }
            }
            Value::Object(map) => {
                let hits = if self.object_might_match(&mut map.keys().map(String::as_str)) {
                    let members: Vec<(&str, Option<&str>)> =
                        map.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
                    self.object_verdicts(parent, &members)
                } else {
                    Vec::new()
                };
                for (i, (k, child)) in map.iter_mut().enumerate() {
                    match verdict_of(&hits, i) {
                        Some(MemberVerdict::Redact(rule)) => {
                            self.redact_value(child, rule, counts);
                            continue;
                        }
                        Some(MemberVerdict::Keep(_)) => {
                            self.walk_json(child, Some(k), counts);
                            continue;
                        }
                        None => {}
                    }
                    match self.key_rule(k) {
                        Some(rule)
                            if !(self.descends_into_containers(rule)
                                && (child.is_object() || child.is_array())) =>
                        {
                            self.redact_value(child, rule, counts)
                        }
                        _ => self.walk_json(child, Some(k), counts),
                    }
                }
            }
            Value::Number(_) | Value::Bool(_) | Value::Null => {}
        }
    }

    /// `--name` alone in an array element, where `name` is a secret key.
    pub fn flag_element_rule(&self, s: &str) -> Option<RuleId> {
        let name = s.strip_prefix("--")?;
        if name.is_empty() || name.len() > KEY_SCAN_MAX || !name.bytes().all(is_key_byte) {
            return None;
        }
        self.key_rule(name)
    }
}

// ------------------------------------------------------------ text engine

#[derive(Clone, Copy, PartialEq, Eq)]
enum Quote {
    // Replace the bytes as they are (inside an existing string).
    None,
    // A bare JSON scalar or container: the replacement needs quotes to stay JSON.
    Plain,
    // The same inside escaped JSON: quotes are written with this many
    // backslashes in front.
    Escaped(u8),
}

#[derive(Clone, Copy)]
struct Edit {
    start: usize,
    end: usize,
    rule: RuleId,
    quote: Quote,
    // The bytes are a JSON string body with escapes, this many levels deep
    // (2: a string inside a JSON document carried in a string); hash the
    // decoded value so the tag matches the one redact_json computes for the
    // same secret.
    json_escaped: u8,
    // Where a position rule (key, object, pair) and a pattern cover the same
    // bytes, the position rule names the replacement: it is the more
    // specific statement about what the value is.
    from_pattern: bool,
}

impl Edit {
    fn new(start: usize, end: usize, rule: RuleId) -> Edit {
        Edit {
            start,
            end,
            rule,
            quote: Quote::None,
            json_escaped: 0,
            from_pattern: false,
        }
    }
}

#[inline]
fn is_key_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.')
}

#[inline]
fn is_value_delim(b: u8) -> bool {
    matches!(
        b,
        b' ' | b'\t'
            | b'\n'
            | b'\r'
            | b'&'
            | b';'
            | b','
            | b'"'
            | b'\''
            | b'<'
            | b'>'
            | b'|'
            | b'`'
            | b'('
            | b')'
            | b'['
            | b']'
            | b'{'
            | b'}'
            | b'\\'
            | b'#'
    )
}

/// Start of the run of key bytes ending at `end` (at most KEY_SCAN_MAX long).
fn key_run_before(b: &[u8], end: usize) -> usize {
    let lo = end.saturating_sub(KEY_SCAN_MAX);
    let mut i = end;
    while i > lo && is_key_byte(b[i - 1]) {
        i -= 1;
    }
    i
}

/// Position of the closing `q` at or after `from` (an unescaped `"` for
/// double quotes), or the end of the input for a truncated value.
fn find_close(b: &[u8], from: usize, q: u8) -> usize {
    let mut i = from;
    while i < b.len() {
        if b[i] == b'\\' && q == b'"' {
            i += 2;
            continue;
        }
        if b[i] == q {
            return i;
        }
        i += 1;
    }
    b.len()
}

/// Position of the backslash of the next `\"` at or after `from`.
fn find_escaped_close(b: &[u8], from: usize) -> usize {
    let mut i = from;
    while i + 1 < b.len() {
        if b[i] == b'\\' {
            if b[i + 1] == b'"' {
                return i;
            }
            i += 2;
            continue;
        }
        i += 1;
    }
    b.len()
}

/// End (exclusive) of the JSON container starting at `start`; string-aware.
fn container_end(b: &[u8], start: usize) -> usize {
    let mut depth = 0usize;
    let mut i = start;
    while i < b.len() {
        match b[i] {
            b'"' => {
                i = find_close(b, i + 1, b'"');
            }
            b'{' | b'[' => depth += 1,
            b'}' | b']' => {
                depth = depth.saturating_sub(1);
                if depth == 0 {
                    return i + 1;
                }
            }
            _ => {}
        }
        i += 1;
    }
    b.len()
}

struct ValueSpan {
    start: usize,
    end: usize,
    resume: usize,
}

/// The value starting at `vs`: quoted (to the closing quote, or the end of a
/// truncated input) or bare (to the next delimiter).
fn value_at(b: &[u8], vs: usize) -> Option<ValueSpan> {
    let c = *b.get(vs)?;
    let span = match c {
        b'"' | b'\'' => {
            let end = find_close(b, vs + 1, c);
            ValueSpan {
                start: vs + 1,
                end,
                resume: (end + 1).min(b.len()),
            }
        }
        b'\\' if b.get(vs + 1) == Some(&b'"') => {
            let end = find_escaped_close(b, vs + 2);
            ValueSpan {
                start: vs + 2,
                end,
                resume: (end + 2).min(b.len()),
            }
        }
        b'=' => return None,
        _ => {
            let mut end = vs;
            while end < b.len() && !is_value_delim(b[end]) {
                end += 1;
            }
            ValueSpan {
                start: vs,
                end,
                resume: end,
            }
        }
    };
    (span.end > span.start).then_some(span)
}

// Authorization schemes: the credential is the token after the scheme word.
const AUTH_SCHEMES: &[&str] = &[
    "bearer",
    "basic",
    "token",
    "negotiate",
    "ntlm",
    "sharedkey",
    "sharedkeylite",
    "splunk",
    "apikey",
    "key",
];
// Schemes whose parameters are `k=v` lists; the `=` scanner handles them.
const PARAM_SCHEMES: &[&str] = &["digest", "aws4-hmac-sha256", "sharedaccesssignature"];

fn in_list(word: &[u8], list: &[&str]) -> bool {
    list.iter().any(|w| w.as_bytes().eq_ignore_ascii_case(word))
}

/// A word rather than a credential: no digit, no inner symbol, no
/// lower-to-upper case change ("Authentication", "tokens.").
fn looks_random(t: &str) -> bool {
    let b = t.as_bytes();
    let mut lower_seen = false;
    for (i, &c) in b.iter().enumerate() {
        if c.is_ascii_digit() {
            return true;
        }
        if b"+/=._~-".contains(&c) && i + 1 < b.len() {
            return true;
        }
        if c.is_ascii_uppercase() && lower_seen {
            return true;
        }
        if c.is_ascii_lowercase() {
            lower_seen = true;
        }
    }
    false
}

impl Redactor {
    /// `tree_keys`: ascending positions of the closing quotes of `"key":`
    /// members that a JSON tree already judged with their object around them
    /// (see `damaged_edits`); the textual scanner, which sees only the key,
    /// leaves those alone so the verdict made in context stands.
    fn scan_text(&self, s: &str, from: usize, edits: &mut Vec<Edit>, tree_keys: &[usize]) {
        let inner = &*self.inner;
        // A string that is itself a JSON document gets object, pair and path
        // rules too; its `"key":` members are then covered and the textual
        // JSON scanner stands down for them.
        let json_doc = looks_like_json(s.as_bytes()) && self.span_json(s, edits);
        let mut cursor = 0usize;
        let mut covered = [0usize; MAX_PATTERN_RULES];
        for m in inner.text_ac.find_iter(Input::new(s).range(from..)) {
            let p = m.start();
            if p < cursor {
                continue;
            }
            for &action in &inner.actions[m.pattern().as_usize()] {
                let found = match action {
                    Action::Assign => self.at_assign(s, p),
                    Action::Flag => self.at_flag(s, p),
                    Action::Header => self.at_header(s, p),
                    Action::JsonKey if !json_doc && tree_keys.binary_search(&p).is_err() => {
                        self.at_json_key(s, p, m.end())
                    }
                    Action::JsonKey => None,
                    Action::EscapedJsonKey => self.at_escaped_json_key(s, p),
                    Action::Pattern(slot) => {
                        self.at_pattern(s, p, usize::from(slot), &mut covered, edits);
                        None
                    }
                };
                if let Some((edit, resume)) = found {
                    edits.push(edit);
                    cursor = cursor.max(resume);
                }
            }
        }
    }

    fn at_assign(&self, s: &str, p: usize) -> Option<(Edit, usize)> {
        let b = s.as_bytes();
        let mut ke = p;
        let mut spaced = false;
        while ke > 0 && b[ke - 1] == b' ' && p - ke < 4 {
            ke -= 1;
            spaced = true;
        }
        let ks = key_run_before(b, ke);
        if ks == ke {
            return None;
        }
        let rule = self.key_rule(&s[ks..ke])?;
        let mut vs = p + 1;
        if spaced {
            while vs < b.len() && b[vs] == b' ' {
                vs += 1;
            }
        }
        let v = value_at(b, vs)?;
        Some((Edit::new(v.start, v.end, rule), v.resume))
    }

    fn at_flag(&self, s: &str, p: usize) -> Option<(Edit, usize)> {
        let b = s.as_bytes();
        if p > 0
            && !matches!(
                b[p - 1],
                b' ' | b'\t' | b'\n' | b'"' | b'\'' | b'(' | b'[' | b','
            )
        {
            return None;
        }
        let ks = p + 2;
        let mut ke = ks;
        while ke < b.len() && ke - ks < KEY_SCAN_MAX && is_key_byte(b[ke]) {
            ke += 1;
        }
        // `--name=value` is left to the `=` scanner.
        if ke == ks || ke >= b.len() || !matches!(b[ke], b' ' | b'\t') {
            return None;
        }
        let rule = self.key_rule(&s[ks..ke])?;
        let mut vs = ke;
        while vs < b.len() && matches!(b[vs], b' ' | b'\t') {
            vs += 1;
        }
        // The next token is another option: this flag takes no value here
        // (`--password-stdin`, a prompt).
        if b.get(vs) == Some(&b'-') {
            return None;
        }
        let v = value_at(b, vs)?;
        Some((Edit::new(v.start, v.end, rule), v.resume))
    }

    fn at_header(&self, s: &str, p: usize) -> Option<(Edit, usize)> {
        let b = s.as_bytes();
        let ks = key_run_before(b, p);
        if ks == p {
            return None;
        }
        let rule = self.key_rule(&s[ks..p])?;
        let mut vs = p + 1;
        while vs < b.len() && matches!(b[vs], b' ' | b'\t') {
            vs += 1;
        }
        let mut te = vs;
        while te < b.len() && !is_value_delim(b[te]) {
            te += 1;
        }
        let word = &b[vs..te];
        if in_list(word, PARAM_SCHEMES) {
            return None;
        }
        if in_list(word, AUTH_SCHEMES) {
            // "Authorization: Bearer" with no credential: the scheme word is
            // not a secret.
            if b.get(te) != Some(&b' ') {
                return None;
            }
            vs = te;
            while vs < b.len() && b[vs] == b' ' {
                vs += 1;
            }
        }
        let v = value_at(b, vs)?;
        Some((Edit::new(v.start, v.end, rule), v.resume))
    }

    fn at_json_key(&self, s: &str, p: usize, anchor_end: usize) -> Option<(Edit, usize)> {
        let b = s.as_bytes();
        let lo = p.saturating_sub(KEY_SCAN_MAX * 2);
        let mut q = p;
        let open = loop {
            if q <= lo {
                return None;
            }
            q -= 1;
            if b[q] == b'"' && (q == 0 || b[q - 1] != b'\\') {
                break q;
            }
        };
        let rule = self.key_rule(&s[open + 1..p])?;
        let mut vs = anchor_end;
        while vs < b.len() && matches!(b[vs], b' ' | b'\t' | b'\n' | b'\r') {
            vs += 1;
        }
        match *b.get(vs)? {
            b'"' => {
                let end = find_close(b, vs + 1, b'"');
                if end == vs + 1 {
                    return None;
                }
                let mut e = Edit::new(vs + 1, end, rule);
                e.json_escaped = u8::from(b[vs + 1..end].contains(&b'\\'));
                Some((e, (end + 1).min(b.len())))
            }
            b'{' | b'[' => {
                if self.descends_into_containers(rule) {
                    return None;
                }
                let end = container_end(b, vs);
                let mut e = Edit::new(vs, end, rule);
                e.quote = Quote::Plain;
                Some((e, end))
            }
            _ => {
                let mut end = vs;
                while end < b.len()
                    && (b[end].is_ascii_alphanumeric() || matches!(b[end], b'.' | b'+' | b'-'))
                {
                    end += 1;
                }
                if end == vs || &b[vs..end] == b"null" {
                    return None;
                }
                let mut e = Edit::new(vs, end, rule);
                e.quote = Quote::Plain;
                Some((e, end))
            }
        }
    }

    /// `\"key\": \"value\"` at any escaping depth (`\\\"` inside JSON
    /// carried in JSON carried in a string...). `p` is the backslash of the
    /// `\":` anchor.
    fn at_escaped_json_key(&self, s: &str, p: usize) -> Option<(Edit, usize)> {
        let b = s.as_bytes();
        let lo = p.saturating_sub(KEY_SCAN_MAX * 2);
        let mut q = p;
        let open = loop {
            if q <= lo + 1 {
                return None;
            }
            q -= 1;
            if b[q] == b'"' && b[q - 1] == b'\\' {
                break q;
            }
        };
        let mut key_end = p;
        while key_end > open + 1 && b[key_end - 1] == b'\\' {
            key_end -= 1;
        }
        let rule = self.key_rule(&s[open + 1..key_end])?;
        let mut vs = p + 3;
        while vs < b.len() && b[vs] == b' ' {
            vs += 1;
        }
        let mut depth = 0;
        while vs + depth < b.len() && b[vs + depth] == b'\\' {
            depth += 1;
        }
        if depth > 0 && b.get(vs + depth) == Some(&b'"') {
            let start = vs + depth + 1;
            let mut j = start;
            let end = loop {
                if j >= b.len() {
                    break b.len();
                }
                if b[j] == b'"' && j >= start + depth && b[j - depth..j].iter().all(|&c| c == b'\\')
                {
                    break j - depth;
                }
                j += 1;
            };
            if end <= start {
                return None;
            }
            return Some((Edit::new(start, end, rule), (end + depth + 1).min(b.len())));
        }
        let mut end = vs;
        while end < b.len()
            && (b[end].is_ascii_alphanumeric() || matches!(b[end], b'.' | b'+' | b'-'))
        {
            end += 1;
        }
        if end == vs || &b[vs..end] == b"null" {
            return None;
        }
        let mut e = Edit::new(vs, end, rule);
        e.quote = Quote::Escaped((p - key_end).min(255) as u8);
        Some((e, end))
    }

    /// Runs pattern `slot` over the window starting at anchor `p`. Windows of
    /// one rule overlap by at most `max_len`, which keeps the total work
    /// linear however densely anchors repeat.
    fn at_pattern(
        &self,
        s: &str,
        p: usize,
        slot: usize,
        covered: &mut [usize],
        edits: &mut Vec<Edit>,
    ) {
        let rule = &self.inner.patterns[slot];
        if p < covered[slot] || s.len() - p < rule.min_len {
            return;
        }
        let mut we = p.saturating_add(2 * rule.max_len).min(s.len());
        while !s.is_char_boundary(we) {
            we -= 1;
        }
        covered[slot] = if we == s.len() {
            usize::MAX
        } else {
            we.saturating_sub(rule.max_len).max(p + 1)
        };
        let hay = &s[..we];
        let mut at = p;
        while at < we {
            let (whole_end, target) = if rule.has_groups {
                let Some(caps) = rule.regex.captures_at(hay, at) else {
                    break;
                };
                let whole = caps.get(0).expect("group 0 always participates");
                let target = (1..caps.len()).find_map(|i| caps.get(i)).unwrap_or(whole);
                (
                    whole.end().max(whole.start() + 1),
                    (target.start(), target.end()),
                )
            } else {
                let Some(m) = rule.regex.find_at(hay, at) else {
                    break;
                };
                (m.end().max(m.start() + 1), (m.start(), m.end()))
            };
            let (ts, te) = target;
            if te > ts && (!rule.looks_random || looks_random(&s[ts..te])) {
                let mut e = Edit::new(ts, te, rule.id);
                e.from_pattern = true;
                edits.push(e);
            }
            at = whole_end;
            while at < we && !s.is_char_boundary(at) {
                at += 1;
            }
        }
    }

    fn apply_edits(&self, s: &str, edits: Vec<Edit>, counts: &mut RedactionCounts) -> String {
        let merged = merge_edits(edits);
        let mut out = String::with_capacity(s.len() + merged.len() * 40);
        let mut last = 0;
        for e in &merged {
            out.push_str(&s[last..e.start]);
            self.write_edit(&mut out, e, &s[e.start..e.end], counts);
            last = e.end;
        }
        out.push_str(&s[last..]);
        out
    }

    /// `apply_edits` onto bytes that need not be UTF-8 (edits found in their
    /// `shadow_text`): every byte outside the edits is copied as it is.
    fn apply_edits_to_bytes(
        &self,
        b: &[u8],
        edits: Vec<Edit>,
        counts: &mut RedactionCounts,
    ) -> Vec<u8> {
        let merged = merge_edits(edits);
        let mut out = Vec::with_capacity(b.len() + merged.len() * 40);
        let mut rep = String::new();
        let mut last = 0;
        for e in &merged {
            out.extend_from_slice(&b[last..e.start]);
            rep.clear();
            let secret = String::from_utf8_lossy(&b[e.start..e.end]);
            self.write_edit(&mut rep, e, &secret, counts);
            out.extend_from_slice(rep.as_bytes());
            last = e.end;
        }
        out.extend_from_slice(&b[last..]);
        out
    }

    /// The replacement for one edit of `raw`, quoted as the edit says.
    fn write_edit(&self, out: &mut String, e: &Edit, raw: &str, counts: &mut RedactionCounts) {
        let decoded;
        let secret = if e.json_escaped > 0 && self.inner.mac.is_some() {
            decoded = unescape_levels(raw, e.json_escaped);
            decoded.as_deref().unwrap_or(raw)
        } else {
            raw
        };
        match e.quote {
            Quote::None => self.write_replacement(out, e.rule, secret),
            Quote::Plain => {
                out.push('"');
                self.write_replacement(out, e.rule, secret);
                out.push('"');
            }
            Quote::Escaped(depth) => {
                let quote = |out: &mut String| {
                    out.extend(std::iter::repeat_n('\\', usize::from(depth)));
                    out.push('"');
                };
                quote(out);
                self.write_replacement(out, e.rule, secret);
                quote(out);
            }
        }
        counts.add(&self.inner.rules[e.rule.index()].name, 1);
    }

    fn write_replacement(&self, out: &mut String, rule: RuleId, secret: &str) {
        out.push_str("[REDACTED:");
        out.push_str(&self.inner.rules[rule.index()].name);
        if let Some(mac) = &self.inner.mac {
            let mut mac = mac.clone();
            mac.update(secret.as_bytes());
            let tag = mac.finalize().into_bytes();
            out.push(':');
            for byte in &tag[..4] {
                const HEX: &[u8; 16] = b"0123456789abcdef";
                out.push(char::from(HEX[usize::from(byte >> 4)]));
                out.push(char::from(HEX[usize::from(byte & 0xf)]));
            }
        }
        out.push(']');
    }
}

/// Sorted by start, overlapping edits merged into the first.
fn merge_edits(mut edits: Vec<Edit>) -> Vec<Edit> {
    // Stable and adaptive: edits arrive almost sorted.
    edits.sort_by_key(|e| (e.start, e.from_pattern));
    let mut merged: Vec<Edit> = Vec::with_capacity(edits.len());
    for e in edits {
        match merged.last_mut() {
            Some(last) if e.start < last.end => {
                if e.end > last.end {
                    last.end = e.end;
                    last.json_escaped = 0;
                }
            }
            _ => merged.push(e),
        }
    }
    merged
}

/// `raw` with `levels` layers of JSON string escaping removed, or None when
/// the first layer does not decode (a span cut inside an escape).
fn unescape_levels(raw: &str, levels: u8) -> Option<String> {
    let mut cur: Option<String> = None;
    for _ in 0..levels {
        let from = cur.as_deref().unwrap_or(raw);
        match serde_json::from_str::<String>(&format!("\"{from}\"")) {
            Ok(next) => cur = Some(next),
            // A deeper layer that does not decode: the last good one is closer
            // to what the event path hashes than the raw bytes.
            Err(_) => break,
        }
    }
    cur
}

fn looks_like_json(b: &[u8]) -> bool {
    let t = b.trim_ascii();
    matches!(
        (t.first(), t.last()),
        (Some(b'{'), Some(b'}')) | (Some(b'['), Some(b']'))
    )
}

// ------------------------------------------------- JSON inside a string

// The document is parsed into byte spans (not values) so redaction can splice
// replacements into the original text and leave every other byte, key order
// and whitespace included, exactly as it was.

#[derive(Clone, Copy)]
enum SNode {
    Str { start: u32, end: u32, escaped: bool },
    Scalar { start: u32, end: u32 },
    Null,
    Obj { first: u32, len: u32 },
    Arr { first: u32, len: u32 },
}

#[derive(Clone, Copy)]
struct SMember {
    key_start: u32,
    key_end: u32,
    node: u32,
}

#[derive(Default)]
struct SpanTree {
    nodes: Vec<SNode>,
    members: Vec<SMember>,
    items: Vec<u32>,
}

struct SpanParser<'a> {
    b: &'a [u8],
    i: usize,
    tree: SpanTree,
}

impl SpanParser<'_> {
    fn ws(&mut self) {
        while self.i < self.b.len() && matches!(self.b[self.i], b' ' | b'\t' | b'\n' | b'\r') {
            self.i += 1;
        }
    }

    fn push(&mut self, n: SNode) -> u32 {
        self.tree.nodes.push(n);
        (self.tree.nodes.len() - 1) as u32
    }

    /// Called with `i` at the opening quote; returns the body's span and
    /// whether it holds escapes.
    fn string(&mut self) -> Option<(u32, u32, bool)> {
        self.i += 1;
        let start = self.i;
        let mut escaped = false;
        loop {
            match *self.b.get(self.i)? {
                b'"' => {
                    let end = self.i;
                    self.i += 1;
                    return Some((start as u32, end as u32, escaped));
                }
                b'\\' => {
                    escaped = true;
                    self.i += 2;
                }
                _ => self.i += 1,
            }
        }
    }

    fn value(&mut self, depth: usize) -> Option<u32> {
        if depth > MAX_JSON_DEPTH {
            return None;
        }
        self.ws();
        match *self.b.get(self.i)? {
            b'{' => {
                self.i += 1;
                let mut local = Vec::new();
                self.ws();
                if self.b.get(self.i) == Some(&b'}') {
                    self.i += 1;
                } else {
                    loop {
                        self.ws();
                        if self.b.get(self.i) != Some(&b'"') {
                            return None;
                        }
                        let (ks, ke, _) = self.string()?;
                        self.ws();
                        if self.b.get(self.i) != Some(&b':') {
                            return None;
                        }
                        self.i += 1;
                        let node = self.value(depth + 1)?;
                        local.push(SMember {
                            key_start: ks,
                            key_end: ke,
                            node,
                        });
                        self.ws();
                        match *self.b.get(self.i)? {
                            b',' => self.i += 1,
                            b'}' => {
                                self.i += 1;
                                break;
                            }
                            _ => return None,
                        }
                    }
                }
                let first = self.tree.members.len() as u32;
                let len = local.len() as u32;
                self.tree.members.extend(local);
                Some(self.push(SNode::Obj { first, len }))
            }
            b'[' => {
                self.i += 1;
                let mut local = Vec::new();
                self.ws();
                if self.b.get(self.i) == Some(&b']') {
                    self.i += 1;
                } else {
                    loop {
                        local.push(self.value(depth + 1)?);
                        self.ws();
                        match *self.b.get(self.i)? {
                            b',' => self.i += 1,
                            b']' => {
                                self.i += 1;
                                break;
                            }
                            _ => return None,
                        }
                    }
                }
                let first = self.tree.items.len() as u32;
                let len = local.len() as u32;
                self.tree.items.extend(local);
                Some(self.push(SNode::Arr { first, len }))
            }
            b'"' => {
                let (start, end, escaped) = self.string()?;
                Some(self.push(SNode::Str {
                    start,
                    end,
                    escaped,
                }))
            }
            _ => {
                let start = self.i;
                while self.i < self.b.len()
                    && (self.b[self.i].is_ascii_alphanumeric()
                        || matches!(self.b[self.i], b'.' | b'+' | b'-'))
                {
                    self.i += 1;
                }
                if self.i == start {
                    return None;
                }
                if &self.b[start..self.i] == b"null" {
                    Some(self.push(SNode::Null))
                } else {
                    Some(self.push(SNode::Scalar {
                        start: start as u32,
                        end: self.i as u32,
                    }))
                }
            }
        }
    }
}

// ------------------------------------------- JSON that does not parse
//
// Dead letters are often JSON cut short (a truncated line, a delivery cut in
// the middle of a record) or JSON with damage in it. Text rules alone miss
// what only the object around a value tells (a Secret's `data`, SSM's
// `value` next to `type: SecureString`, `{"name": "DB_PASSWORD", "value"}`),
// so the damaged text is read into the same span tree the strict parser
// makes, and `walk_span` applies the rules to it. One forward pass with an
// explicit stack: containers still open at the end are closed there, a
// string runs to its quote or to the end of its line (JSON strings hold no
// raw newlines), and bytes that fit nowhere are stepped over.

#[derive(Clone, Copy, PartialEq, Eq)]
enum Want {
    Key,
    Colon,
    Value,
    // A `,` or the closing bracket.
    Next,
}

struct Frame {
    obj: bool,
    want: Want,
    key: Option<(u32, u32)>,
    members: Vec<SMember>,
    items: Vec<u32>,
}

struct TolerantParser<'a> {
    b: &'a [u8],
    tree: SpanTree,
    roots: Vec<u32>,
    // Never deeper than MAX_JSON_DEPTH, so walk_span's recursion is bounded.
    stack: Vec<Frame>,
    // Containers opened past MAX_JSON_DEPTH: only counted, so the brackets
    // and strings inside them do not disturb the frames below.
    skipped: usize,
    tree_keys: Vec<usize>,
}

#[inline]
fn is_scalar_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'+' | b'-')
}

impl TolerantParser<'_> {
    /// Reads all of `b`. Returns the tree, its top-level values, and the
    /// positions of the closing quotes of the member keys it holds.
    fn parse(b: &[u8]) -> (SpanTree, Vec<u32>, Vec<usize>) {
        let mut p = TolerantParser {
            b,
            tree: SpanTree::default(),
            roots: Vec::new(),
            stack: Vec::new(),
            skipped: 0,
            tree_keys: Vec::new(),
        };
        let mut i = 0;
        let mut line_start = true;
        let mut indented = false;
        while i < b.len() {
            let c = b[i];
            match c {
                b'\n' => {
                    line_start = true;
                    indented = false;
                    i += 1;
                    continue;
                }
                b' ' | b'\t' | b'\r' => {
                    indented |= line_start;
                    i += 1;
                    continue;
                }
                _ => {}
            }
            if std::mem::take(&mut line_start)
                && matches!(c, b'{' | b'[')
                && p.starts_new_document(indented)
            {
                p.close_all();
            }
            if c == b'"' {
                let (end, next, escaped) = string_span(b, i + 1);
                if p.skipped == 0 {
                    p.string(i + 1, end, escaped);
                }
                i = next;
                continue;
            }
            if p.skipped > 0 {
                match c {
                    b'{' | b'[' => p.skipped += 1,
                    b'}' | b']' => p.skipped -= 1,
                    _ => {}
                }
                i += 1;
                continue;
            }
            match c {
                b'{' | b'[' => p.open(c == b'{', i),
                b'}' | b']' => p.close(c == b'}'),
                b':' => p.colon(),
                b',' => p.comma(),
                _ if is_scalar_byte(c) => {
                    let start = i;
                    while i < b.len() && is_scalar_byte(b[i]) {
                        i += 1;
                    }
                    p.scalar(start, i);
                    continue;
                }
                _ => {}
            }
            i += 1;
        }
        p.close_all();
        (p.tree, p.roots, p.tree_keys)
    }

    /// A `{` or `[` first on its line: NDJSON starts a new record there. Only
    /// where pretty-printed JSON puts such a line (an array element, or an
    /// indented member value) is it taken as part of the open document.
    fn starts_new_document(&self, indented: bool) -> bool {
        if self.skipped > 0 {
            return !indented;
        }
        match self.stack.last() {
            None => false,
            Some(f) if f.want == Want::Value => !indented && (f.obj || self.stack.len() > 1),
            Some(_) => true,
        }
    }

    fn push_node(&mut self, n: SNode) -> u32 {
        self.tree.nodes.push(n);
        (self.tree.nodes.len() - 1) as u32
    }

    /// Hangs `node` in the innermost open container (top level: a root).
    fn attach(&mut self, node: u32) {
        let Some(f) = self.stack.last_mut() else {
            self.roots.push(node);
            return;
        };
        if f.obj {
            if let Some((key_start, key_end)) = f.key.take() {
                f.members.push(SMember {
                    key_start,
                    key_end,
                    node,
                });
            }
        } else {
            f.items.push(node);
        }
        f.want = Want::Next;
    }

    /// Whether a value arriving now has a place: an object needs a pending
    /// key (a missing `:` is forgiven), an array takes it (a missing `,` is
    /// forgiven), the top level ignores scalars and strings.
    fn takes_value(&self) -> bool {
        match self.stack.last() {
            None => false,
            Some(f) if f.obj => matches!(f.want, Want::Value | Want::Colon),
            Some(_) => true,
        }
    }

    fn string(&mut self, start: usize, end: usize, escaped: bool) {
        if let Some(f) = self.stack.last_mut() {
            if f.obj && matches!(f.want, Want::Key | Want::Next) {
                f.key = Some((start as u32, end as u32));
                f.want = Want::Colon;
                return;
            }
        }
        if self.takes_value() {
            let node = self.push_node(SNode::Str {
                start: start as u32,
                end: end as u32,
                escaped,
            });
            self.attach(node);
        }
    }

    fn scalar(&mut self, start: usize, end: usize) {
        if !self.takes_value() {
            return;
        }
        let node = if &self.b[start..end] == b"null" {
            self.push_node(SNode::Null)
        } else {
            self.push_node(SNode::Scalar {
                start: start as u32,
                end: end as u32,
            })
        };
        self.attach(node);
    }

    fn colon(&mut self) {
        if let Some(f) = self.stack.last_mut() {
            if f.obj && f.want == Want::Colon {
                f.want = Want::Value;
                if let Some((_, key_end)) = f.key {
                    self.tree_keys.push(key_end as usize);
                }
            }
        }
    }

    fn comma(&mut self) {
        if let Some(f) = self.stack.last_mut() {
            // A key that got no value is dropped.
            f.key = None;
            f.want = if f.obj { Want::Key } else { Want::Value };
        }
    }

    fn open(&mut self, obj: bool, at: usize) {
        if self.stack.len() >= MAX_JSON_DEPTH {
            self.skipped = 1;
            return;
        }
        if let Some(f) = self.stack.last_mut() {
            if f.obj && f.key.is_none() {
                // A container where a key belongs: kept under an empty key, so
                // the rules still see inside it.
                f.key = Some((at as u32, at as u32));
            }
        }
        self.stack.push(Frame {
            obj,
            want: if obj { Want::Key } else { Want::Value },
            key: None,
            members: Vec::new(),
            items: Vec::new(),
        });
    }

    /// Closes the innermost open container of this kind, and any opened
    /// inside it that were never closed; a bracket that closes nothing open
    /// is ignored.
    fn close(&mut self, obj: bool) {
        let Some(at) = self.stack.iter().rposition(|f| f.obj == obj) else {
            return;
        };
        while self.stack.len() > at {
            self.finish_top();
        }
    }

    fn close_all(&mut self) {
        self.skipped = 0;
        while !self.stack.is_empty() {
            self.finish_top();
        }
    }

    fn finish_top(&mut self) {
        let Some(f) = self.stack.pop() else { return };
        let node = if f.obj {
            let first = self.tree.members.len() as u32;
            let len = f.members.len() as u32;
            self.tree.members.extend(f.members);
            self.push_node(SNode::Obj { first, len })
        } else {
            let first = self.tree.items.len() as u32;
            let len = f.items.len() as u32;
            self.tree.items.extend(f.items);
            self.push_node(SNode::Arr { first, len })
        };
        self.attach(node);
    }
}

/// The body of the string whose opening quote is just before `from`: its end,
/// where scanning resumes, and whether it holds escapes. A string cut off by
/// the end of its line or of the input ends there. Every position returned is
/// an ASCII byte or the end, so it is a char boundary.
fn string_span(b: &[u8], from: usize) -> (usize, usize, bool) {
    let mut i = from;
    let mut escaped = false;
    while i < b.len() {
        match b[i] {
            b'"' => return (i, i + 1, escaped),
            b'\\' => {
                escaped = true;
                if b.get(i + 1).is_some_and(|&c| c != b'\n') {
                    i += 2;
                } else {
                    i += 1;
                }
            }
            b'\n' => {
                let end = if i > from && b[i - 1] == b'\r' {
                    i - 1
                } else {
                    i
                };
                return (end, i, escaped);
            }
            _ => i += 1,
        }
    }
    (b.len(), b.len(), escaped)
}

/// Decodes a JSON string body (escapes may be broken or cut off: they are
/// then kept as they are). Returns the text and, for each of its bytes plus
/// one past the end, the offset in `raw` it came from, so that spans found
/// in the decoded text map back onto `raw`.
fn decode_json_string(raw: &str) -> (String, Vec<u32>) {
    let b = raw.as_bytes();
    let mut out = String::with_capacity(b.len());
    let mut map: Vec<u32> = Vec::with_capacity(b.len() + 1);
    let hex4 = |at: usize| -> Option<u32> {
        let h = b.get(at..at + 4)?;
        if !h.iter().all(u8::is_ascii_hexdigit) {
            return None;
        }
        u32::from_str_radix(std::str::from_utf8(h).ok()?, 16).ok()
    };
    let mut i = 0;
    while i < b.len() {
        if b[i] != b'\\' {
            let run_end = b[i..]
                .iter()
                .position(|&c| c == b'\\')
                .map_or(b.len(), |k| i + k);
            out.push_str(&raw[i..run_end]);
            map.extend(i as u32..run_end as u32);
            i = run_end;
            continue;
        }
        let from = i;
        let (ch, len) = match b.get(i + 1) {
            Some(b'"') => ('"', 2),
            Some(b'\\') => ('\\', 2),
            Some(b'/') => ('/', 2),
            Some(b'b') => ('\u{8}', 2),
            Some(b'f') => ('\u{c}', 2),
            Some(b'n') => ('\n', 2),
            Some(b'r') => ('\r', 2),
            Some(b't') => ('\t', 2),
            Some(b'u') => match hex4(i + 2) {
                Some(hi @ 0xd800..=0xdbff) => match (b.get(i + 6..i + 8), hex4(i + 8)) {
                    (Some(b"\\u"), Some(lo @ 0xdc00..=0xdfff)) => {
                        let cp = 0x10000 + ((hi - 0xd800) << 10) + (lo - 0xdc00);
                        (char::from_u32(cp).unwrap_or('\u{fffd}'), 12)
                    }
                    _ => ('\u{fffd}', 6),
                },
                Some(cp) => (char::from_u32(cp).unwrap_or('\u{fffd}'), 6),
                None => ('\\', 1),
            },
            _ => ('\\', 1),
        };
        out.push(ch);
        map.extend(std::iter::repeat_n(from as u32, ch.len_utf8()));
        i += len;
    }
    map.push(b.len() as u32);
    (out, map)
}

impl Redactor {
    /// Key, object, path and pair rules over JSON that may be cut off or
    /// damaged (see `TolerantParser`), plus, in every string that holds
    /// escapes, the same again on its decoded value and the text rules (JSON
    /// carried in a string is only visible decoded, and is cut off with the
    /// record around it). `depth`: strings decoded to get `s`. Returns the
    /// positions `scan_text` must leave to the tree.
    fn tolerant_json(&self, s: &str, depth: u8, edits: &mut Vec<Edit>) -> Vec<usize> {
        if s.len() > u32::MAX as usize {
            return Vec::new();
        }
        let (tree, roots, tree_keys) = TolerantParser::parse(s.as_bytes());
        for &root in &roots {
            self.walk_span(s, &tree, root, None, None, edits);
        }
        if depth < MAX_DECODE_DEPTH {
            for node in &tree.nodes {
                if let SNode::Str {
                    start,
                    end,
                    escaped: true,
                } = *node
                {
                    self.escaped_string_edits(s, start as usize, end as usize, depth + 1, edits);
                }
            }
        }
        tree_keys
    }

    /// Rules on the decoded value of the escaped string body `s[start..end]`,
    /// with the edits mapped back onto the escaped bytes.
    fn escaped_string_edits(
        &self,
        s: &str,
        start: usize,
        end: usize,
        depth: u8,
        edits: &mut Vec<Edit>,
    ) {
        let (decoded, map) = decode_json_string(&s[start..end]);
        let mut inner = Vec::new();
        let tree_keys = if matches!(
            decoded.trim_ascii_start().as_bytes().first(),
            Some(b'{' | b'[')
        ) {
            self.tolerant_json(&decoded, depth, &mut inner)
        } else {
            Vec::new()
        };
        if self.text_might_match(&decoded) {
            if let Some(first) = self.inner.text_ac.find(&decoded) {
                self.scan_text(&decoded, first.start(), &mut inner, &tree_keys);
            }
        }
        for mut e in inner {
            e.start = start + map[e.start] as usize;
            e.end = start + map[e.end] as usize;
            // Written inside a JSON string, a quote the replacement needs is
            // escaped once more than in the decoded text.
            e.quote = match e.quote {
                Quote::None => Quote::None,
                Quote::Plain => Quote::Escaped(1),
                Quote::Escaped(d) => Quote::Escaped(d.saturating_mul(2).saturating_add(1)),
            };
            e.json_escaped = e.json_escaped.saturating_add(1);
            edits.push(e);
        }
    }

    /// Parses `s` as one JSON document and records edits for key, object,
    /// path and pair rules. False (and no edits) when it is not JSON.
    fn span_json(&self, s: &str, edits: &mut Vec<Edit>) -> bool {
        if s.len() > u32::MAX as usize {
            return false;
        }
        let mut parser = SpanParser {
            b: s.as_bytes(),
            i: 0,
            tree: SpanTree::default(),
        };
        let Some(root) = parser.value(0) else {
            return false;
        };
        parser.ws();
        if parser.i != s.len() {
            return false;
        }
        let tree = parser.tree;
        self.walk_span(s, &tree, root, None, None, edits);
        true
    }

    fn walk_span(
        &self,
        s: &str,
        tree: &SpanTree,
        node: u32,
        parent: Option<&str>,
        blanket: Option<RuleId>,
        edits: &mut Vec<Edit>,
    ) {
        match tree.nodes[node as usize] {
            SNode::Str {
                start,
                end,
                escaped,
            } => {
                if let Some(rule) = blanket {
                    if end > start {
                        let mut e = Edit::new(start as usize, end as usize, rule);
                        e.json_escaped = u8::from(escaped);
                        edits.push(e);
                    }
                }
            }
            SNode::Scalar { start, end } => {
                if let Some(rule) = blanket {
                    let mut e = Edit::new(start as usize, end as usize, rule);
                    e.quote = Quote::Plain;
                    edits.push(e);
                }
            }
            SNode::Null => {}
            SNode::Arr { first, len } => {
                let items = &tree.items[first as usize..(first + len) as usize];
                let mut pending: Option<RuleId> = None;
                for &item in items {
                    let as_str = match tree.nodes[item as usize] {
                        SNode::Str { start, end, .. } => Some(&s[start as usize..end as usize]),
                        _ => None,
                    };
                    if blanket.is_none() {
                        if let (Some(rule), Some(v)) = (pending.take(), as_str) {
                            if !v.is_empty() && !v.starts_with('-') {
                                self.walk_span(s, tree, item, parent, Some(rule), edits);
                                continue;
                            }
                        }
                        pending = as_str.and_then(|v| self.flag_element_rule(v));
                    }
                    self.walk_span(s, tree, item, parent, blanket, edits);
                }
            }
            SNode::Obj { first, len } => {
                let members = &tree.members[first as usize..(first + len) as usize];
                let key_of = |m: &SMember| &s[m.key_start as usize..m.key_end as usize];
                if blanket.is_some() {
                    for m in members {
                        self.walk_span(s, tree, m.node, Some(key_of(m)), blanket, edits);
                    }
                    return;
                }
                let hits = if self.object_might_match(&mut members.iter().map(key_of)) {
                    let view: Vec<(&str, Option<&str>)> = members
                        .iter()
                        .map(|m| {
                            let v = match tree.nodes[m.node as usize] {
                                SNode::Str { start, end, .. } => {
                                    Some(&s[start as usize..end as usize])
                                }
                                _ => None,
                            };
                            (key_of(m), v)
                        })
                        .collect();
                    self.object_verdicts(parent, &view)
                } else {
                    Vec::new()
                };
                for (i, m) in members.iter().enumerate() {
                    let key = key_of(m);
                    match verdict_of(&hits, i) {
                        Some(MemberVerdict::Redact(rule)) => {
                            self.walk_span(s, tree, m.node, Some(key), Some(rule), edits);
                            continue;
                        }
                        Some(MemberVerdict::Keep(_)) => {
                            self.walk_span(s, tree, m.node, Some(key), None, edits);
                            continue;
                        }
                        None => {}
                    }
                    let container = matches!(
                        tree.nodes[m.node as usize],
                        SNode::Obj { .. } | SNode::Arr { .. }
                    );
                    match self.key_rule(key) {
                        Some(rule) if !(container && self.descends_into_containers(rule)) => {
                            self.walk_span(s, tree, m.node, Some(key), Some(rule), edits)
                        }
                        _ => self.walk_span(s, tree, m.node, Some(key), None, edits),
                    }
                }
            }
        }
    }
}

// ------------------------------------------------------------------- tests

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn builtin() -> Redactor {
        Redactor::builtin()
    }

    enum Input {
        Json(&'static str),
        Text(&'static str),
    }

    struct Case {
        name: &'static str,
        input: Input,
        secrets: &'static [&'static str],
        rules: &'static [&'static str],
        keep: &'static [&'static str],
    }

    use Input::{Json, Text};

    fn planted_cases() -> Vec<Case> {
        vec![
            // ------------------------------------------------ CloudTrail
            Case {
                name: "cloudtrail AssumeRole sessionToken",
                input: Json(r#"{"eventVersion":"1.08","eventSource":"sts.amazonaws.com","eventName":"AssumeRole","requestParameters":{"roleArn":"arn:aws:iam::123456789012:role/Deploy","roleSessionName":"ci"},"responseElements":{"credentials":{"accessKeyId":"ASIAZ7EXAMPLE4KEYID1","sessionToken":"IQoJb3JpZ2luX2VjEJr//////////wEaCXVzLWVhc3QtMSJHMEUCIQDexample","expiration":"Jan 1, 2025, 12:00:00 AM"}}}"#),
                secrets: &["IQoJb3JpZ2luX2VjEJr"],
                rules: &["session_token"],
                keep: &["ASIAZ7EXAMPLE4KEYID1", "arn:aws:iam::123456789012:role/Deploy", "Jan 1, 2025, 12:00:00 AM"],
            },
            Case {
                name: "cloudtrail CreateSecret secretString",
                input: Json(r#"{"eventName":"CreateSecret","requestParameters":{"name":"prod/db","clientRequestToken":"4b6c0a1e-2f3d-4e5f-8a9b-0c1d2e3f4a5b","secretString":"{\"username\":\"admin\",\"password\":\"Tr0ub4dor&3\"}","kmsKeyId":"alias/prod"}}"#),
                secrets: &["Tr0ub4dor&3"],
                rules: &["aws_secrets_manager_value"],
                keep: &["prod/db", "4b6c0a1e-2f3d-4e5f-8a9b-0c1d2e3f4a5b", "alias/prod"],
            },
            Case {
                name: "cloudtrail PutSecretValue secretBinary",
                input: Json(r#"{"requestParameters":{"secretId":"arn:aws:secretsmanager:us-east-1:123456789012:secret:prod/db-AbCdEf","secretBinary":"c2VjcmV0Ynl0ZXMxMjM0NTY="}}"#),
                secrets: &["c2VjcmV0Ynl0ZXMxMjM0NTY="],
                rules: &["aws_secrets_manager_value"],
                keep: &["arn:aws:secretsmanager:us-east-1:123456789012:secret:prod/db-AbCdEf"],
            },
            Case {
                name: "cloudtrail ssm PutParameter value",
                input: Json(r#"{"eventName":"PutParameter","requestParameters":{"name":"/prod/app/db-url","type":"SecureString","value":"postgres://svc:VeryS3cret@db:5432/app","overwrite":true,"tier":"Standard"}}"#),
                secrets: &["VeryS3cret"],
                rules: &["aws_ssm_parameter_value"],
                keep: &["/prod/app/db-url", "SecureString", "Standard"],
            },
            Case {
                name: "cloudtrail S3 SSE-C key header",
                input: Json(r#"{"eventName":"PutObject","requestParameters":{"bucketName":"b","key":"k","x-amz-server-side-encryption-customer-algorithm":"AES256","x-amz-server-side-encryption-customer-key":"MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=","x-amz-server-side-encryption-customer-key-MD5":"4ZRNYBCCvL0YZeqDvZ8tFg=="}}"#),
                secrets: &["MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="],
                rules: &["sse_customer_key"],
                keep: &["4ZRNYBCCvL0YZeqDvZ8tFg==", "AES256"],
            },
            Case {
                name: "cloudtrail Lambda env password",
                input: Json(r#"{"requestParameters":{"functionName":"api","environment":{"variables":{"DB_PASSWORD":"lambdaPw#991","LOG_LEVEL":"info"}}}}"#),
                secrets: &["lambdaPw#991"],
                rules: &["password"],
                keep: &["\"LOG_LEVEL\":\"info\"", "\"functionName\":\"api\""],
            },
            Case {
                name: "cloudtrail Lambda env api key",
                input: Json(r#"{"environment":{"variables":{"STRIPE_API_KEY":"plainapikeyvalue77"}}}"#),
                secrets: &["plainapikeyvalue77"],
                rules: &["api_key"],
                keep: &[],
            },
            Case {
                name: "cloudtrail RDS masterUserPassword",
                input: Json(r#"{"requestParameters":{"dBInstanceIdentifier":"prod-db","masterUsername":"admin","masterUserPassword":"RdsMaster!2024"}}"#),
                secrets: &["RdsMaster!2024"],
                rules: &["password"],
                keep: &["prod-db", "\"masterUsername\":\"admin\""],
            },
            Case {
                name: "cloudtrail CreateAccessKey secretAccessKey",
                input: Json(r#"{"responseElements":{"accessKey":{"accessKeyId":"AKIAIOSFODNN7EXAMPLE","status":"Active","secretAccessKey":"wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY","userName":"deploy"}}}"#),
                secrets: &["wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"],
                rules: &["aws_secret_access_key"],
                keep: &["AKIAIOSFODNN7EXAMPLE", "deploy"],
            },
            Case {
                name: "cloudtrail ECS task definition environment pair",
                input: Json(r#"{"requestParameters":{"containerDefinitions":[{"name":"web","image":"123456789012.dkr.ecr.us-east-1.amazonaws.com/web:1","environment":[{"name":"DB_PASSWORD","value":"ecsPassw0rd"},{"name":"PORT","value":"8080"}]}]}}"#),
                secrets: &["ecsPassw0rd"],
                rules: &["name_value_pair"],
                keep: &["\"value\":\"8080\"", "\"name\":\"web\"", "\"name\":\"DB_PASSWORD\""],
            },
            Case {
                name: "cloudtrail CloudFormation parameters pair",
                input: Json(r#"{"requestParameters":{"stackName":"app","parameters":[{"parameterKey":"DbPassword","parameterValue":"CfnS3cret!"},{"parameterKey":"Env","parameterValue":"prod"}]}}"#),
                secrets: &["CfnS3cret!"],
                rules: &["name_value_pair"],
                keep: &["\"parameterValue\":\"prod\""],
            },
            Case {
                name: "cloudtrail Cognito clientSecret",
                input: Json(r#"{"responseElements":{"userPoolClient":{"clientId":"4tq1example","clientSecret":"1a2b3c4d5e6f7g8h9i0jclientsecretvalue","clientName":"web"}}}"#),
                secrets: &["1a2b3c4d5e6f7g8h9i0jclientsecretvalue"],
                rules: &["client_secret"],
                keep: &["4tq1example"],
            },
            Case {
                name: "cloudtrail request headers Authorization",
                input: Json(r#"{"requestParameters":{"headers":{"Authorization":"Bearer abc.def.ghi-TOKEN123","Host":"api.example.com"}}}"#),
                secrets: &["abc.def.ghi-TOKEN123"],
                rules: &["authorization"],
                keep: &["api.example.com"],
            },
            Case {
                name: "cloudtrail Cookie header",
                input: Json(r#"{"headers":{"Cookie":"session=abcSessionCookie123; theme=dark","User-Agent":"Mozilla/5.0"}}"#),
                secrets: &["abcSessionCookie123"],
                rules: &["http_cookie"],
                keep: &["Mozilla/5.0"],
            },
            Case {
                name: "number under a secret key",
                input: Json(r#"{"db":{"password":123456789,"port":5432}}"#),
                secrets: &["123456789"],
                rules: &["password"],
                keep: &["5432"],
            },
            Case {
                name: "object under a secret key",
                input: Json(r#"{"passwordProfile":{"password":"AadUserPw!1","forceChangePasswordNextSignIn":true}}"#),
                secrets: &["AadUserPw!1"],
                rules: &["password"],
                keep: &[],
            },
            // ------------------------------------------------------- GCP
            Case {
                name: "gcp CreateServiceAccountKey privateKeyData",
                input: Json(r#"{"protoPayload":{"methodName":"google.iam.admin.v1.CreateServiceAccountKey","request":{"privateKeyType":"TYPE_GOOGLE_CREDENTIALS_FILE","keyAlgorithm":"KEY_ALG_RSA_2048"},"response":{"name":"projects/p/serviceAccounts/sa@p.iam.gserviceaccount.com/keys/abc123","privateKeyData":"ewogICJ0eXBlIjogInNlcnZpY2VfYWNjb3VudCIKfQ=="}}}"#),
                secrets: &["ewogICJ0eXBlIjogInNlcnZpY2VfYWNjb3VudCIKfQ=="],
                rules: &["private_key"],
                keep: &["TYPE_GOOGLE_CREDENTIALS_FILE", "projects/p/serviceAccounts/sa@p.iam.gserviceaccount.com/keys/abc123"],
            },
            Case {
                name: "gcp Secret Manager payload.data",
                input: Json(r#"{"protoPayload":{"methodName":"google.cloud.secretmanager.v1.SecretManagerService.AddSecretVersion","request":{"parent":"projects/p/secrets/db","payload":{"data":"c3VwZXJzZWNyZXRwYXlsb2Fk"}}}}"#),
                secrets: &["c3VwZXJzZWNyZXRwYXlsb2Fk"],
                rules: &["gcp_secret_payload"],
                keep: &["projects/p/secrets/db"],
            },
            Case {
                name: "gcp service account key JSON inside a string",
                input: Json(r#"{"request":{"config":"{\"type\":\"service_account\",\"project_id\":\"p\",\"private_key_id\":\"0123456789abcdef0123456789abcdef01234567\",\"private_key\":\"-----BEGIN PRIVATE KEY-----\\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC\\n-----END PRIVATE KEY-----\\n\",\"client_email\":\"sa@p.iam.gserviceaccount.com\",\"token_uri\":\"https://oauth2.googleapis.com/token\"}"}}"#),
                secrets: &["0123456789abcdef0123456789abcdef01234567", "MIIEvQIBADANBgkqhkiG9w0BAQEFAASC"],
                rules: &["gcp_service_account_key"],
                keep: &["sa@p.iam.gserviceaccount.com", "https://oauth2.googleapis.com/token", "service_account"],
            },
            Case {
                name: "gcp Cloud Functions env with a Stripe key",
                input: Json(r#"{"request":{"function":{"environmentVariables":{"PAYMENTS":"sk_live_51HxAbCdEfGhIjKlMnOp"}}}}"#),
                secrets: &["sk_live_51HxAbCdEfGhIjKlMnOp"],
                rules: &["stripe_key"],
                keep: &["PAYMENTS"],
            },
            Case {
                name: "gcp Cloud SQL user password",
                input: Json(r#"{"protoPayload":{"methodName":"cloudsql.users.create","request":{"body":{"name":"app","password":"CloudSql#Pw1"}}}}"#),
                secrets: &["CloudSql#Pw1"],
                rules: &["password"],
                keep: &["\"name\":\"app\""],
            },
            // ----------------------------------------------------- Azure
            Case {
                name: "azure requestbody adminPassword (JSON in a string)",
                input: Json(r#"{"operationName":{"value":"Microsoft.Compute/virtualMachines/write"},"properties":{"requestbody":"{\"properties\":{\"osProfile\":{\"adminUsername\":\"azureuser\",\"adminPassword\":\"Az!VmP4ss\"}}}","statusCode":"Created"}}"#),
                secrets: &["Az!VmP4ss"],
                rules: &["password"],
                keep: &["azureuser", "Created", "Microsoft.Compute/virtualMachines/write"],
            },
            Case {
                name: "azure appSettings name/value pair",
                input: Json(r#"{"properties":{"siteConfig":{"appSettings":[{"name":"DB_PASSWORD","value":"AppSvcPw!9"},{"name":"WEBSITE_NODE_DEFAULT_VERSION","value":"~18"}]}}}"#),
                secrets: &["AppSvcPw!9"],
                rules: &["name_value_pair"],
                keep: &["~18", "WEBSITE_NODE_DEFAULT_VERSION"],
            },
            Case {
                name: "azure Key Vault SetSecret request body",
                input: Json(r#"{"operationName":"SecretSet","properties":{"requestUri":"https://kv1.vault.azure.net/secrets/dbpw?api-version=7.4","requestbody":"{\"value\":\"KvS3cretValue\",\"contentType\":\"text/plain\"}"}}"#),
                secrets: &["KvS3cretValue"],
                rules: &["azure_key_vault_secret"],
                keep: &["https://kv1.vault.azure.net/secrets/dbpw?api-version=7.4", "text/plain"],
            },
            Case {
                name: "azure ARM Key Vault secret properties.value",
                input: Json(r#"{"resourceId":"/subscriptions/s/resourceGroups/rg/providers/Microsoft.KeyVault/vaults/kv1/secrets/dbpw","properties":{"value":"ArmKvSecret123","contentType":"password"}}"#),
                secrets: &["ArmKvSecret123"],
                rules: &["azure_key_vault_secret"],
                keep: &["/subscriptions/s/resourceGroups/rg/providers/Microsoft.KeyVault/vaults/kv1/secrets/dbpw"],
            },
            Case {
                name: "azure storage connection string in an app setting",
                input: Json(r#"{"name":"StorageConn","value":"DefaultEndpointsProtocol=https;AccountName=acct1;AccountKey=Zm9vYmFyYmF6cXV4c3RvcmFnZWtleQ==;EndpointSuffix=core.windows.net"}"#),
                secrets: &["Zm9vYmFyYmF6cXV4c3RvcmFnZWtleQ=="],
                rules: &["azure_shared_key"],
                keep: &["AccountName=acct1;AccountKey=", ";EndpointSuffix=core.windows.net", "StorageConn"],
            },
            Case {
                name: "azure connectionStrings array",
                input: Json(r#"{"properties":{"connectionStrings":[{"name":"Db","connectionString":"Server=tcp:x.database.windows.net;Password=SqlConnPw1;","type":"SQLAzure"}]}}"#),
                secrets: &["SqlConnPw1"],
                rules: &["connection_string"],
                keep: &[],
            },
            Case {
                name: "azure VM extension protectedSettings",
                input: Json(r#"{"properties":{"publisher":"Microsoft.Azure.Extensions","settings":{"fileUris":["https://x.example.com/y.sh"]},"protectedSettings":{"commandToExecute":"./y.sh --mode fast","storageAccountName":"acct1"}}}"#),
                secrets: &["./y.sh --mode fast", "acct1"],
                rules: &["azure_protected_settings"],
                keep: &["Microsoft.Azure.Extensions", "https://x.example.com/y.sh"],
            },
            Case {
                name: "azure listKeys result",
                input: Json(r#"{"keys":[{"keyName":"key1","value":"bGlzdGtleXNzZWNyZXQx","permissions":"FULL"}]}"#),
                secrets: &["bGlzdGtleXNzZWNyZXQx"],
                rules: &["azure_listed_key"],
                keep: &["key1", "FULL"],
            },
            // ------------------------------------------------ Kubernetes
            Case {
                name: "k8s Secret create data and stringData",
                input: Json(r#"{"kind":"Event","apiVersion":"audit.k8s.io/v1","verb":"create","objectRef":{"resource":"secrets","namespace":"prod","name":"db-creds"},"requestObject":{"kind":"Secret","apiVersion":"v1","metadata":{"name":"db-creds","namespace":"prod"},"data":{"username":"YWRtaW4=","password":"SzhzU2VjcmV0UGFzcw=="},"stringData":{"token":"k8sStringDataTok"},"type":"Opaque"}}"#),
                secrets: &["SzhzU2VjcmV0UGFzcw==", "k8sStringDataTok", "YWRtaW4="],
                rules: &["k8s_secret"],
                keep: &["db-creds", "\"namespace\":\"prod\"", "Opaque"],
            },
            Case {
                name: "k8s SecretList items (no kind, typed)",
                input: Json(r#"{"kind":"SecretList","apiVersion":"v1","items":[{"metadata":{"name":"tls-cert"},"data":{"tls.key":"dGxza2V5ZGF0YXZhbHVl"},"type":"kubernetes.io/tls"}]}"#),
                secrets: &["dGxza2V5ZGF0YXZhbHVl"],
                rules: &["k8s_secret_by_type"],
                keep: &["tls-cert", "tls.key"],
            },
            Case {
                name: "k8s container env pair",
                input: Json(r#"{"spec":{"containers":[{"name":"app","image":"registry.example.com/app:1.2","env":[{"name":"DB_PASSWORD","value":"PodEnvPw!7"},{"name":"LOG_LEVEL","value":"debug"},{"name":"SECRET_NAME","value":"db-creds"}]}]}}"#),
                secrets: &["PodEnvPw!7"],
                rules: &["name_value_pair"],
                keep: &["debug", "db-creds"],
            },
            Case {
                name: "k8s last-applied-configuration of a Secret",
                input: Json(r#"{"metadata":{"annotations":{"kubectl.kubernetes.io/last-applied-configuration":"{\"apiVersion\":\"v1\",\"data\":{\"api-key\":\"bGFzdGFwcGxpZWRrZXk=\"},\"kind\":\"Secret\",\"metadata\":{\"annotations\":{},\"name\":\"api\",\"namespace\":\"prod\"},\"type\":\"Opaque\"}\n"}}}"#),
                secrets: &["bGFzdGFwcGxpZWRrZXk="],
                rules: &["k8s_secret"],
                keep: &[r#"\"name\":\"api\""#],
            },
            Case {
                name: "k8s container args flag then value",
                input: Json(r#"{"containers":[{"args":["--db-password","ArgsS3cret","--port","5432"]}]}"#),
                secrets: &["ArgsS3cret"],
                rules: &["password"],
                keep: &["\"--port\",\"5432\"", "--db-password"],
            },
            Case {
                name: "k8s command line with mysql -p",
                input: Json(r#"{"command":["sh","-c","mysql -u admin -pMyCmdPw9 appdb"]}"#),
                secrets: &["MyCmdPw9"],
                rules: &["mysql_password"],
                keep: &["mysql -u admin -p[REDACTED", " appdb"],
            },
            Case {
                name: "k8s TokenReview spec.token",
                input: Json(r#"{"kind":"TokenReview","spec":{"token":"eyJhbGciOiJSUzI1NiIsImtpZCI6IjEifQ.eyJpc3MiOiJrdWJlcm5ldGVzIn0.c2lnbmF0dXJlX3ZhbHVl"}}"#),
                secrets: &["c2lnbmF0dXJlX3ZhbHVl", "eyJpc3MiOiJrdWJlcm5ldGVzIn0"],
                rules: &["token"],
                keep: &["TokenReview"],
            },
            Case {
                name: "EKS CloudWatch message carrying a k8s audit event",
                input: Json(r#"{"logStream":"kube-apiserver-audit-abc","message":"{\"kind\":\"Event\",\"verb\":\"create\",\"requestObject\":{\"kind\":\"Secret\",\"data\":{\"pw\":\"ZWtzbWVzc2FnZXNlY3JldA==\"}}}"}"#),
                secrets: &["ZWtzbWVzc2FnZXNlY3JldA=="],
                rules: &["k8s_secret"],
                keep: &["kube-apiserver-audit-abc"],
            },
            Case {
                name: "kubeconfig client-key-data",
                input: Json(r#"{"users":[{"name":"admin","user":{"client-key-data":"LS0tLS1CRUdJTiBSU0EgUFJJVkFURSBLRVktLS0tLQ","client-certificate-data":"LS0tLS1DRVJUSUZJQ0FURS0tLS0t"}}]}"#),
                secrets: &["LS0tLS1CRUdJTiBSU0EgUFJJVkFURSBLRVktLS0tLQ"],
                rules: &["private_key"],
                keep: &["LS0tLS1DRVJUSUZJQ0FURS0tLS0t"],
            },
            // ------------------------------------------------ free text
            Case {
                name: "JWT in a message",
                input: Text("login ok id_tok eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U done"),
                secrets: &["eyJzdWIiOiIxMjM0NTY3ODkwIn0", "dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U"],
                rules: &["jwt"],
                keep: &["login ok id_tok ", " done"],
            },
            Case {
                name: "Authorization header line with Bearer",
                input: Text("Authorization: Bearer ya29.a0AfH6SMBexampletoken123"),
                secrets: &["ya29.a0AfH6SMBexampletoken123"],
                rules: &["authorization"],
                keep: &["Authorization: Bearer "],
            },
            Case {
                name: "curl -H Authorization Bearer",
                input: Text(r#"curl -s -H "Authorization: Bearer 9f8e7d6c5b4a39281706" https://api.example.com/v1/items"#),
                secrets: &["9f8e7d6c5b4a39281706"],
                rules: &["authorization"],
                keep: &["https://api.example.com/v1/items", "curl -s -H \"Authorization: Bearer "],
            },
            Case {
                name: "Authorization Basic header",
                input: Text("Authorization: Basic dXNlcjpzM2NyZXRwYXNz"),
                secrets: &["dXNlcjpzM2NyZXRwYXNz"],
                rules: &["authorization"],
                keep: &["Authorization: Basic "],
            },
            Case {
                name: "Bearer token in prose",
                input: Text("sent header with Bearer a1b2c3d4e5f6g7h8 to upstream"),
                secrets: &["a1b2c3d4e5f6g7h8"],
                rules: &["bearer_token"],
                keep: &["sent header with Bearer ", " to upstream"],
            },
            Case {
                name: "basic credentials in prose",
                input: Text("proxy used basic dXNlcjpzM2NyZXRwYXNz for upstream"),
                secrets: &["dXNlcjpzM2NyZXRwYXNz"],
                rules: &["basic_auth"],
                keep: &["proxy used basic ", " for upstream"],
            },
            Case {
                name: "PEM private key block",
                input: Text("cert bundle: -----BEGIN RSA PRIVATE KEY-----\nMIIEpAIBAAKCAQEA7bqSECRETBODY\nZ3JlYXRzZWNyZXQ=\n-----END RSA PRIVATE KEY----- end"),
                secrets: &["MIIEpAIBAAKCAQEA7bqSECRETBODY", "Z3JlYXRzZWNyZXQ="],
                rules: &["pem_private_key"],
                keep: &["-----BEGIN RSA PRIVATE KEY-----", "-----END RSA PRIVATE KEY----- end"],
            },
            Case {
                name: "PEM private key truncated by the log line",
                input: Text("-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAABG5vbmU"),
                secrets: &["b3BlbnNzaC1rZXktdjEAAAAABG5vbmU"],
                rules: &["pem_private_key"],
                keep: &["-----BEGIN OPENSSH PRIVATE KEY-----"],
            },
            Case {
                name: "GitHub classic token",
                input: Text("token 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 used"),
                secrets: &["wWPw5k4aXcaT4fNP0UcnZwJUVFk6LO0pINUx"],
                rules: &["github_token"],
                keep: &[" used"],
            },
            Case {
                name: "GitHub fine-grained token",
                input: Text("GH github_pat_11ABCDEFG0123456789_abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUV"),
                secrets: &["11ABCDEFG0123456789_abcdefghijklmnopqrstuvwxyz"],
                rules: &["github_token"],
                keep: &["GH "],
            },
            Case {
                name: "GitHub token as URL password",
                input: Text("git clone https://x-access-token:ghs_16C7e42F292c6912E7710c838347Ae178B4a@github.com/org/repo.git"),
                secrets: &["16C7e42F292c6912E7710c838347Ae178B4a"],
                rules: &["url_credentials"],
                keep: &["https://x-access-token:", "@github.com/org/repo.git"],
            },
            Case {
                name: "GitLab token",
                input: Text("CI_JOB glpat-xYz1234567890AbCdEfGh"),
                secrets: &["xYz1234567890AbCdEfGh"],
                rules: &["gitlab_token"],
                keep: &["CI_JOB "],
            },
            Case {
                name: "Slack bot and app tokens",
                input: Text("notify via xoxb-123456789012-1234567890123-AbCdEfGhIjKlMnOpQrStUvWx and xapp-1-A0123456789-1234567890123-abcdef0123456789"),
                secrets: &["AbCdEfGhIjKlMnOpQrStUvWx", "A0123456789-1234567890123-abcdef0123456789"],
                rules: &["slack_token"],
                keep: &["notify via ", " and "],
            },
            Case {
                name: "Stripe keys",
                input: Text("charge with sk_live_4eC39HqLyjWDarjtT1zdp7dc, rk_live_51H8abcdefghijkl and sk_test_4eC39HqLyjWDarjtT1zdp7dX"),
                secrets: &["4eC39HqLyjWDarjtT1zdp7dc", "51H8abcdefghijkl", "4eC39HqLyjWDarjtT1zdp7dX"],
                rules: &["stripe_key"],
                keep: &["charge with "],
            },
            Case {
                name: "URL credentials",
                input: Text("connecting to postgres://app_user:PgUrlPa55@db.internal:5432/app?sslmode=require"),
                secrets: &["PgUrlPa55"],
                rules: &["url_credentials"],
                keep: &["postgres://app_user:", "@db.internal:5432/app?sslmode=require"],
            },
            Case {
                name: "query string password and access_token",
                input: Text("GET /callback?user=bob&password=QsPw123&access_token=QsTok456&limit=5"),
                secrets: &["QsPw123", "QsTok456"],
                rules: &["password", "token"],
                keep: &["user=bob", "&limit=5"],
            },
            Case {
                name: "mysql -pPASSWORD",
                input: Text("mysql -h db.internal -u admin -pMySqlPw42 --port=3306 appdb"),
                secrets: &["MySqlPw42"],
                rules: &["mysql_password"],
                keep: &["-h db.internal -u admin -p", " --port=3306 appdb"],
            },
            Case {
                name: "mysqldump -p'quoted'",
                input: Text("mysqldump -u root -p'Qu0ted Pw' appdb > dump.sql"),
                secrets: &["Qu0ted Pw"],
                rules: &["mysql_password"],
                keep: &["appdb > dump.sql"],
            },
            Case {
                name: "aws s3 cp --sse-c-key",
                input: Text("aws s3 cp x s3://b/k --sse-c AES256 --sse-c-key MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="),
                secrets: &["MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="],
                rules: &["sse_customer_key"],
                keep: &["--sse-c AES256", "s3://b/k"],
            },
            Case {
                name: "export DB_PASSWORD=",
                input: Text("export DB_PASSWORD=ExpPw99; ./migrate --env prod"),
                secrets: &["ExpPw99"],
                rules: &["password"],
                keep: &["export DB_PASSWORD=", "; ./migrate --env prod"],
            },
            Case {
                name: "environment assignment API_KEY=",
                input: Text("API_KEY=abc123xyz789"),
                secrets: &["abc123xyz789"],
                rules: &["api_key"],
                keep: &["API_KEY="],
            },
            Case {
                name: "--name value and --name=value",
                input: Text("deploy --client-secret FlagCs123 --password=EqPw77 --region us-east-1"),
                secrets: &["FlagCs123", "EqPw77"],
                rules: &["client_secret", "password"],
                keep: &["--region us-east-1", "deploy --client-secret "],
            },
            Case {
                name: "access key id next to its secret",
                input: Text("creds: AKIAIOSFODNN7EXAMPLE,wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"),
                secrets: &["wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"],
                rules: &["aws_secret_key_pair"],
                keep: &["AKIAIOSFODNN7EXAMPLE"],
            },
            Case {
                name: "secret key after a label, no separator",
                input: Text("aws_secret_access_key    wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY shared-credentials-file"),
                secrets: &["wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"],
                rules: &["aws_secret_key_labeled"],
                keep: &["aws_secret_access_key", "shared-credentials-file"],
            },
            Case {
                name: "ini-style secret key = value",
                input: Text("aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"),
                secrets: &["wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"],
                rules: &["aws_secret_access_key"],
                keep: &["aws_secret_access_key = "],
            },
            Case {
                name: "truncated JSON in a log message",
                input: Text(r#"upstream rejected body {"user":"bob","password":"FragPw1!","rem"#),
                secrets: &["FragPw1!"],
                rules: &["password"],
                keep: &[r#"{"user":"bob","password":""#],
            },
            Case {
                name: "JSON escaped inside a string",
                input: Text(r#"payload={\"apiKey\":\"EscApiKey9\",\"n\":1}"#),
                secrets: &["EscApiKey9"],
                rules: &["api_key"],
                keep: &[r#"\"n\":1}"#],
            },
            Case {
                name: "curl -u user:password",
                input: Text("curl -fsS -u admin:CurlPw55 https://jenkins.example.com/api"),
                secrets: &["CurlPw55"],
                rules: &["curl_user_password"],
                keep: &["-u admin:", " https://jenkins.example.com/api"],
            },
            Case {
                name: "sshpass -p",
                input: Text("sshpass -p 'SshP4ss' ssh root@host"),
                secrets: &["SshP4ss"],
                rules: &["sshpass_password"],
                keep: &["ssh root@host"],
            },
            Case {
                name: "presigned URL security token and signature",
                input: Text("https://b.s3.amazonaws.com/k?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIAIOSFODNN7EXAMPLE%2F20240101%2Fus-east-1%2Fs3%2Faws4_request&X-Amz-Date=20240101T000000Z&X-Amz-Expires=3600&X-Amz-Security-Token=FwoGZXIvYXdzEXAMPLETOKEN&X-Amz-Signature=0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"),
                secrets: &["FwoGZXIvYXdzEXAMPLETOKEN", "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"],
                rules: &["session_token", "presigned_url_signature"],
                keep: &["X-Amz-Credential=AKIAIOSFODNN7EXAMPLE%2F20240101", "X-Amz-Expires=3600", "X-Amz-Algorithm=AWS4-HMAC-SHA256"],
            },
            Case {
                name: "Service Bus connection string",
                input: Text("Endpoint=sb://ns1.servicebus.windows.net/;SharedAccessKeyName=RootManageSharedAccessKey;SharedAccessKey=c2hhcmVkYWNjZXNza2V5dmFsdWUxMjM0NTY3OA="),
                secrets: &["c2hhcmVkYWNjZXNza2V5dmFsdWUxMjM0NTY3OA="],
                rules: &["azure_shared_key"],
                keep: &["SharedAccessKeyName=RootManageSharedAccessKey", "sb://ns1.servicebus.windows.net/"],
            },
            Case {
                name: "SAS signature in a blob URL",
                input: Text("https://acct1.blob.core.windows.net/c/b.txt?sv=2022-11-02&ss=b&srt=o&sp=r&se=2025-01-01T00:00:00Z&spr=https&sig=AbCdEf%2BGhIjKlMnOpQrStUvWxYz0123456789%3D"),
                secrets: &["AbCdEf%2BGhIjKlMnOpQrStUvWxYz0123456789%3D"],
                rules: &["azure_sas_signature"],
                keep: &["sv=2022-11-02", "se=2025-01-01T00:00:00Z", "&sig="],
            },
            Case {
                name: "YAML-style password line",
                input: Text("db:\n  user: app\n  password: YamlPw123\n"),
                secrets: &["YamlPw123"],
                rules: &["password"],
                keep: &["user: app", "password: "],
            },
        ]
    }

    fn run_case(r: &Redactor, case: &Case) -> (String, RedactionCounts) {
        let mut counts = RedactionCounts::default();
        let out = match case.input {
            Json(src) => {
                let mut v: Value = serde_json::from_str(src)
                    .unwrap_or_else(|e| panic!("{}: test JSON does not parse: {e}", case.name));
                r.redact_json(&mut v, &mut counts);
                serde_json::to_string(&v).expect("serialises")
            }
            Text(src) => r.redact_text(src, &mut counts).into_owned(),
        };
        (out, counts)
    }

    #[test]
    fn planted_secrets_are_removed_and_name_their_rule() {
        let r = builtin();
        let cases = planted_cases();
        assert!(cases.len() >= 40, "{} cases", cases.len());
        for case in &cases {
            let (out, counts) = run_case(&r, case);
            for secret in case.secrets {
                assert!(
                    !out.contains(secret),
                    "{}: secret {secret:?} survived in {out}",
                    case.name
                );
            }
            for rule in case.rules {
                assert!(
                    out.contains(&format!("[REDACTED:{rule}]")),
                    "{}: no [REDACTED:{rule}] in {out}",
                    case.name
                );
                assert!(
                    counts.get(rule) > 0,
                    "{}: rule {rule} not counted: {counts:?}",
                    case.name
                );
            }
            for keep in case.keep {
                assert!(
                    out.contains(keep),
                    "{}: {keep:?} was lost from {out}",
                    case.name
                );
            }
        }
    }

    #[test]
    fn embedded_json_stays_valid_json() {
        let r = builtin();
        let mut counts = RedactionCounts::default();
        let body = r#"{"properties":{"osProfile":{"adminPassword":"x1","customData":null,"n":7,"pin":1234}},"data":{"a":"b"},"kind":"Secret","password":12345}"#;
        let out = r.redact_text(body, &mut counts);
        let v: Value = serde_json::from_str(&out).expect("still JSON");
        assert_eq!(v["password"], json!("[REDACTED:password]"));
        assert_eq!(v["properties"]["osProfile"]["n"], json!(7));
        assert_eq!(v["data"]["a"], json!("[REDACTED:k8s_secret]"));
        assert_eq!(v["kind"], json!("Secret"));
    }

    // ------------------------------------------------- over-redaction

    fn assert_tree_unchanged(r: &Redactor, src: &str) {
        let before: Value = serde_json::from_str(src).expect("test JSON parses");
        let mut after = before.clone();
        let mut counts = RedactionCounts::default();
        r.redact_json(&mut after, &mut counts);
        assert_eq!(
            before,
            after,
            "over-redaction: {counts:?}\n{}",
            serde_json::to_string_pretty(&after).unwrap()
        );
        assert_eq!(counts.total(), 0);
    }

    #[test]
    fn identifiers_in_cloudtrail_survive() {
        let r = builtin();
        assert_tree_unchanged(
            &r,
            r#"{"eventVersion":"1.08","userIdentity":{"type":"AssumedRole","principalId":"AROAEXAMPLEID12345678:alice","arn":"arn:aws:sts::123456789012:assumed-role/Admin/alice","accountId":"123456789012","accessKeyId":"ASIAZ7EXAMPLE4KEYID1","userName":"alice","sessionContext":{"sessionIssuer":{"type":"Role","principalId":"AROAEXAMPLEID12345678","arn":"arn:aws:iam::123456789012:role/Admin","accountId":"123456789012","userName":"Admin"},"attributes":{"creationDate":"2024-05-01T11:00:00Z","mfaAuthenticated":"true"}}},
            "eventTime":"2024-05-01T12:00:00Z","eventSource":"secretsmanager.amazonaws.com","eventName":"GetSecretValue","awsRegion":"us-east-1","sourceIPAddress":"203.0.113.7","userAgent":"aws-cli/2.13.0 Python/3.11.4 Linux/5.10.0 exe/x86_64.amzn.2 prompt/off command/secretsmanager.get-secret-value",
            "requestParameters":{"secretId":"arn:aws:secretsmanager:us-east-1:123456789012:secret:prod/db-AbCdEf","versionStage":"AWSCURRENT"},
            "responseElements":null,"requestID":"6f1f0bb3-5d7a-4b4e-9a4e-8c1e3d2a9f10","eventID":"0a1b2c3d-4e5f-6789-abcd-ef0123456789","readOnly":true,
            "resources":[{"accountId":"123456789012","type":"AWS::SecretsManager::Secret","ARN":"arn:aws:secretsmanager:us-east-1:123456789012:secret:prod/db-AbCdEf"}],
            "eventType":"AwsApiCall","managementEvent":true,"recipientAccountId":"123456789012","eventCategory":"Management",
            "tlsDetails":{"tlsVersion":"TLSv1.3","cipherSuite":"TLS_AES_128_GCM_SHA256","clientProvidedHostHeader":"secretsmanager.us-east-1.amazonaws.com"}}"#,
        );
        assert_tree_unchanged(
            &r,
            r#"{"requestParameters":{"SecretName":"prod/db","secretArn":"arn:aws:secretsmanager:us-east-1:123456789012:secret:prod/db-AbCdEf","SecretId":"prod/db","tokenType":"Bearer","clientRequestToken":"EXAMPLE1-90ab-cdef-fedc-ba987EXAMPLE","nextToken":"eyJ2IjoiMSIsImMiOiJhYmMifQ==","NextToken":"AAMA-EFRSURBSGo","tokenExpiration":"2024-05-01T13:00:00Z",
            "kmsKeyId":"arn:aws:kms:us-east-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab","keyId":"1234abcd-12ab-34cd-56ef-1234567890ab","KeyId":"alias/aws/secretsmanager",
            "commitId":"9fceb02d0ae598e95dc970b74767f19372d61af8","imageDigest":"sha256:2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae","eTag":"\"d41d8cd98f00b204e9800998ecf8427e\"","ETag":"\"9b2cf535f27731c974343645a3985328-4\"",
            "maxResults":100,"passwordLastUsed":"2024-04-01T00:00:00Z","loginProfile":{"userName":"bob","passwordResetRequired":true,"createDate":"Jan 1, 2024"},
            "apiKeyRequired":true,"authorizationType":"NONE","apiKeySource":"HEADER","apiKeySelectionExpression":"$request.header.x-api-key","email":"alice@example.com",
            "secretVersionId":"EXAMPLE1-90ab-cdef-fedc-ba987EXAMPLE","rotationLambdaARN":"arn:aws:lambda:us-east-1:123456789012:function:rotate","rotationRules":{"automaticallyAfterDays":30},
            "x-amz-server-side-encryption-customer-algorithm":"AES256","x-amz-server-side-encryption-customer-key-MD5":"4ZRNYBCCvL0YZeqDvZ8tFg==","x-amz-server-side-encryption-aws-kms-key-id":"arn:aws:kms:us-east-1:123456789012:key/abc",
            "SSEKMSKeyId":"arn:aws:kms:us-east-1:123456789012:key/abc","sessionName":"ci","roleSessionName":"ci","DurationSeconds":3600,"serialNumber":"arn:aws:iam::123456789012:mfa/alice"},
            "passwordPolicy":{"minimumPasswordLength":14,"requireSymbols":true,"allowUsersToChangePassword":true,"maxPasswordAge":90,"passwordReusePrevention":24,"hardExpiry":false,"expirePasswords":true}}"#,
        );
    }

    #[test]
    fn identifiers_in_gcp_and_azure_survive() {
        let r = builtin();
        assert_tree_unchanged(
            &r,
            r#"{"protoPayload":{"@type":"type.googleapis.com/google.cloud.audit.AuditLog","status":{},"authenticationInfo":{"principalEmail":"alice@example.com"},"requestMetadata":{"callerIp":"203.0.113.7","callerSuppliedUserAgent":"google-cloud-sdk gcloud/452.0.1 command/gcloud.iam.service-accounts.keys.create invocation-id/0a1b2c3d"},
            "serviceName":"iam.googleapis.com","methodName":"google.iam.admin.v1.CreateServiceAccountKey","authorizationInfo":[{"resource":"projects/-/serviceAccounts/1234567890","permission":"iam.serviceAccountKeys.create","granted":true}],
            "resourceName":"projects/-/serviceAccounts/1234567890","request":{"@type":"type.googleapis.com/google.iam.admin.v1.CreateServiceAccountKeyRequest","name":"projects/-/serviceAccounts/sa@p.iam.gserviceaccount.com","privateKeyType":"TYPE_GOOGLE_CREDENTIALS_FILE"},
            "response":{"name":"projects/p/serviceAccounts/sa@p.iam.gserviceaccount.com/keys/0123abcd","validAfterTime":"2024-05-01T12:00:00Z","keyAlgorithm":"KEY_ALG_RSA_2048","keyOrigin":"GOOGLE_PROVIDED","keyType":"USER_MANAGED"}},
            "insertId":"1abcd2efgh3","resource":{"type":"service_account","labels":{"project_id":"p","email_id":"sa@p.iam.gserviceaccount.com","unique_id":"1234567890"}},"timestamp":"2024-05-01T12:00:00.123456Z","severity":"NOTICE","logName":"projects/p/logs/cloudaudit.googleapis.com%2Factivity",
            "secretAccess":{"methodName":"google.cloud.secretmanager.v1.SecretManagerService.AccessSecretVersion","resourceName":"projects/p/secrets/db-password/versions/3","request":{"name":"projects/p/secrets/db-password/versions/latest"}},
            "saKeyMeta":{"type":"service_account","client_email":"sa@p.iam.gserviceaccount.com","client_id":"1234567890","token_uri":"https://oauth2.googleapis.com/token","auth_uri":"https://accounts.google.com/o/oauth2/auth"}}"#,
        );
        assert_tree_unchanged(
            &r,
            r#"{"time":"2024-05-01T12:00:00Z","resourceId":"/SUBSCRIPTIONS/0B1F6471-1BF0-4DDA-AEC3-CB9272F09590/RESOURCEGROUPS/RG/PROVIDERS/MICROSOFT.KEYVAULT/VAULTS/KV1","operationName":"MICROSOFT.KEYVAULT/VAULTS/WRITE","category":"Administrative","resultType":"Success","callerIpAddress":"203.0.113.7","correlationId":"0a1b2c3d-4e5f-6789-abcd-ef0123456789",
            "identity":{"authorization":{"scope":"/subscriptions/0b1f6471-1bf0-4dda-aec3-cb9272f09590/resourceGroups/rg/providers/Microsoft.KeyVault/vaults/kv1","action":"Microsoft.KeyVault/vaults/write","evidence":{"role":"Contributor","roleAssignmentScope":"/subscriptions/x","roleAssignmentId":"abc","roleDefinitionId":"def","principalId":"ghi","principalType":"User"}},
            "claims":{"aud":"https://management.core.windows.net/","iss":"https://sts.windows.net/0b1f6471/","appid":"04b07795-8ddb-461a-bbee-02f9e1bf7b46","http://schemas.xmlsoap.org/ws/2005/05/identity/claims/upn":"alice@example.com","ipaddr":"203.0.113.7","name":"Alice"}},
            "level":"Information","properties":{"statusCode":"OK","serviceRequestId":null,"entity":"/subscriptions/x/resourceGroups/rg/providers/Microsoft.KeyVault/vaults/kv1/secrets/dbpw","message":"Microsoft.KeyVault/vaults/secrets/write","hierarchy":"tid/mg1/sub1",
            "requestbody":"{\"properties\":{\"attributes\":{\"enabled\":true},\"contentType\":\"text/plain\",\"tags\":{\"env\":\"prod\"}}}",
            "user":{"passwordPolicies":"DisablePasswordExpiration","passwordProfile":null},"linuxConfiguration":{"disablePasswordAuthentication":true,"ssh":{"publicKeys":[{"path":"/home/azureuser/.ssh/authorized_keys","keyData":"ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQC7 user@host"}]}},
            "tags":[{"Key":"password-rotation","Value":"enabled"},{"Key":"Name","Value":"web"}]}}"#,
        );
    }

    #[test]
    fn identifiers_in_kubernetes_survive() {
        let r = builtin();
        assert_tree_unchanged(
            &r,
            r#"{"kind":"Event","apiVersion":"audit.k8s.io/v1","level":"RequestResponse","auditID":"8d5e3a5b-7c1e-4b8e-9f6a-2d3c4b5a6e7f","stage":"ResponseComplete","requestURI":"/api/v1/namespaces/prod/pods?fieldManager=kubectl-client-side-apply","verb":"create",
            "user":{"username":"system:serviceaccount:kube-system:replicaset-controller","uid":"1f2e3d4c","groups":["system:serviceaccounts","system:authenticated"]},"sourceIPs":["10.0.0.1"],"userAgent":"kube-controller-manager/v1.28.2 (linux/amd64) kubernetes/89a4ea3/system:serviceaccount:kube-system:replicaset-controller",
            "objectRef":{"resource":"secrets","namespace":"prod","name":"db-password","apiVersion":"v1"},"responseStatus":{"metadata":{},"code":201},
            "requestObject":{"kind":"Pod","apiVersion":"v1","metadata":{"name":"web-7d9f","namespace":"prod","labels":{"app":"web"}},"spec":{"volumes":[{"name":"db-creds","secret":{"secretName":"db-creds","defaultMode":420}},{"name":"kube-api-access-abcde","projected":{"sources":[{"serviceAccountToken":{"expirationSeconds":3607,"path":"token"}},{"configMap":{"name":"kube-root-ca.crt","items":[{"key":"ca.crt","path":"ca.crt"}]}}],"defaultMode":420}}],
            "containers":[{"name":"web","image":"registry.example.com/web@sha256:2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae","args":["--port","8080","--log-level","info","--token-file","/var/run/secrets/token"],"envFrom":[{"secretRef":{"name":"web-env"}}],
            "env":[{"name":"DB_PASSWORD","valueFrom":{"secretKeyRef":{"name":"db-creds","key":"password"}}},{"name":"LOG_LEVEL","value":"info"},{"name":"TOKEN_PATH","value":"/var/run/secrets/token"}],"volumeMounts":[{"name":"db-creds","mountPath":"/etc/creds","readOnly":true}]}],
            "serviceAccountName":"web","automountServiceAccountToken":true,"imagePullSecrets":[{"name":"regcred"}]}},
            "sa":{"kind":"ServiceAccount","secrets":[{"name":"web-token-x7k2p"}]},
            "annotations":{"authorization.k8s.io/decision":"allow","authorization.k8s.io/reason":"RBAC: allowed by ClusterRoleBinding \"system:controller:replicaset-controller\" of ClusterRole \"system:controller:replicaset-controller\" to ServiceAccount \"replicaset-controller/kube-system\""}}"#,
        );
    }

    #[test]
    fn ordinary_audit_strings_are_borrowed() {
        let r = builtin();
        let mut counts = RedactionCounts::default();
        for s in [
            "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0 Safari/537.36",
            "aws-cli/2.13.0 Python/3.11.4 Linux/5.10.0 exe/x86_64.amzn.2 prompt/off command/s3.cp",
            "Boto3/1.28.0 md/Botocore#1.31.0 ua/2.0 os/linux#5.10 md/arch#x86_64 lang/python#3.9 cfg/retry-mode#legacy",
            "kubectl/v1.28.2 (linux/amd64) kubernetes/89a4ea3",
            "arn:aws:secretsmanager:us-east-1:123456789012:secret:prod/db-AbCdEf",
            "arn:aws:iam::123456789012:role/service-role/token-rotator",
            "arn:aws:kms:us-east-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab",
            "projects/p/secrets/db-password/versions/3",
            "/subscriptions/0b1f6471-1bf0-4dda-aec3-cb9272f09590/resourceGroups/rg/providers/Microsoft.KeyVault/vaults/kv1/secrets/dbpw",
            "/api/v1/namespaces/prod/secrets/db-password",
            "/api/v1/namespaces/default/pods?limit=500&watch=true&resourceVersion=12345",
            "--region us-east-1",
            "kubectl get pods -n prod",
            "kubectl get secrets -n prod -o wide",
            "kubectl create secret generic db-creds --from-file=./creds.txt",
            "aws secretsmanager get-secret-value --secret-id prod/db --version-stage AWSCURRENT",
            "aws sts assume-role --role-arn arn:aws:iam::123456789012:role/x --role-session-name ci",
            "echo x | docker login --username AWS --password-stdin 123456789012.dkr.ecr.us-east-1.amazonaws.com",
            "https://example.com/path/to/page?limit=500&page=2",
            "https://oauth2.googleapis.com/token",
            "https://kv1.vault.azure.net/secrets/dbpw?api-version=7.4",
            "ssh://git@github.com/org/repo.git",
            "postgres://db.internal:5432/app",
            "nextToken=eyJ2IjoiMSJ9",
            "clientRequestToken=EXAMPLE1-90ab-cdef",
            "tokenType=Bearer",
            "alice@example.com",
            "AKIAIOSFODNN7EXAMPLE",
            "ASIAZ7EXAMPLE4KEYID1",
            "AKIAIOSFODNN7EXAMPLE is the key id used by ci",
            "sha256:2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae",
            "9fceb02d0ae598e95dc970b74767f19372d61af8",
            "\"d41d8cd98f00b204e9800998ecf8427e\"",
            "6f1f0bb3-5d7a-4b4e-9a4e-8c1e3d2a9f10",
            "eyJhbGciOiJIUzI1NiJ9",
            "mysql -u admin -p appdb",
            "mkdir -p /tmp/x && cd /tmp/x",
            "docker run -p 8080:80 nginx",
            "Basic tier",
            "basic authentication is disabled",
            "Bearer token required",
            "Bearer Authentication failed",
            "-----BEGIN CERTIFICATE-----\nMIIBszCCAVmgAwIBAgIU\n-----END CERTIFICATE-----",
            "asia-east1-b",
            "Error: access denied for user alice",
            "RBAC: allowed by ClusterRoleBinding",
            "password policy updated",
            "rotate the token now",
            "token: ",
            "--password-stdin",
            "Authorization: Bearer",
            "missing header Authorization: Bearer \"\"",
            "TLS_AES_128_GCM_SHA256",
            "{\"kind\":\"Pod\",\"metadata\":{\"name\":\"web\"}}",
            "userName=alice; accountId=123456789012",
        ] {
            let out = r.redact_text(s, &mut counts);
            assert!(matches!(out, Cow::Borrowed(_)), "changed {s:?} into {out:?}");
        }
        assert_eq!(counts.total(), 0, "{counts:?}");
    }

    /// The cost budget rests on the filters rejecting ordinary values and
    /// keys before any automaton runs; this keeps a rule edit from quietly
    /// making every event take the slow path.
    /// Keys of ordinary audit records: the key filter must stay quiet on (nearly) all of them.
    const TYPICAL_KEYS: &[&str] = &[
        "eventVersion",
        "userIdentity",
        "type",
        "principalId",
        "arn",
        "accountId",
        "accessKeyId",
        "sessionContext",
        "attributes",
        "creationDate",
        "mfaAuthenticated",
        "eventTime",
        "eventSource",
        "eventName",
        "awsRegion",
        "sourceIPAddress",
        "userAgent",
        "requestParameters",
        "bucketName",
        "key",
        "Host",
        "responseElements",
        "requestID",
        "eventID",
        "readOnly",
        "resources",
        "eventType",
        "managementEvent",
        "recipientAccountId",
        "eventCategory",
        "tlsDetails",
        "tlsVersion",
        "cipherSuite",
        "clientProvidedHostHeader",
        "protoPayload",
        "methodName",
        "resourceName",
        "correlationId",
        "operationName",
        "requestURI",
        "objectRef",
        "verb",
    ];

    #[test]
    fn prefilters_stay_quiet_on_typical_events() {
        let r = builtin();
        for s in [
            "AssumedRole",
            "arn:aws:sts::123456789012:assumed-role/Admin/alice",
            "ASIAZ7EXAMPLE4KEYID1",
            "AKIAIOSFODNN7EXAMPLE",
            "2024-05-01T12:00:00Z",
            "s3.amazonaws.com",
            "my-bucket",
            "my-bucket.s3.us-east-1.amazonaws.com",
            "arn:aws:s3:::my-bucket/logs/2024/05/01/app.log.gz",
            "aws-cli/2.13.0 Python/3.11.4 Linux/5.10.0 exe/x86_64.amzn.2 prompt/off command/s3.cp",
            "6f1f0bb3-5d7a-4b4e-9a4e-8c1e3d2a9f10",
            "alice@example.com",
            "type.googleapis.com/google.cloud.audit.AuditLog",
            "projects/my-proj/serviceAccounts/sa@my-proj.iam.gserviceaccount.com",
            "kubectl/v1.28.2 (linux/amd64) kubernetes/89a4ea3",
            "system:serviceaccount:kube-system:replicaset-controller",
            "Microsoft.Compute/virtualMachines/write",
            "ECDHE-RSA-AES128-GCM-SHA256",
            "sha256:9b2a4c1d3e5f67890abcdef1234567890abcdef1234567890abcdef12345678",
        ] {
            assert!(
                !r.inner.text_pairs.may_contain(s.as_bytes()),
                "text filter fires on {s:?}"
            );
        }
        let keys = TYPICAL_KEYS;
        let fired: Vec<&str> = keys
            .iter()
            .copied()
            .filter(|k| r.inner.keys.filter.key_bits(k.as_bytes()) != 0)
            .collect();
        assert!(
            fired.len() * 8 <= keys.len(),
            "key filter fires on {fired:?}"
        );
        // Keys nearly every event carries never get as far as comparing
        // against the object-rule triggers.
        let hot: Vec<&str> = HOT_KEYS
            .split(' ')
            .filter(|k| r.inner.trigger_bytes_fit(k.as_bytes()))
            .collect();
        assert!(hot.is_empty(), "trigger filter passes {hot:?}");
    }

    #[test]
    fn key_rules_and_their_exceptions() {
        let r = builtin();
        let name = |k: &str| r.key_rule(k).map(|id| r.rule_name(id));
        for (key, want) in [
            ("password", Some("password")),
            ("PASSWORD", Some("password")),
            ("db_passwd", Some("password")),
            ("pwd", Some("password")),
            ("secret", Some("secret")),
            ("client_secret", Some("client_secret")),
            ("clientSecret", Some("client_secret")),
            ("token", Some("token")),
            ("access_token", Some("token")),
            ("api_key", Some("api_key")),
            ("apikey", Some("api_key")),
            ("X-Api-Key", Some("api_key")),
            ("private_key", Some("private_key")),
            ("privateKeyData", Some("private_key")),
            ("sessionToken", Some("session_token")),
            ("secretAccessKey", Some("aws_secret_access_key")),
            ("AWS_SECRET_ACCESS_KEY", Some("aws_secret_access_key")),
            (
                "x-amz-server-side-encryption-customer-key",
                Some("sse_customer_key"),
            ),
            ("sse-c-key", Some("sse_customer_key")),
            ("sseCustomerKey", Some("sse_customer_key")),
            ("Authorization", Some("authorization")),
            ("AccountKey", Some("azure_shared_key")),
            ("SharedAccessKey", Some("azure_shared_key")),
            ("connectionString", Some("connection_string")),
            ("secretString", Some("aws_secrets_manager_value")),
            ("secretId", None),
            ("secretArn", None),
            ("SecretName", None),
            ("tokenType", None),
            ("clientRequestToken", None),
            ("nextToken", None),
            ("nextPageToken", None),
            ("tokenExpiration", None),
            ("privateKeyType", None),
            ("private_key_id", None),
            ("SharedAccessKeyName", None),
            ("x-amz-server-side-encryption-customer-key-MD5", None),
            ("authorizationInfo", None),
            ("authorizationType", None),
            ("authorization.k8s.io/decision", None),
            ("automountServiceAccountToken", None),
            ("passwordLastUsed", None),
            ("passwordResetRequired", None),
            ("apiKeyRequired", None),
            ("token_uri", None),
            ("accessKeyId", None),
            ("kmsKeyId", None),
            ("eventName", None),
            ("", None),
        ] {
            assert_eq!(name(key), want, "key {key:?}");
        }
        // Long keys (past the stack buffer) still match.
        let long = format!("{}_password", "x".repeat(300));
        assert_eq!(name(&long), Some("password"));
    }

    // ------------------------------------------------ secret references

    // Real secrets next to references to secrets, as the corpus has them.
    const CODEBUILD_ENV: &str = r#"{"environmentVariables":[{"name":"DB_PASSWORD","value":"prod/orders/db-master:password","type":"SECRETS_MANAGER"},{"name":"API_TOKEN","value":"/prod/orders/api-token","type":"PARAMETER_STORE"},{"name":"NPM_TOKEN","value":"ZQnpm1","type":"PLAINTEXT"},{"name":"GH_PASSWORD","value":"ZQgh1"}]}"#;
    const CLOUD_RUN_ENV: &str = r#"{"env":[{"name":"DB_PASS","valueSource":{"secretKeyRef":{"secret":"orders-db-password-runref","version":"latest"}}},{"name":"SERVICE_TOKEN","value":"ZQrun1"}],"servicePrincipalProfile":{"clientId":"c1","secret":"ZQaks1"},"volumes":[{"secret":{"secret":"ZQvol1"}}]}"#;
    const REFERENCES: &[&str] = &[
        "prod/orders/db-master:password",
        "/prod/orders/api-token",
        "orders-db-password-runref",
    ];
    const REAL: &[&str] = &["ZQnpm1", "ZQgh1", "ZQrun1", "ZQaks1", "ZQvol1"];

    fn assert_references_kept(what: &str, out: &str) {
        for r in REFERENCES.iter().filter(|r| out.contains(&r[..4])) {
            assert!(out.contains(r), "{what}: reference {r} lost in {out}");
        }
        for s in REAL {
            assert!(!out.contains(s), "{what}: secret {s} kept in {out}");
        }
    }

    #[test]
    fn references_to_secrets_are_kept_and_secrets_are_not() {
        let r = builtin();
        let both = format!("[{CODEBUILD_ENV},{CLOUD_RUN_ENV}]");
        // A whole document.
        let mut v: Value = serde_json::from_str(&both).unwrap();
        let mut c = RedactionCounts::default();
        r.redact_json(&mut v, &mut c);
        let out = serde_json::to_string(&v).unwrap();
        for reference in REFERENCES {
            assert!(out.contains(reference), "{reference} lost in {out}");
        }
        assert_references_kept("redact_json", &out);
        assert_eq!(c.total(), REAL.len() as u64, "{c:?}");
        // The same document carried in a string.
        let out = r.redact_text(&both, &mut c);
        assert_references_kept("redact_text", &out);
        for reference in REFERENCES {
            assert!(out.contains(reference), "{reference} lost in {out}");
        }
        // A dead letter cut short: the textual `"secret":` scanner must not
        // overrule the tree.
        let cut = &both[..both.len() - 2];
        let (out, _) = redact_damaged_text(&r, cut);
        assert_references_kept("cut dead letter", &out);
        for reference in REFERENCES {
            assert!(out.contains(reference), "{reference} lost in {out}");
        }
    }

    #[test]
    fn object_verdicts_api() {
        let r = builtin();
        let keep = |v: &[(usize, MemberVerdict)]| -> Vec<(usize, String)> {
            v.iter()
                .map(|&(i, v)| match v {
                    MemberVerdict::Keep(id) => (i, format!("keep:{}", r.rule_name(id))),
                    MemberVerdict::Redact(id) => (i, format!("redact:{}", r.rule_name(id))),
                })
                .collect()
        };
        let typed = [
            ("name", Some("DB_PASSWORD")),
            ("value", Some("prod/db:password")),
            ("type", Some("SECRETS_MANAGER")),
        ];
        assert_eq!(
            keep(&r.object_verdicts(Some("environmentVariables"), &typed)),
            [(1, "keep:typed_secret_reference".to_string())]
        );
        // The pair rule would redact `value`; keep wins, and object_rules
        // leaves the member to its caller's key rules.
        assert!(r.object_rules(None, &typed).is_empty());
        let plain = [typed[0], typed[1], ("type", Some("PLAINTEXT"))];
        assert_eq!(
            keep(&r.object_verdicts(None, &plain)),
            [(1, "redact:name_value_pair".to_string())]
        );
        let run = [("secret", Some("db-pw")), ("version", Some("latest"))];
        assert_eq!(
            keep(&r.object_verdicts(Some("secretKeyRef"), &run)),
            [(0, "keep:secret_key_ref".to_string())]
        );
        assert!(r
            .object_verdicts(Some("servicePrincipalProfile"), &run)
            .is_empty());
        // A keep member is a trigger, so callers ask.
        assert!(r.object_might_match(&mut ["secret", "version"].into_iter()));
    }

    #[test]
    fn object_rules_api() {
        let r = builtin();
        let none: Vec<(usize, RuleId)> =
            r.object_rules(None, &[("kind", Some("Pod")), ("data", None)]);
        assert!(none.is_empty());
        assert_eq!(none.capacity(), 0, "the empty result must not allocate");
        let hits = r.object_rules(
            None,
            &[("kind", Some("Secret")), ("metadata", None), ("data", None)],
        );
        assert_eq!(hits.len(), 1);
        assert_eq!(hits[0].0, 2);
        assert_eq!(r.rule_name(hits[0].1), "k8s_secret");
        let hits = r.object_rules(Some("payload"), &[("data", Some("abc"))]);
        assert_eq!(r.rule_name(hits[0].1), "gcp_secret_payload");
        assert!(r
            .object_rules(Some("other"), &[("data", Some("abc"))])
            .is_empty());
        let hits = r.object_rules(
            Some("env"),
            &[("Name", Some("API_TOKEN")), ("Value", Some("x"))],
        );
        assert_eq!((hits[0].0, r.rule_name(hits[0].1)), (1, "name_value_pair"));
        assert!(r.object_might_match(&mut ["kind", "data"].into_iter()));
        assert!(!r.object_might_match(&mut ["eventName", "eventTime", "userIdentity"].into_iter()));
    }

    // ------------------------------------------------------------ HMAC

    #[test]
    fn hashed_replacements_correlate_without_revealing() {
        let key_a = b"0123456789abcdef0123456789abcdef".to_vec();
        let key_b = b"fedcba9876543210fedcba9876543210".to_vec();
        let a = Redactor::from_sources(true, &[], Some(key_a.clone())).unwrap();
        let a2 = Redactor::from_sources(true, &[], Some(key_a)).unwrap();
        let b = Redactor::from_sources(true, &[], Some(key_b)).unwrap();
        let pw = a.key_rule("password").unwrap();
        let one = a.replacement(pw, "hunter2");
        assert!(
            one.starts_with("[REDACTED:password:") && one.ends_with(']'),
            "{one}"
        );
        let hex = &one["[REDACTED:password:".len()..one.len() - 1];
        assert_eq!(hex.len(), 8);
        assert!(hex
            .bytes()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
        assert_eq!(one, a.replacement(pw, "hunter2"), "same secret, same tag");
        assert_eq!(
            one,
            a2.replacement(a2.key_rule("password").unwrap(), "hunter2")
        );
        assert_ne!(one, a.replacement(pw, "hunter3"));
        assert_ne!(
            one,
            b.replacement(b.key_rule("password").unwrap(), "hunter2"),
            "different key"
        );
        // The same secret seen by tree redaction and inside embedded JSON
        // (where it is escaped) carries the same tag.
        let mut counts = RedactionCounts::default();
        let mut v = json!({"password": "p\"w", "body": "{\"password\":\"p\\\"w\"}"});
        a.redact_json(&mut v, &mut counts);
        let direct = v["password"].as_str().unwrap().to_string();
        assert!(v["body"].as_str().unwrap().contains(&direct), "{v}");
        assert!(matches!(
            Redactor::from_sources(true, &[], Some(b"short".to_vec())),
            Err(RuleSetError::HashKeyTooShort { len: 5 })
        ));
    }

    // --------------------------------------------------------- rule files

    fn load(text: &str) -> Result<Redactor, RuleSetError> {
        Redactor::from_sources(true, &[("site.toml".to_string(), text.to_string())], None)
    }

    #[test]
    fn builtin_rules_compile() {
        let r = Redactor::from_sources(true, &[], None).expect("built-in rules compile");
        let names = r.rule_names();
        for want in [
            "password",
            "secret",
            "token",
            "api_key",
            "private_key",
            "authorization",
            "k8s_secret",
            "name_value_pair",
            "gcp_secret_payload",
            "jwt",
            "pem_private_key",
            "github_token",
            "url_credentials",
            "mysql_password",
            "aws_secret_key_pair",
        ] {
            assert!(names.contains(&want), "{want} missing from {names:?}");
        }
        assert_eq!(Redactor::builtin().rule_names(), names);
    }

    #[test]
    fn overrides_add_and_disable_rules() {
        let r = load(
            r#"
disable = ["http_cookie", "jwt"]
[[rule]]
name = "vendor_token"
kind = "pattern"
anchors = ["vnd_"]
regex = 'vnd_[A-Za-z0-9]{16,}'
[[rule]]
name = "jwt"
kind = "key"
exact = ["idtoken"]
"#,
        )
        .unwrap();
        let mut c = RedactionCounts::default();
        assert_eq!(
            r.redact_text("use vnd_ABCDEFGHIJKLMNOP1234 now", &mut c),
            "use [REDACTED:vendor_token] now"
        );
        assert!(r.key_rule("Cookie").is_none());
        assert_eq!(
            r.key_rule("id_token").map(|id| r.rule_name(id)),
            Some("jwt")
        );
        let jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJl";
        assert!(
            r.redact_text(jwt, &mut c).contains("eyJzdWIiOiIxIn0"),
            "pattern jwt is disabled"
        );

        // Only the override file: built-in rules off, built-in names still disable-able.
        let only = Redactor::from_sources(
            false,
            &[("site.toml".into(), "disable = [\"password\"]\n[[rule]]\nname = \"pin\"\nkind = \"key\"\nexact = [\"pin\"]\n".into())],
            None,
        )
        .unwrap();
        assert_eq!(only.rule_names(), vec!["pin"]);
        assert!(only.key_rule("password").is_none());
        assert_eq!(
            only.redact_text("password=x pin=1234", &mut c),
            "password=x pin=[REDACTED:pin]"
        );
    }

    #[test]
    fn bad_rule_files_name_file_line_and_problem() {
        // Problems with a whole rule point at its [[rule]] line; problems
        // with one spanned field (name, kind, regex, suffix) at that field.
        let expect = |text: &str, line: usize, needle: &str| {
            let err = load(text)
                .err()
                .unwrap_or_else(|| panic!("accepted: {text}"));
            let msg = err.to_string();
            assert!(msg.starts_with(&format!("site.toml:{line}")), "{msg}");
            assert!(msg.contains(needle), "{msg} lacks {needle:?}");
        };
        // An unclosed array is only noticed at the end of the file.
        expect(
            "[[rule]]\nname = \"x\"\nkind = \"key\"\nexact = [\"a\"\n",
            5,
            "TOML",
        );
        expect(
            "[[rule]]\nname = \"x\"\nkind = \"key\"\nexakt = [\"a\"]\n",
            4,
            "exakt",
        );
        expect(
            "\n[[rule]]\nname = \"x\"\nkind = \"regexp\"\n",
            4,
            "unknown kind `regexp`",
        );
        expect(
            "[[rule]]\nname = \"x\"\nkind = \"pattern\"\nanchors = [\"abc\"]\nregex = 'abc(('\n",
            5,
            "regex does not compile",
        );
        expect(
            "[[rule]]\nname = \"x\"\nkind = \"key\"\nexact = [\"a\"]\nregex = 'a'\n",
            1,
            "does not apply to kind `key`",
        );
        expect(
            "[[rule]]\nname = \"password\"\nkind = \"key\"\nexact = [\"a\"]\n",
            1,
            "already defined at rules/redaction.toml",
        );
        expect("\n\ndisable = [\"no_such_rule\"]\n", 3, "no_such_rule");
        expect(
            "[[rule]]\nname = \"x\"\nkind = \"path\"\nsuffix = \"a.b.c\"\n",
            4,
            "two dot-separated keys",
        );
        expect(
            "[[rule]]\nname = \"Bad-Name\"\nkind = \"key\"\nexact = [\"a\"]\n",
            2,
            "only a-z, 0-9 and _",
        );
        expect(
            "[[rule]]\nname = \"x\"\nkind = \"pattern\"\nanchors = [\"=\"]\nregex = '='\n",
            1,
            "shorter than 3 bytes",
        );
        expect(
            "[[rule]]\nname = \"x\"\nkind = \"object\"\nredact = [\"value\"]\n",
            1,
            "without conditions",
        );
        expect(
            "[[rule]]\nname = \"x\"\nkind = \"key\"\nexact = [\"__\"]\n",
            1,
            "empty once",
        );
        expect(
            "[[rule]]\nname = \"x\"\nkind = \"object\"\nhas = [\"a\"]\n",
            1,
            "needs `redact = [...]` (or `keep = [...]`)",
        );
        expect(
            "[[rule]]\nname = \"x\"\nkind = \"object\"\nhas = [\"a\"]\nredact = [\"v\"]\nkeep = [\"V\"]\n",
            1,
            "both `redact` and `keep`",
        );
        expect(
            "[[rule]]\nname = \"x\"\nkind = \"pair\"\nnames = [\"n\"]\nvalues = [\"v\"]\nkeep = [\"v\"]\n",
            1,
            "field `keep` does not apply to kind `pair`",
        );
    }

    // ---------------------------------------------------------- counts

    #[test]
    fn counts_iterate_total_and_merge() {
        let r = builtin();
        let mut a = RedactionCounts::default();
        r.redact_text("password=a token=b password=c", &mut a);
        assert_eq!(a.get("password"), 2);
        assert_eq!(a.get("token"), 1);
        assert_eq!(a.total(), 3);
        let mut b = RedactionCounts::default();
        r.redact_text("API_KEY=zz", &mut b);
        b.merge(&a);
        b.merge(a.clone());
        assert_eq!(b.total(), 7);
        let got: Vec<(&str, u64)> = b.iter().collect();
        assert_eq!(got, vec![("api_key", 1), ("password", 4), ("token", 2)]);
    }

    // ------------------------------------------------------ redact_bytes

    #[test]
    fn redact_bytes_handles_json_ndjson_and_text() {
        let r = builtin();
        let mut c = RedactionCounts::default();
        let out = r.redact_bytes(b"{\"password\":\"BytesPw1\",\"n\":1}\n", &mut c);
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["password"], json!("[REDACTED:password]"));
        assert!(out.ends_with(b"\n"));

        let nd =
            b"{\"token\":\"NdTok1\"}\nnot json password=NdPw2\r\n{\"a\":\"Bearer abcdef123456\"}\n";
        let out = String::from_utf8(r.redact_bytes(nd, &mut c)).unwrap();
        for s in ["NdTok1", "NdPw2", "abcdef123456"] {
            assert!(!out.contains(s), "{out}");
        }
        assert!(
            out.contains("not json password=[REDACTED:password]\r\n"),
            "{out}"
        );

        let raw = b"\xff\xfe garbage secret=RawSecret9 \xc3";
        let out = r.redact_bytes(raw, &mut c);
        assert_eq!(out, b"\xff\xfe garbage secret=[REDACTED:secret] \xc3");
    }

    #[test]
    fn bytes_that_are_not_utf8_survive_redaction() {
        let r = builtin();
        let cases: &[(&[u8], &[u8])] = &[
            // Latin-1 and a broken sequence around JSON cut short; a stray byte
            // inside the secret goes with it.
            (
                b"{\"note\":\"caf\xe9\",\"kind\":\"Secret\",\"data\":{\"k\":\"ZQbin\xff1\"},\"x\":\"\xc3\x28",
                b"{\"note\":\"caf\xe9\",\"kind\":\"Secret\",\"data\":{\"k\":\"[REDACTED:k8s_secret]\"},\"x\":\"\xc3\x28",
            ),
            // Text lines; valid characters next to invalid bytes stay whole.
            (
                b"\xf0\x9f\x98\x80\xf0\x9f password=\xe2\x82Zq9 \xc3\xa9\xff\r\nAuthorization: Bearer abcdef123456 \x80\n",
                b"\xf0\x9f\x98\x80\xf0\x9f password=[REDACTED:password] \xc3\xa9\xff\r\nAuthorization: Bearer [REDACTED:authorization] \x80\n",
            ),
        ];
        for (input, want) in cases {
            assert!(std::str::from_utf8(input).is_err());
            let mut c = RedactionCounts::default();
            let out = r.redact_bytes(input, &mut c);
            assert_eq!(
                out,
                *want,
                "{} became {}",
                String::from_utf8_lossy(input),
                String::from_utf8_lossy(&out)
            );
        }
        // Nothing to redact: the same bytes, nothing counted.
        let blob: Vec<u8> = (0..=255u8).cycle().take(4096).collect();
        let mut c = RedactionCounts::default();
        assert_eq!(r.redact_bytes(&blob, &mut c), blob);
        assert!(c.is_empty());
    }

    // ------------------------------------------- damaged JSON (dead letters)

    /// `input` with each secret replaced by its rule's marker: what a damaged
    /// dead letter must become, byte for byte.
    fn with_markers(input: &str, secrets: &[(&str, &str)]) -> String {
        let mut want = input.to_string();
        for (secret, rule) in secrets {
            assert!(want.contains(secret), "{secret} not in {input}");
            want = want.replace(secret, &format!("[REDACTED:{rule}]"));
        }
        want
    }

    fn redact_damaged_text(r: &Redactor, input: &str) -> (String, RedactionCounts) {
        let mut c = RedactionCounts::default();
        let out = r.redact_bytes(input.as_bytes(), &mut c);
        (String::from_utf8(out).expect("UTF-8 in, UTF-8 out"), c)
    }

    #[test]
    fn cut_json_gets_object_pair_and_path_rules_and_keeps_other_bytes() {
        let r = builtin();
        let cases: &[(&str, &[(&str, &str)])] = &[
            // `type` decides, and comes after the value.
            (
                r#"{"eventName":"PutParameter","requestParameters":{"name":"/prod/x","value":"ZQssm1","type":"SecureString","overwrite":true"#,
                &[("ZQssm1", "aws_ssm_parameter_value")],
            ),
            (
                r#"{"kind":"Event","requestObject":{"kind":"Secret","metadata":{"name":"tls"},"data":{"tls.key":"ZQdata1","ca.crt":"ZQdata2"#,
                &[("ZQdata1", "k8s_secret"), ("ZQdata2", "k8s_secret")],
            ),
            (
                r#"{"spec":{"containers":[{"env":[{"name":"DB_PASSWORD","value":"ZQpair1"},{"name":"LOG_LEVEL","value":"debug"},{"name":"X"#,
                &[("ZQpair1", "name_value_pair")],
            ),
            // The value before its name.
            (
                r#"[{"value":"ZQpair2","name":"API_TOKEN"},{"value":"#,
                &[("ZQpair2", "name_value_pair")],
            ),
            (
                r#"{"protoPayload":{"request":{"payload":{"data":"ZQpayload1"}"#,
                &[("ZQpayload1", "gcp_secret_payload")],
            ),
            // A pretty-printed delivery cut in the middle of a record.
            (
                "{\n  \"Records\": [\n    {\n      \"requestParameters\": {\n        \"name\": \"/p\",\n        \"value\": \"ZQpretty1\",\n        \"type\": \"SecureString\"\n      },\n      \"responseElements\": {\n        \"ver",
                &[("ZQpretty1", "aws_ssm_parameter_value")],
            ),
            // Damage inside: a trailing comma, a missing comma, a stray word.
            (
                r#"{"kind":"Secret", "data":{"a":"ZQdmg1",} "stringData":{"b":"ZQdmg2"} oops, "type":"Opaque"}}}"#,
                &[("ZQdmg1", "k8s_secret"), ("ZQdmg2", "k8s_secret")],
            ),
        ];
        for (input, secrets) in cases {
            assert!(
                serde_json::from_str::<Value>(input).is_err(),
                "{input} must not parse"
            );
            let (out, counts) = redact_damaged_text(&r, input);
            assert_eq!(out, with_markers(input, secrets), "from {input}");
            assert_eq!(counts.total(), secrets.len() as u64, "{input}");
        }
        // Key rules blank numbers (quoted, so the JSON stays JSON) and every
        // leaf of a container, as in whole documents.
        let input = r#"{"db":{"password":123456,"port":5432,"secretString":{"a":"ZQnested1","b":[1,null]},"n""#;
        assert_eq!(
            redact_damaged_text(&r, input).0,
            r#"{"db":{"password":"[REDACTED:password]","port":5432,"secretString":{"a":"[REDACTED:aws_secrets_manager_value]","b":["[REDACTED:aws_secrets_manager_value]",null]},"n""#
        );
    }

    #[test]
    fn cut_json_lines_start_new_documents() {
        let r = builtin();
        // NDJSON: a line cut after `"payload":` does not take the next line as
        // its value (the path rule payload.data would fire on it).
        let input = "{\"payload\":\n{\"data\":\"keep-this-data\"}\n";
        assert_eq!(redact_damaged_text(&r, input).0, input);
        // A line cut inside an object's members: the next record's Secret is
        // still one.
        let input = "{\"a\":{\"b\":1,\n{\"kind\":\"Secret\",\"data\":{\"k\":\"ZQline1\"}}\n";
        let want = with_markers(input, &[("ZQline1", "k8s_secret")]);
        assert_eq!(redact_damaged_text(&r, input).0, want);
        // Pretty-printed: an indented value on the next line belongs to the key.
        let input = "{\"payload\":\n  {\"data\":\"ZQline2\"}";
        let want = with_markers(input, &[("ZQline2", "gcp_secret_payload")]);
        assert_eq!(redact_damaged_text(&r, input).0, want);
        // A string cut by the end of its line ends there.
        let input = "{\"kind\":\"Secret\",\"data\":{\"k\":\"ZQline3\r\nnext line stays\n";
        let want = with_markers(input, &[("ZQline3", "k8s_secret")]);
        assert_eq!(redact_damaged_text(&r, input).0, want);
    }

    #[test]
    fn cut_json_reads_json_carried_in_its_strings() {
        let r = builtin();
        // Key Vault SetSecret body as a string in a record cut after it: the
        // object rule needs the decoded document.
        let input = r#"{"properties":{"requestbody":"{\"value\":\"ZQkv1\",\"contentType\":\"text/plain\",\"pin\":1234,\"cfg\":{\"password\":99,\"note\":\"\\\"quoted\\\" \\u00e9\"}}","statusCode":"#;
        let (out, _) = redact_damaged_text(&r, input);
        assert!(!out.contains("ZQkv1") && !out.contains("99"), "{out}");
        // Completed, it is JSON again, and so is the string inside it.
        let v: Value = serde_json::from_str(&format!("{out}null}}}}")).expect("still JSON");
        let body: Value =
            serde_json::from_str(v["properties"]["requestbody"].as_str().unwrap()).unwrap();
        assert_eq!(body["value"], json!("[REDACTED:azure_key_vault_secret]"));
        assert_eq!(body["cfg"]["password"], json!("[REDACTED:password]"));
        assert_eq!(body["cfg"]["note"], json!("\"quoted\" é"));
        assert_eq!(body["pin"], json!(1234));

        // The record and the Event carried in its message, both cut off.
        let input = r#"{"logStream":"x","message":"{\"kind\":\"Event\",\"requestObject\":{\"kind\":\"Secret\",\"data\":{\"pw\":\"ZQeks1\",\"x\":\"ZQeks2"#;
        let want = with_markers(input, &[("ZQeks1", "k8s_secret"), ("ZQeks2", "k8s_secret")]);
        assert_eq!(redact_damaged_text(&r, input).0, want);

        // With a hash key, the tag is the one the whole document would get.
        let key = b"0123456789abcdef0123456789abcdef".to_vec();
        let h = Redactor::from_sources(true, &[], Some(key)).unwrap();
        let doc = r#"{"requestbody":"{\"password\":\"Zq\\\"x\\u00e9\"}"}"#;
        let mut whole: Value = serde_json::from_str(doc).unwrap();
        h.redact_json(&mut whole, &mut RedactionCounts::default());
        let whole = serde_json::to_string(&whole).unwrap();
        let cut = format!("{},", &doc[..doc.len() - 1]);
        let (damaged, _) = redact_damaged_text(&h, &cut);
        let tag = |s: &str| {
            let k = s.find("[REDACTED:password:").expect(s) + "[REDACTED:password:".len();
            s[k..k + 8].to_string()
        };
        assert_eq!(tag(&damaged), tag(&whole), "{damaged} vs {whole}");
    }

    #[test]
    fn decode_json_string_maps_back_to_the_escapes() {
        let raw = r#"a\"b\u00e9\ud83d\ude00\n\x\u12"#;
        let (text, map) = decode_json_string(raw);
        assert_eq!(text, "a\"bé😀\n\\x\\u12");
        assert_eq!(map.len(), text.len() + 1);
        let at = |needle: &str| {
            let k = text.find(needle).unwrap();
            (map[k] as usize, map[k + needle.len()] as usize)
        };
        assert_eq!(at("\"b"), (1, 4));
        assert_eq!(at("é"), (4, 10));
        assert_eq!(at("😀"), (10, 22));
        assert_eq!(*map.last().unwrap() as usize, raw.len());
    }

    // ------------------------------------------------- linear time (untimed)

    #[test]
    fn engine_is_the_linear_time_regex_crate() {
        let r = builtin();
        let p = &r.inner.patterns[0];
        assert!(std::any::type_name_of_val(&p.regex).starts_with("regex::"));
        let manifest = include_str!("../Cargo.toml");
        for banned in [
            concat!("fancy", "-regex"),
            concat!("pcre", "2"),
            concat!("onig", "uruma"),
        ] {
            assert!(
                !manifest.contains(banned),
                "{banned} would bring a backtracking engine"
            );
        }
    }

    #[test]
    fn adversarial_megabyte_inputs_finish() {
        let r = builtin();
        let mut c = RedactionCounts::default();
        const MB: usize = 1 << 20;
        for unit in [
            "eyJ",
            "eyJa.",
            "=",
            "a=",
            "password=",
            "--password ",
            "--",
            "\":",
            "\"password\":",
            "\\\":",
            ": ",
            "Authorization: ",
            "://",
            "://a:",
            "Bearer ",
            "Basic ",
            "-----BEGIN RSA PRIVATE KEY-----",
            "mysql ",
            "mysql -p",
            "curl -u a:",
            "AKIA",
            "AKIAIOSFODNN7EXAMPLE ",
            "ghp_",
            "{",
            "[",
            "{\"a\":",
            "\"",
            "\\",
            "é",
            "secret_access_key ",
        ] {
            let s = unit.repeat(MB / unit.len());
            let out = r.redact_text(&s, &mut c);
            assert!(
                out.len() <= s.len() * 40 + 64,
                "{unit}: output grew to {}",
                out.len()
            );
            let _ = r.redact_bytes(s.as_bytes(), &mut c);
        }
        // Long runs without a terminator: each scanner must stop, not rescan.
        let long = format!("{}{}", "eyJ", "a".repeat(MB));
        let _ = r.redact_text(&long, &mut c);
        let deep = format!("{}{}", "{\"a\":".repeat(50_000), "1");
        let _ = r.redact_text(&deep, &mut c);
        // Damaged dead letters: one object repeating members that all fire a
        // rule, nesting past the depth cap, escapes, half-open strings.
        for unit in [
            "\"name\":\"DB_PASSWORD\",\"value\":\"x\",",
            "\"keyName\":\"a\",\"value\":\"b\",",
            "\"kind\":\"Secret\",\"data\":{\"a\":\"b\"},",
            "[{\"password\":",
            "{\"a\":[",
            "\"\\\"a\\\":\\\"",
            "\"\\u",
            "}]",
            "\"password\":\"\n",
        ] {
            let s = format!("{{{}", unit.repeat(MB / unit.len()));
            let _ = r.redact_bytes(s.as_bytes(), &mut c);
        }
    }

    // ------------------------------------------------------ property tests

    mod props {
        use super::*;
        use proptest::prelude::*;

        // Filler cannot contain 'Z' or 'Q', so a secret that starts "ZQ" can
        // only be found where it was planted.
        fn filler() -> impl Strategy<Value = String> {
            proptest::string::string_regex("[a-y0-9 .,/()@-]{0,40}").unwrap()
        }

        fn secret() -> impl Strategy<Value = String> {
            proptest::string::string_regex("ZQ[A-Z0-9]{10,24}").unwrap()
        }

        const FORMS: &[&str] = &[
            "password=%S",
            "DB_PASSWORD=%S;",
            "--client-secret %S",
            "--api-key=%S",
            "Authorization: Bearer %S",
            "curl -H \"Authorization: Bearer %S\" https://x",
            "https://user:%S@host.example.com/p",
            "mysql -u root -p%S db",
            "?a=1&token=%S&b=2",
            "{\"password\": \"%S\"}",
            "{\\\"apiKey\\\":\\\"%S\\\"}",
            "ghp_%S0123456789abcdefghijklmnopqrstu",
            "sk_live_%S",
            "X-Api-Key: %S",
            "AccountKey=%S==;EndpointSuffix=x",
            "-----BEGIN PRIVATE KEY-----\n%S\n-----END PRIVATE KEY-----",
            "eyJhbGciOiJIUzI1NiJ9.eyJ%S.sig",
        ];

        // Records whose secret is known as one before it starts: the context
        // (kind, name, key, parent) comes first.
        const CUT_FORMS: &[&str] = &[
            r#"{"kind":"Secret","metadata":{"name":"n"},"data":{"k":"%S","j":"v"},"type":"Opaque"}"#,
            r#"{"env":[{"name":"DB_PASSWORD","value":"%S"},{"name":"X","value":"y"}]}"#,
            r#"{"payload":{"data":"%S"},"parent":"projects/p/secrets/s"}"#,
            r#"{"a":{"password":"%S","b":1}}"#,
            r#"{"a":{"password":["%S",{"b":"%S"}]}}"#,
            r#"{"message":"{\"kind\":\"Secret\",\"data\":{\"k\":\"%S\"}}","x":1}"#,
            "{\n  \"spec\": {\n    \"env\": [\n      {\n        \"name\": \"API_TOKEN\",\n        \"value\": \"%S\"\n      }\n    ]\n  }\n}\n",
        ];

        proptest! {
            // PROPTEST_CASES=n raises the count for a deeper run.
            #![proptest_config(ProptestConfig {
                cases: ProptestConfig::default().cases.max(400),
                ..ProptestConfig::default()
            })]

            #[test]
            fn planted_secrets_never_survive_in_text(
                pre in filler(), post in filler(), s in secret(), form in 0..FORMS.len()
            ) {
                let r = Redactor::builtin();
                let text = format!("{pre} {} {post}", FORMS[form].replace("%S", &s));
                let mut c = RedactionCounts::default();
                let out = r.redact_text(&text, &mut c);
                prop_assert!(!out.contains(&s), "{} -> {}", text, out);
            }

            #[test]
            fn planted_secrets_never_survive_in_json(
                keys in proptest::collection::vec("[a-z]{1,8}", 0..6),
                s in secret(),
                form in 0..FORMS.len(),
                secret_key in prop::sample::select(vec!["password", "clientSecret", "apiKey", "sessionToken", "Authorization", "private_key"]),
                depth in 0usize..4,
            ) {
                let r = Redactor::builtin();
                let mut v = json!({ secret_key: s.clone(), "note": FORMS[form].replace("%S", &s) });
                for k in &keys {
                    v = json!({ k.as_str(): v, "id": k });
                }
                for _ in 0..depth {
                    v = json!([v, "x"]);
                }
                let text = serde_json::to_string(&v).unwrap();
                let mut c = RedactionCounts::default();
                r.redact_json(&mut v, &mut c);
                let out = serde_json::to_string(&v).unwrap();
                prop_assert!(!out.contains(&s), "{}", out);
                // The same document carried as a string is redacted in place
                // and stays valid JSON.
                let in_place = r.redact_text(&text, &mut c);
                prop_assert!(!in_place.contains(&s), "{}", in_place);
                prop_assert!(serde_json::from_str::<Value>(&in_place).is_ok(), "{}", in_place);
            }

            /// The key filter only skips work: with or without it, every key
            /// gets the same answer.
            #[test]
            fn key_filter_never_changes_the_answer(parts in proptest::collection::vec(prop::sample::select(vec![
                "pass", "word", "passwd", "pwd", "pw", "secret", "token", "api", "key", "_", "-", ".", " ", "X", "Id",
                "Name", "access", "session", "private", "sse", "c", "customer", "Authorization", "sig", "Type",
                "next", "client", "Secret", "TOKEN", "Key", "Data", "connection", "String", "cookie", "set",
                "account", "shared", "signature", "x-amz-", "encryption", "MD5", "automount", "é", "1",
            ]), 0..6)) {
                let r = Redactor::builtin();
                let key: String = parts.concat();
                let unfiltered = r.inner.keys.lookup_normalized(&normalize_owned(&key));
                prop_assert_eq!(r.key_rule(&key), unfiltered, "{}", key);
            }

            /// The trigger filter only skips work.
            #[test]
            fn trigger_filter_never_changes_the_answer(parts in proptest::collection::vec(prop::sample::select(vec![
                "secret", "Secret", "SECRET", "session", "Context", "data", "Data", "string", "value", "Value",
                "private", "key", "Key", "id", "Id", "principal", "parameter", "_", "-", ".", " ", "x", "t", "T", "e",
                "s", "a",
            ]), 0..5)) {
                let r = Redactor::builtin();
                let key: String = parts.concat();
                let exact = r.inner.triggers.iter().any(|t| norm_eq(&key, t));
                prop_assert_eq!(r.inner.might_trigger(&key), exact, "{}", key);
                if exact {
                    prop_assert!(r.inner.trigger_bytes_fit(key.as_bytes()), "{}", key);
                }
            }

            /// The text filter only skips work: the slow path on its own
            /// gives the same result for every string.
            #[test]
            fn text_filter_never_changes_the_result(parts in proptest::collection::vec(prop::sample::select(vec![
                "=", "--", "\":", "\" :", "\\\":", ": ", "://", "eyJ", "eyJhbGciOi.", "Bearer ", "Basic ", "-----BEGIN RSA PRIVATE KEY-----",
                "{", "}", "\"", "\\", "'", "password", "token", "kind", "Secret", "data", "mysql -p", "curl -u a:", "AKIA", "ASIA",
                "ghp_", "é", " ", "\n", "a", "1", "@", "&", ";", "secret_access_key", "name", "value", "DB_PASSWORD", "sig",
                "AccountKey", "xoxb-", "glpat-", "sk_live_", "0123456789abcdefABCDEF", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
                "sshpass -p", "mariadb", "SecretAccessKey", "xapp-1-", "github_pat_", "rk_test_",
            ]), 0..24)) {
                let r = Redactor::builtin();
                let s: String = parts.concat();
                let mut c1 = RedactionCounts::default();
                let mut c2 = RedactionCounts::default();
                let fast = r.redact_text(&s, &mut c1);
                let slow = r.redact_text_slow(&s, &mut c2);
                prop_assert_eq!(&*fast, &*slow, "{:?}", s);
                prop_assert_eq!(c1.total(), c2.total());
            }

            /// A record cut anywhere after a secret starts (a truncated dead
            /// letter) loses what it holds of the secret, as long as what
            /// decides that it is one came before it.
            #[test]
            fn cut_records_lose_their_secret(
                s in secret(),
                form in 0..CUT_FORMS.len(),
                cut in 0.0f64..=1.0,
            ) {
                let r = Redactor::builtin();
                let whole = CUT_FORMS[form].replace("%S", &s);
                let from = whole.find(&s).expect("planted") + 2;
                let at = from + ((whole.len() - from) as f64 * cut) as usize;
                let text = &whole[..at.min(whole.len())];
                let mut c = RedactionCounts::default();
                let out = String::from_utf8(r.redact_bytes(text.as_bytes(), &mut c)).unwrap();
                prop_assert!(!out.contains("ZQ"), "{} -> {}", text, out);
            }

            /// Damaged JSON without secrets comes back byte for byte.
            #[test]
            fn damaged_json_without_secrets_is_kept(parts in proptest::collection::vec(prop::sample::select(vec![
                "{", "}", "[", "]", "\"", ":", ",", "\\", "\\\"", "\\u00", "\n", "\r\n", " ", "a", "1", "-", "null",
                "é", "\"name\"", "\"value\"", "\"kind\"", "\"data\"", "\"type\"", "\"x\":", "\"note\":\"a b\"",
            ]), 0..60)) {
                let s: String = parts.concat();
                prop_assume!(serde_json::from_str::<Value>(s.trim()).is_err());
                let r = Redactor::builtin();
                let mut c = RedactionCounts::default();
                let out = r.redact_bytes(s.as_bytes(), &mut c);
                prop_assert_eq!(c.total(), 0);
                prop_assert_eq!(out, s.as_bytes());
            }

            #[test]
            fn text_without_anchors_is_borrowed(s in "[ac-gi-pr-xz0-9./,;@()+]{0,200}") {
                let r = Redactor::builtin();
                let mut c = RedactionCounts::default();
                let out = r.redact_text(&s, &mut c);
                prop_assert!(matches!(out, Cow::Borrowed(_)));
                prop_assert_eq!(c.total(), 0);
            }

            #[test]
            fn never_panics_on_arbitrary_utf8(s in any::<String>()) {
                let r = Redactor::builtin();
                let mut c = RedactionCounts::default();
                let _ = r.redact_text(&s, &mut c);
                let _ = r.redact_bytes(s.as_bytes(), &mut c);
            }

            /// Any bytes: no panic, and without a secret nothing changes. A
            /// secret between bytes that are not ASCII takes only itself.
            #[test]
            fn bytes_survive_byte_for_byte(
                b in proptest::collection::vec(any::<u8>(), 0..300),
                pre in proptest::collection::vec(0x80u8..=0xff, 0..40),
                post in proptest::collection::vec(0x80u8..=0xff, 0..40),
                s in secret(),
            ) {
                let r = Redactor::builtin();
                let mut c = RedactionCounts::default();
                let out = r.redact_bytes(&b, &mut c);
                if c.is_empty() && serde_json::from_slice::<Value>(b.trim_ascii()).is_err() {
                    prop_assert_eq!(out, b);
                }
                let mut planted = pre.clone();
                planted.extend_from_slice(format!(" password={s} ").as_bytes());
                planted.extend_from_slice(&post);
                let mut want = pre;
                want.extend_from_slice(b" password=[REDACTED:password] ");
                want.extend_from_slice(&post);
                let out = r.redact_bytes(&planted, &mut c);
                prop_assert_eq!(out, want);
            }

            #[test]
            fn never_panics_on_anchor_soup(parts in proptest::collection::vec(prop::sample::select(vec![
                "=", "--", "\":", "\" :", "\\\":", ": ", "://", "eyJ", "eyJa.", "Bearer ", "Basic ", "-----BEGIN RSA PRIVATE KEY-----",
                "-----END RSA PRIVATE KEY-----", "{", "}", "[", "]", "\"", "\\", "'", "password", "token", "kind", "Secret", "data",
                "mysql -p", "curl -u a:", "AKIA", "ghp_", "é", "日本", " ", "\n", "a", "1", "@", "&", ";", ",", "secret_access_key",
                "name", "value", "DB_PASSWORD", "sig", "AccountKey", "xoxb-", "glpat-", "sk_live_",
            ]), 0..60)) {
                let s: String = parts.concat();
                let r = Redactor::builtin();
                let mut c = RedactionCounts::default();
                let _ = r.redact_text(&s, &mut c);
                let _ = r.redact_bytes(s.as_bytes(), &mut c);
            }
        }
    }

    // ------------------------------------------------------ measurement

    /// `cargo test --release -- --ignored --nocapture measure_` prints the
    /// cost of the no-secret path; it asserts nothing about time.
    #[test]
    #[ignore]
    fn measure_redact_text_on_typical_strings() {
        use std::hint::black_box;
        use std::time::Instant;
        let strings = [
            "1.08", "AssumedRole", "AROAEXAMPLEID12345678:alice", "arn:aws:sts::123456789012:assumed-role/Admin/alice",
            "123456789012", "ASIAEXAMPLEKEYID1234", "2024-05-01T12:00:00Z", "false", "s3.amazonaws.com", "GetObject",
            "us-east-1", "203.0.113.7", "aws-cli/2.13.0 Python/3.11.4 Linux/5.10.0 exe/x86_64.amzn.2 prompt/off command/s3.cp",
            "my-bucket", "logs/2024/05/01/app.log.gz", "my-bucket.s3.us-east-1.amazonaws.com", "8XZ2G3K1N4QW5E6R",
            "6f1f0bb3-5d7a-4b4e-9a4e-8c1e3d2a9f10", "AwsApiCall", "Data", "TLSv1.2", "ECDHE-RSA-AES128-GCM-SHA256",
            "arn:aws:s3:::my-bucket/logs/2024/05/01/app.log.gz", "AWS::S3::Object",
            "type.googleapis.com/google.cloud.audit.AuditLog", "alice@example.com", "google.iam.admin.v1.CreateServiceAccountKey",
            "projects/my-proj/serviceAccounts/sa@my-proj.iam.gserviceaccount.com", "iam.googleapis.com",
            "/api/v1/namespaces/default/pods?limit=500", "kubectl/v1.28.2 (linux/amd64) kubernetes/89a4ea3", "list",
            "system:serviceaccount:kube-system:replicaset-controller", "Microsoft.Compute/virtualMachines/write",
            "/subscriptions/0b1f6471-1bf0-4dda-aec3-cb9272f09590/resourceGroups/rg-prod/providers/Microsoft.Compute/virtualMachines/vm1",
            "Succeeded", "Administrative", "Informational",
            "sha256:9b2a4c1d3e5f67890abcdef1234567890abcdef1234567890abcdef12345678", "\"d41d8cd98f00b204e9800998ecf8427e\"",
        ];
        let keys = TYPICAL_KEYS;
        // Time this thread actually ran (Linux); wall time is inflated when
        // other builds share the machine.
        fn on_cpu_ns() -> Option<u64> {
            std::fs::read_to_string("/proc/thread-self/schedstat")
                .ok()?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        }
        fn run(n: usize, mut f: impl FnMut(usize)) -> (f64, Option<f64>) {
            let cpu0 = on_cpu_ns();
            let t = Instant::now();
            for i in 0..n {
                f(i);
            }
            let wall = t.elapsed().as_nanos() as f64 / n as f64;
            let cpu = match (cpu0, on_cpu_ns()) {
                (Some(a), Some(b)) => Some((b - a) as f64 / n as f64),
                _ => None,
            };
            (wall, cpu)
        }
        let r = Redactor::builtin();
        let mut c = RedactionCounts::default();
        let n = 2_000_000usize;
        let (mut text_wall, mut text_cpu, mut key_wall, mut key_cpu) =
            (f64::MAX, f64::MAX, f64::MAX, f64::MAX);
        for _ in 0..5 {
            let (w, cpu) = run(n, |i| {
                black_box(r.redact_text(black_box(strings[i % strings.len()]), &mut c));
            });
            text_wall = text_wall.min(w);
            text_cpu = text_cpu.min(cpu.unwrap_or(w));
            let (w, cpu) = run(n, |i| {
                black_box(r.key_rule(black_box(keys[i % keys.len()])));
            });
            key_wall = key_wall.min(w);
            key_cpu = key_cpu.min(cpu.unwrap_or(w));
        }
        assert_eq!(c.total(), 0);
        let avg = strings.iter().map(|s| s.len()).sum::<usize>() / strings.len();
        println!("redact_text: {text_cpu:.1} ns/string on CPU, {text_wall:.1} wall (avg {avg} bytes, no secrets, best of 5 x 2M)");
        println!("key_rule:    {key_cpu:.1} ns/key on CPU, {key_wall:.1} wall (best of 5 x 2M)");
    }
}

#[cfg(test)]
mod key_memo_tests {
    use super::*;

    /// Keys the memo must answer exactly as the checks do: typical audit keys, rule keys in
    /// their spellings, keys that share a length and both ends with another, and random ones
    /// of every length around the memo's bounds.
    fn keys() -> Vec<String> {
        let mut keys: Vec<String> = TYPICAL_KEYS
            .split_whitespace()
            .map(str::to_string)
            .collect();
        for k in [
            "password",
            "db_password",
            "DB-PASSWORD",
            "pwd",
            "pass",
            "passwordPolicy",
            "allowUsersToChangePassword",
            "sessionToken",
            "SecretAccessKey",
            "secretKey",
            "x-amz-server-side-encryption-customer-key",
            "SSECustomerKey",
            "client_secret",
            "value",
            "Value",
            "data",
            "stringData",
            "private_key",
            "privateKeyData",
            "secret",
            "parameterValue",
            "name",
            "type",
            "kind",
            "token",
            "api_key",
            "authorization",
        ] {
            keys.push(k.to_string());
        }
        // Same length, same first and last 8 bytes, different middle: only possible past 16
        // bytes, where the windows overlap less.
        for mid in ["aaaa", "abaa", "aaba", "zzzz", "pass", "word"] {
            keys.push(format!("prefixAB{mid}suffixCD"));
            keys.push(format!("prefixABCDEFGH{mid}ijklmnopQRSTUV"));
        }
        let mut x: u64 = 0x2545_F491_4F6C_DD1D;
        let alphabet = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-. ";
        for _ in 0..4000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let len = (x % 40) as usize;
            let key: String = (0..len)
                .map(|i| {
                    let v = x.rotate_left(i as u32 * 5) as usize;
                    alphabet[v % alphabet.len()] as char
                })
                .collect();
            keys.push(key);
        }
        keys
    }

    #[test]
    fn memo_answers_every_key_as_the_checks_do_first_time_and_from_memory() {
        let r = Redactor::builtin();
        let mut memo = KeyMemo::default();
        let keys = keys();
        for round in 0..3 {
            for k in &keys {
                assert_eq!(
                    memo.verdict(&r, k),
                    r.key_verdict(k),
                    "key {k:?}, round {round}"
                );
            }
        }
        // The rule keys really are hits, so agreement is not agreement on "nothing".
        assert!(memo.verdict(&r, "db_password").rule.is_some());
        assert!(memo.verdict(&r, "value").trigger);
    }

    #[test]
    fn keys_alike_in_length_and_first_window_keep_their_own_verdicts() {
        let r = Redactor::builtin();
        // One pair per window width (4, 8 and 16 bytes): same length, same first window,
        // one a rule's key or trigger and the other not, asked right after each other.
        for (hit, miss) in [
            ("value", "valux"),
            ("abcdefghpasswd", "abcdefghqqqqqq"),
            ("abcdefghijklmnoppassword", "abcdefghijklmnopqqqqqqqq"),
        ] {
            let mut memo = KeyMemo::default();
            let want_hit = r.key_verdict(hit);
            let want_miss = r.key_verdict(miss);
            assert_ne!(want_hit, want_miss, "{hit} / {miss}");
            for _ in 0..2 {
                assert_eq!(memo.verdict(&r, hit), want_hit, "{hit}");
                assert_eq!(memo.verdict(&r, miss), want_miss, "{miss}");
            }
        }
    }

    #[test]
    fn memo_forgets_verdicts_of_another_rule_set() {
        let with = Redactor::builtin();
        let rules = r#"
[[rule]]
name = "creation_date"
kind = "key"
exact = ["creationdate"]
"#;
        let other = Redactor::from_sources(false, &[("extra.toml".into(), rules.into())], None)
            .expect("rules compile");
        let mut memo = KeyMemo::default();
        assert_eq!(memo.verdict(&with, "creationDate").rule, None);
        assert!(memo.verdict(&other, "creationDate").rule.is_some());
        assert!(memo.verdict(&with, "sessionToken").rule.is_some());
        assert_eq!(memo.verdict(&other, "sessionToken").rule, None);
    }
}
