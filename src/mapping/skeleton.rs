//! The output shape of one class, fixed when a table is compiled: every attribute a field can
//! write gets a slot, every object its place and its OCSF requirements. Mapping a record fills
//! slots; encoding walks the skeleton once and writes the present parts; validation checks the
//! requirements of present objects and only the leaves whose type coercion cannot guarantee.
//!
//! Doing this work at compile time is what keeps the per-record cost near the parse cost: no
//! tree to build, no key lookups by name, no schema walk per event.

use crate::event::{Out, Redact};
use crate::json;
use crate::ocsf::schema::{ClassSchema, Violation};

/// A slot id that no attribute has: a required attribute the table never writes.
pub const NEVER: u32 = u32::MAX;

#[derive(Debug, Default)]
pub struct SkelNode {
    pub key: &'static str,
    /// `"key":` already escaped, written as is.
    pub key_json: &'static str,
    pub parent: u32,
    pub children: Vec<u32>,
    pub leaf: bool,
    /// The node's schema node in the class schema.
    pub schema: usize,
    /// Leaf: some writer produces values that need a per-event schema check.
    pub check: bool,
    /// Leaf: every writer produces a constant, a lookup value or a validated format (a
    /// timestamp, an IP): nothing a secret can hide in, so redaction skips it.
    pub plain: bool,
    /// Leaf: some writer copies source text into it (`plain` cannot be set again).
    pub sourced: bool,
    /// Leaf: the same value in every event of the class (an unconditional constant that is
    /// the slot's only writer, `metadata.version`, `metadata.profiles`), encoded once. The slot
    /// stays empty; `ClassP::fixed_present` marks it present.
    pub fixed: Option<&'static str>,
    /// Object: required children, anyOf and oneOf alternatives, as node ids (NEVER when the
    /// table has no way to write that attribute).
    pub required: Vec<(&'static str, u32)>,
    pub any_of: Vec<Vec<u32>>,
    pub one_of: Vec<Vec<u32>>,
    pub any_of_text: String,
    pub one_of_text: String,
}

#[derive(Debug)]
pub struct Skeleton {
    pub nodes: Vec<SkelNode>,
    /// The nodes `validate` has something to check on (flagged leaves, objects with
    /// requirements), in id order; set by `finish`.
    pub checks: Vec<u32>,
}

impl Skeleton {
    pub fn new() -> Skeleton {
        Skeleton {
            nodes: vec![SkelNode {
                parent: NEVER,
                ..SkelNode::default()
            }],
            checks: Vec::new(),
        }
    }

    /// The leaf for `path`, created on first use. Errors when a path is used both as a value
    /// and as an object with attributes below it.
    pub fn leaf(&mut self, schema: &ClassSchema, path: &[&'static str]) -> Result<u32, String> {
        let mut cur = 0u32;
        for (i, seg) in path.iter().enumerate() {
            let last = i + 1 == path.len();
            let existing = self.nodes[cur as usize]
                .children
                .iter()
                .copied()
                .find(|&c| self.nodes[c as usize].key == *seg);
            cur = match existing {
                Some(c) => {
                    let n = &self.nodes[c as usize];
                    if n.leaf != last {
                        return Err(format!(
                            "`{}` is assigned both as a value and through its attributes",
                            path[..=i].join(".")
                        ));
                    }
                    c
                }
                None => {
                    let parent_schema = self.nodes[cur as usize].schema;
                    let schema_id = schema.child(parent_schema, seg).ok_or_else(|| {
                        format!("`{}` is not an OCSF attribute here", path[..=i].join("."))
                    })?;
                    let id = self.nodes.len() as u32;
                    let mut kj = Vec::new();
                    json::write_str(&mut kj, seg);
                    kj.push(b':');
                    let key_json: &'static str =
                        Box::leak(String::from_utf8_lossy(&kj).into_owned().into_boxed_str());
                    self.nodes.push(SkelNode {
                        key: seg,
                        key_json,
                        parent: cur,
                        leaf: last,
                        schema: schema_id,
                        ..SkelNode::default()
                    });
                    self.nodes[cur as usize].children.push(id);
                    id
                }
            };
        }
        Ok(cur)
    }

    /// Resolves the OCSF requirements of every object node against the slots that exist.
    /// Drops the requirements that nodes present in every event (`always`) meet, and the
    /// checks left with nothing to check: `validate` then only looks at what can fail.
    pub fn prune_guaranteed(&mut self, always: &[u32]) {
        let mut sure = vec![false; self.nodes.len()];
        for &id in always {
            sure[id as usize] = true;
        }
        for n in &mut self.nodes {
            n.required.retain(|&(_, c)| c == NEVER || !sure[c as usize]);
            if n.any_of
                .iter()
                .any(|alt| alt.iter().all(|&c| c != NEVER && sure[c as usize]))
            {
                n.any_of.clear();
            }
        }
        let nodes = &self.nodes;
        self.checks.retain(|&id| {
            let n = &nodes[id as usize];
            n.leaf || !n.required.is_empty() || !n.any_of.is_empty() || !n.one_of.is_empty()
        });
    }

    pub fn finish(&mut self, schema: &ClassSchema) {
        for id in 0..self.nodes.len() {
            if self.nodes[id].leaf {
                continue;
            }
            let (req, any, one) = schema.requirements(self.nodes[id].schema);
            let child = |name: &str| {
                self.nodes[id]
                    .children
                    .iter()
                    .copied()
                    .find(|&c| self.nodes[c as usize].key == name)
                    .unwrap_or(NEVER)
            };
            let required: Vec<(&'static str, u32)> = req
                .iter()
                .map(|r| (&*Box::leak(r.clone().into_boxed_str()), child(r)))
                .collect();
            let alts = |alts: &[Vec<String>]| -> Vec<Vec<u32>> {
                alts.iter()
                    .map(|a| a.iter().map(|r| child(r)).collect())
                    .collect()
            };
            let text = |alts: &[Vec<String>]| -> String {
                alts.iter()
                    .map(|a| a.join("+"))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            let (any_of, one_of) = (alts(any), alts(one));
            let (any_of_text, one_of_text) = (text(any), text(one));
            let n = &mut self.nodes[id];
            n.required = required;
            n.any_of = any_of;
            n.one_of = one_of;
            n.any_of_text = any_of_text;
            n.one_of_text = one_of_text;
        }
        self.checks = (0..self.nodes.len() as u32)
            .filter(|&id| {
                let n = &self.nodes[id as usize];
                if n.leaf {
                    n.check
                } else {
                    !n.required.is_empty() || !n.any_of.is_empty() || !n.one_of.is_empty()
                }
            })
            .collect();
    }

    /// The dotted path of a node, for messages.
    pub fn path(&self, mut id: u32) -> String {
        let mut segs = Vec::new();
        while id != 0 && id != NEVER {
            let n = &self.nodes[id as usize];
            segs.push(n.key);
            id = n.parent;
        }
        segs.reverse();
        if segs.is_empty() {
            "<event>".to_string()
        } else {
            segs.join(".")
        }
    }
}

impl Default for Skeleton {
    fn default() -> Self {
        Skeleton::new()
    }
}

/// The values of one event under construction.
pub struct Slots<'t, 'i> {
    pub vals: Vec<Option<Out<'t, 'i>>>,
    pub present: Vec<bool>,
    /// The slots `put` filled, so that only they are emptied after the event.
    pub written: Vec<u32>,
    /// The event's leading root members already encoded (the class and activity header, the
    /// same for every event of a class and activity), and how many root children they cover;
    /// those slots are present but hold no value.
    pub prefix: (&'static str, usize),
}

impl<'t, 'i> Slots<'t, 'i> {
    pub fn has(&self, slot: u32) -> bool {
        self.vals[slot as usize].is_some()
    }

    pub fn get(&self, slot: u32) -> Option<&Out<'t, 'i>> {
        self.vals.get(slot as usize).and_then(Option::as_ref)
    }

    /// The value is stored here, in the caller, after the out-of-line bookkeeping. Passed on
    /// to an out-of-line `put`, it was written to the stack in 8-byte pieces and read straight
    /// back in 16-byte ones, a store-forwarding stall on every field (`put` was ~6% of a
    /// CloudTrail replay's cycles; this order gained ~1.6%). The call in between is what hides
    /// the stall: storing first and booking after (or inlining the booking) brought it back.
    #[inline(always)]
    pub fn put(&mut self, skel: &Skeleton, slot: u32, v: Out<'t, 'i>) {
        self.mark(skel, slot);
        self.vals[slot as usize] = Some(v);
    }

    /// Books `slot` as written and its ancestors as present.
    #[inline(never)]
    fn mark(&mut self, skel: &Skeleton, slot: u32) {
        if self.vals[slot as usize].is_none() {
            self.written.push(slot);
        }
        let mut id = slot;
        while id != NEVER && !self.present[id as usize] {
            self.present[id as usize] = true;
            id = skel.nodes[id as usize].parent;
        }
    }

    /// Checks the OCSF requirements of every present object and the flagged leaves.
    pub fn validate(&self, skel: &Skeleton, schema: &ClassSchema) -> Option<Violation> {
        let has = |c: u32| c != NEVER && self.present[c as usize];
        // Only nodes with something to check; the others would pass.
        for &id in &skel.checks {
            let (id, n) = (id as usize, &skel.nodes[id as usize]);
            if !self.present[id] && id != 0 {
                continue;
            }
            if n.leaf {
                if n.check {
                    if let Some(v) = &self.vals[id] {
                        if let Some(mut e) = schema.check_at(n.schema, v, "") {
                            // The path is built only for the rare failure.
                            let at = skel.path(id as u32);
                            e.path = if e.path == "<event>" {
                                at
                            } else {
                                format!("{at}.{}", e.path)
                            };
                            return Some(e);
                        }
                    }
                }
                continue;
            }
            let fail = |reason: String| {
                Some(Violation {
                    path: skel.path(id as u32),
                    reason,
                })
            };
            if let Some((name, _)) = n.required.iter().find(|(_, c)| !has(*c)) {
                return fail(format!("required attribute `{name}` is missing"));
            }
            if !n.any_of.is_empty() && !n.any_of.iter().any(|alt| alt.iter().all(|&c| has(c))) {
                return fail(format!("needs at least one of: {}", n.any_of_text));
            }
            if !n.one_of.is_empty()
                && n.one_of
                    .iter()
                    .filter(|alt| alt.iter().all(|&c| has(c)))
                    .count()
                    != 1
            {
                return fail(format!("needs exactly one of: {}", n.one_of_text));
            }
        }
        None
    }

    /// Writes the event as one JSON object.
    pub fn encode(&self, skel: &Skeleton, out: &mut Vec<u8>, red: Option<&mut Redact<'_>>) {
        self.encode_watching(skel, out, red, NEVER);
    }

    /// `encode`, also reporting where the absent leaf `spot` would have been written: (offset
    /// in `out`, whether it would have been its object's first member). The engine splices
    /// `metadata.labels` in there when redaction fired, instead of encoding again.
    pub fn encode_watching(
        &self,
        skel: &Skeleton,
        out: &mut Vec<u8>,
        mut red: Option<&mut Redact<'_>>,
        spot: u32,
    ) -> Option<(usize, bool)> {
        let mut found = None;
        self.encode_node(skel, 0, out, &mut red, spot, &mut found);
        found
    }

    fn encode_node(
        &self,
        skel: &Skeleton,
        id: u32,
        out: &mut Vec<u8>,
        red: &mut Option<&mut Redact<'_>>,
        spot: u32,
        found: &mut Option<(usize, bool)>,
    ) {
        out.push(b'{');
        let mut first = true;
        let mut children = skel.nodes[id as usize].children.as_slice();
        if id == 0 && self.prefix.1 > 0 {
            out.extend_from_slice(self.prefix.0.as_bytes());
            first = false;
            children = &children[self.prefix.1..];
        }
        for &c in children {
            if !self.present[c as usize] {
                if c == spot {
                    *found = Some((out.len(), first));
                }
                continue;
            }
            if !first {
                out.push(b',');
            }
            first = false;
            let n = &skel.nodes[c as usize];
            json::push_bytes(out, n.key_json.as_bytes());
            if n.leaf {
                if let Some(v) = &self.vals[c as usize] {
                    if n.plain || red.is_none() {
                        // What `Out::encode` writes, without its dispatch for the common leaf.
                        match v {
                            Out::Raw(src) if src.as_str().is_some() => {
                                json::write_str(out, src.as_str().unwrap_or_default())
                            }
                            _ => v.encode(out),
                        }
                    } else {
                        v.encode_redacted(out, red.as_deref_mut());
                    }
                } else if let Some(json) = n.fixed {
                    out.extend_from_slice(json.as_bytes());
                }
            } else {
                self.encode_node(skel, c, out, red, spot, found);
            }
        }
        out.push(b'}');
    }
}
