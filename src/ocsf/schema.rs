//! A compiled OCSF class schema, and the validator that checks every event before it leaves.
//!
//! The exported schemas use a small subset of JSON Schema (type, properties,
//! additionalProperties, required, anyOf/oneOf of `required`, enum, const, pattern, items,
//! minimum/maximum, maxLength, $ref into $defs). Compiling that subset into an arena lets us
//! check each event in well under a microsecond; `cargo test` cross-checks the verdicts with the
//! `jsonschema` crate on every golden event.

use crate::event::Out;
use crate::json::Src;
use regex::Regex;
use rustc_hash::FxHashMap as HashMap;
use std::collections::HashMap as StdHashMap;

const T_STRING: u8 = 1;
const T_INTEGER: u8 = 2;
const T_NUMBER: u8 = 4;
const T_BOOLEAN: u8 = 8;
const T_OBJECT: u8 = 16;
const T_ARRAY: u8 = 32;
const T_NULL: u8 = 64;

#[derive(Debug, Default)]
struct SNode {
    /// Allowed JSON types; 0 means anything.
    types: u8,
    props: HashMap<String, usize>,
    additional: bool,
    required: Vec<String>,
    any_of: Vec<Vec<String>>,
    one_of: Vec<Vec<String>>,
    enum_i: Option<Vec<i64>>,
    enum_s: Option<Vec<String>>,
    pattern: Option<Regex>,
    /// The pattern is the OCSF ip_t one: accept what std parses before running the regex.
    ip_pattern: bool,
    items: Option<usize>,
    minimum: Option<f64>,
    maximum: Option<f64>,
    max_len: Option<usize>,
}

/// What a table may assign to a resolved path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LeafKind {
    String,
    Integer,
    Number,
    Boolean,
    /// An OCSF object: assign its fields one by one, or a free-form (`object_t`) value.
    Object {
        free_form: bool,
    },
    /// An array; arrays of objects are filled with `each`.
    Array,
    /// `json_t`: any JSON value is allowed (e.g. `api.request.data`).
    Any,
}

#[derive(Debug)]
pub struct ClassSchema {
    nodes: Vec<SNode>,
    class_name: String,
}

#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    #[error("schema of {class}: {detail}; re-export it with scripts/export-ocsf-schemas.py")]
    Malformed { class: String, detail: String },
}

/// Why an event is not valid, with the JSON path of the failing field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub path: String,
    pub reason: String,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.path, self.reason)
    }
}

struct Compiler<'a> {
    defs: &'a serde_json::Map<String, serde_json::Value>,
    /// The same patterns (ip_t, email_t) appear inline hundreds of times: compile each once.
    regexes: StdHashMap<String, Regex>,
    nodes: Vec<SNode>,
    by_def: StdHashMap<String, usize>,
    class: String,
}

impl Compiler<'_> {
    fn err(&self, detail: String) -> SchemaError {
        SchemaError::Malformed {
            class: self.class.clone(),
            detail,
        }
    }

    fn compile(&mut self, v: &serde_json::Value) -> Result<usize, SchemaError> {
        if let Some(r) = v.get("$ref").and_then(|r| r.as_str()) {
            let name = r
                .strip_prefix("#/$defs/")
                .ok_or_else(|| self.err(format!("unsupported $ref {r}")))?;
            if let Some(&id) = self.by_def.get(name) {
                return Ok(id);
            }
            let def = self
                .defs
                .get(name)
                .ok_or_else(|| self.err(format!("missing $defs/{name}")))?;
            let id = self.nodes.len();
            self.nodes.push(SNode::default());
            self.by_def.insert(name.to_string(), id);
            let node = self.build(def)?;
            self.nodes[id] = node;
            return Ok(id);
        }
        let node = self.build(v)?;
        self.nodes.push(node);
        Ok(self.nodes.len() - 1)
    }

    fn build(&mut self, v: &serde_json::Value) -> Result<SNode, SchemaError> {
        let mut n = SNode {
            additional: true,
            ..SNode::default()
        };
        let type_bit = |t: &str| match t {
            "string" => T_STRING,
            "integer" => T_INTEGER,
            "number" => T_NUMBER | T_INTEGER,
            "boolean" => T_BOOLEAN,
            "object" => T_OBJECT,
            "array" => T_ARRAY,
            "null" => T_NULL,
            _ => 0,
        };
        match v.get("type") {
            Some(serde_json::Value::String(t)) => n.types = type_bit(t),
            Some(serde_json::Value::Array(ts)) => {
                for t in ts.iter().filter_map(|t| t.as_str()) {
                    n.types |= type_bit(t);
                }
                if n.types
                    == T_STRING | T_INTEGER | T_NUMBER | T_BOOLEAN | T_OBJECT | T_ARRAY | T_NULL
                {
                    n.types = 0;
                }
            }
            _ => {}
        }
        if let Some(props) = v.get("properties").and_then(|p| p.as_object()) {
            for (k, pv) in props {
                let id = self.compile(pv)?;
                n.props.insert(k.clone(), id);
            }
        }
        if let Some(serde_json::Value::Bool(b)) = v.get("additionalProperties") {
            n.additional = *b;
        }
        let names = |x: &serde_json::Value| -> Vec<String> {
            x.as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|s| s.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default()
        };
        if let Some(r) = v.get("required") {
            n.required = names(r);
        }
        for (key, slot) in [("anyOf", &mut n.any_of), ("oneOf", &mut n.one_of)] {
            if let Some(alts) = v.get(key).and_then(|a| a.as_array()) {
                for alt in alts {
                    let req = alt
                        .get("required")
                        .ok_or_else(|| self.err(format!("{key} alternative without required")))?;
                    slot.push(names(req));
                }
            }
        }
        let en = v.get("enum").or_else(|| v.get("const"));
        if let Some(e) = en {
            let list: Vec<serde_json::Value> = match e {
                serde_json::Value::Array(a) if v.get("enum").is_some() => a.clone(),
                other => vec![other.clone()],
            };
            if list.iter().all(|x| x.is_i64()) {
                n.enum_i = Some(list.iter().filter_map(|x| x.as_i64()).collect());
            } else {
                n.enum_s = Some(
                    list.iter()
                        .filter_map(|x| x.as_str().map(str::to_string))
                        .collect(),
                );
            }
        }
        if let Some(p) = v.get("pattern").and_then(|p| p.as_str()) {
            // JSON Schema patterns are unanchored ECMA-262; the OCSF ones are regex-crate safe.
            let re = match self.regexes.get(p) {
                Some(r) => r.clone(),
                None => {
                    let r = shared_regex(p).map_err(|e| self.err(format!("pattern {p:?}: {e}")))?;
                    self.regexes.insert(p.to_string(), r.clone());
                    r
                }
            };
            n.pattern = Some(re);
            n.ip_pattern = p.contains("25[0-5]") && p.contains("[0-9A-Fa-f]{1,4}");
        }
        if let Some(items) = v.get("items") {
            n.items = Some(self.compile(items)?);
        }
        n.minimum = v.get("minimum").and_then(|x| x.as_f64());
        n.maximum = v.get("maximum").and_then(|x| x.as_f64());
        n.max_len = v
            .get("maxLength")
            .and_then(|x| x.as_u64())
            .map(|x| x as usize);
        Ok(n)
    }
}

impl ClassSchema {
    pub fn compile(class_name: &str, json: &str) -> Result<ClassSchema, SchemaError> {
        let v: serde_json::Value =
            serde_json::from_str(json).map_err(|e| SchemaError::Malformed {
                class: class_name.to_string(),
                detail: e.to_string(),
            })?;
        let empty = serde_json::Map::new();
        let defs = v.get("$defs").and_then(|d| d.as_object()).unwrap_or(&empty);
        let mut c = Compiler {
            defs,
            nodes: Vec::new(),
            by_def: StdHashMap::new(),
            regexes: StdHashMap::new(),
            class: class_name.to_string(),
        };
        let root = c.compile(&v)?;
        debug_assert_eq!(root, c.nodes.len() - 1);
        let mut nodes = c.nodes;
        // Keep the root at index 0 so that paths resolve from a fixed place.
        let last = nodes.len() - 1;
        nodes.swap(0, last);
        let fix = |id: usize| {
            if id == 0 {
                last
            } else if id == last {
                0
            } else {
                id
            }
        };
        for n in &mut nodes {
            for id in n.props.values_mut() {
                *id = fix(*id);
            }
            if let Some(i) = n.items.as_mut() {
                *i = fix(*i);
            }
        }
        Ok(ClassSchema {
            nodes,
            class_name: class_name.to_string(),
        })
    }

    pub fn class_name(&self) -> &str {
        &self.class_name
    }

    /// Resolves a dotted OCSF path (arrays are stepped through transparently) to what may be
    /// assigned there. The error says which segment is unknown and what exists instead.
    pub fn resolve(&self, path: &str) -> Result<LeafKind, String> {
        Ok(match self.node_of(path)? {
            Some(id) => self.kind_of(id),
            None => LeafKind::Any,
        })
    }

    /// What the elements of the array at `path` may hold.
    pub fn resolve_items(&self, path: &str) -> Result<LeafKind, String> {
        match self.node_of(path)? {
            Some(id) => match self.nodes[id].items {
                Some(items) => Ok(self.kind_of(items)),
                None => Err(format!("`{path}` is not an array in {}", self.class_name)),
            },
            None => Ok(LeafKind::Any),
        }
    }

    /// The schema node of attribute `seg` under node `id` (arrays stepped through).
    pub fn child(&self, id: usize, seg: &str) -> Option<usize> {
        let mut n = &self.nodes[id];
        if let Some(items) = n.items {
            n = &self.nodes[items];
        }
        n.props.get(seg).copied()
    }

    /// The object constraints of a node: required names, anyOf and oneOf alternatives.
    pub fn requirements(&self, id: usize) -> (&[String], &[Vec<String>], &[Vec<String>]) {
        let n = &self.nodes[id];
        (&n.required, &n.any_of, &n.one_of)
    }

    /// True when a value of the engine's coerced type could still be invalid here (enums,
    /// patterns, bounds, nested structure): only such leaves are checked per event.
    pub fn needs_check(&self, id: usize) -> bool {
        let n = &self.nodes[id];
        n.enum_i.is_some()
            || n.enum_s.is_some()
            || n.pattern.is_some()
            || n.max_len.is_some()
            || n.minimum.is_some()
            || n.maximum.is_some()
            || !n.props.is_empty()
            || n.items.is_some()
    }

    /// Checks a value at a schema node; `path` names it in the violation.
    pub fn check_at(&self, id: usize, v: &Out<'_, '_>, path: &str) -> Option<Violation> {
        self.check_out(id, v, &At::Top(path)).err()
    }

    /// The schema node at `path`; None inside a free-form object.
    pub fn node_of(&self, path: &str) -> Result<Option<usize>, String> {
        let mut id = 0usize;
        for seg in path.split('.') {
            let mut n = &self.nodes[id];
            if let Some(items) = n.items {
                id = items;
                n = &self.nodes[id];
            }
            match n.props.get(seg) {
                Some(&next) => id = next,
                None if n.additional && n.types & T_OBJECT != 0 && n.props.is_empty() => {
                    return Ok(None);
                }
                None => {
                    let mut known: Vec<&str> = n.props.keys().map(String::as_str).collect();
                    known.sort_unstable();
                    return Err(format!(
                        "`{seg}` is not an attribute of {} at `{path}` (known: {})",
                        self.class_name,
                        known.join(", ")
                    ));
                }
            }
        }
        Ok(Some(id))
    }

    fn kind_of(&self, id: usize) -> LeafKind {
        let n = &self.nodes[id];
        match n.types {
            0 => LeafKind::Any,
            T_STRING => LeafKind::String,
            T_INTEGER => LeafKind::Integer,
            t if t == T_NUMBER | T_INTEGER => LeafKind::Number,
            T_BOOLEAN => LeafKind::Boolean,
            T_ARRAY => LeafKind::Array,
            T_OBJECT => LeafKind::Object {
                free_form: n.additional && n.props.is_empty(),
            },
            _ => LeafKind::Any,
        }
    }

    /// Checks an event tree. `None` when valid.
    pub fn validate(&self, ev: &Out<'_, '_>) -> Option<Violation> {
        self.check_out(0, ev, &At::Top("")).err()
    }

    fn fail(at: &At<'_>, reason: String) -> Result<(), Violation> {
        let path = at.render();
        Err(Violation {
            path: if path.is_empty() {
                "<event>".to_string()
            } else {
                path
            },
            reason,
        })
    }

    fn check_required(
        &self,
        n: &SNode,
        has: impl Fn(&str) -> bool,
        path: &At<'_>,
    ) -> Result<(), Violation> {
        for r in &n.required {
            if !has(r) {
                return Self::fail(path, format!("required attribute `{r}` is missing"));
            }
        }
        if !n.any_of.is_empty() && !n.any_of.iter().any(|alt| alt.iter().all(|r| has(r))) {
            let alts: Vec<String> = n.any_of.iter().map(|a| a.join("+")).collect();
            return Self::fail(path, format!("needs at least one of: {}", alts.join(", ")));
        }
        if !n.one_of.is_empty()
            && n.one_of
                .iter()
                .filter(|alt| alt.iter().all(|r| has(r)))
                .count()
                != 1
        {
            let alts: Vec<String> = n.one_of.iter().map(|a| a.join("+")).collect();
            return Self::fail(path, format!("needs exactly one of: {}", alts.join(", ")));
        }
        Ok(())
    }

    fn check_out(&self, id: usize, v: &Out<'_, '_>, path: &At<'_>) -> Result<(), Violation> {
        let n = &self.nodes[id];
        match v {
            Out::Raw(src) => self.check_src(id, *src, path),
            Out::Json(_) => Ok(()),
            Out::Str(s) => self.check_str(n, s, path),
            Out::Int(i) => self.check_int(n, *i, path),
            Out::Bool(_) => {
                if n.types != 0 && n.types & T_BOOLEAN == 0 {
                    return Self::fail(
                        path,
                        format!("expected {}, got boolean", type_list(n.types)),
                    );
                }
                Ok(())
            }
            Out::Arr(items) => {
                if n.types != 0 && n.types & T_ARRAY == 0 {
                    return Self::fail(path, format!("expected {}, got array", type_list(n.types)));
                }
                if let Some(it) = n.items {
                    for (i, x) in items.iter().enumerate() {
                        self.check_out(it, x, &At::Index(path, i))?;
                    }
                }
                Ok(())
            }
            Out::Obj(members) => {
                if n.types != 0 && n.types & T_OBJECT == 0 {
                    return Self::fail(
                        path,
                        format!("expected {}, got object", type_list(n.types)),
                    );
                }
                self.check_required(n, |k| members.iter().any(|(mk, _)| *mk == k), path)?;
                for (k, x) in members {
                    let at = At::Key(path, k);
                    match n.props.get(*k) {
                        Some(&c) => self.check_out(c, x, &at)?,
                        None if n.additional => {}
                        None => {
                            return Self::fail(&at, "not an attribute of this OCSF object".into())
                        }
                    }
                }
                Ok(())
            }
        }
    }

    fn check_str(&self, n: &SNode, s: &str, path: &At<'_>) -> Result<(), Violation> {
        if n.types != 0 && n.types & T_STRING == 0 {
            return Self::fail(path, format!("expected {}, got string", type_list(n.types)));
        }
        if let Some(max) = n.max_len {
            if s.chars().count() > max {
                return Self::fail(path, format!("longer than {max} characters"));
            }
        }
        if let Some(e) = &n.enum_s {
            if !e.iter().any(|x| x == s) {
                return Self::fail(path, format!("{s:?} is not one of {e:?}"));
            }
        }
        if let Some(re) = &n.pattern {
            let std_ok = n.ip_pattern && s.parse::<std::net::IpAddr>().is_ok();
            if !std_ok && !re.is_match(s) {
                return Self::fail(path, format!("{s:?} does not match the attribute's format"));
            }
        }
        Ok(())
    }

    fn check_int(&self, n: &SNode, i: i64, path: &At<'_>) -> Result<(), Violation> {
        if n.types != 0 && n.types & T_INTEGER == 0 {
            return Self::fail(
                path,
                format!("expected {}, got integer", type_list(n.types)),
            );
        }
        if let Some(e) = &n.enum_i {
            if !e.contains(&i) {
                return Self::fail(path, format!("{i} is not one of {e:?}"));
            }
        }
        if n.minimum.is_some_and(|m| (i as f64) < m) || n.maximum.is_some_and(|m| (i as f64) > m) {
            return Self::fail(path, format!("{i} is out of range"));
        }
        Ok(())
    }

    fn check_src(&self, id: usize, v: Src<'_, '_>, path: &At<'_>) -> Result<(), Violation> {
        let n = &self.nodes[id];
        if n.types == 0 && n.props.is_empty() && n.items.is_none() {
            return Ok(());
        }
        if let Some(s) = v.as_str() {
            return self.check_str(n, s, path);
        }
        if let Some(b) = v.as_static() {
            use simd_json::StaticNode as S;
            return match b {
                S::Null => Ok(()), // nulls are dropped on output
                S::Bool(_) => self.check_out(id, &Out::Bool(true), path),
                S::I64(i) => self.check_int(n, i, path),
                S::U64(u) => self.check_int(n, i64::try_from(u).unwrap_or(i64::MAX), path),
                S::F64(_) => {
                    if n.types != 0 && n.types & T_NUMBER == 0 {
                        return Self::fail(
                            path,
                            format!("expected {}, got number", type_list(n.types)),
                        );
                    }
                    Ok(())
                }
            };
        }
        if v.is_array() {
            if n.types != 0 && n.types & T_ARRAY == 0 {
                return Self::fail(path, format!("expected {}, got array", type_list(n.types)));
            }
            if let Some(it) = n.items {
                for (i, x) in v.elements().enumerate() {
                    if x.is_null() {
                        continue;
                    }
                    self.check_src(it, x, &At::Index(path, i))?;
                }
            }
            return Ok(());
        }
        if n.types != 0 && n.types & T_OBJECT == 0 {
            return Self::fail(path, format!("expected {}, got object", type_list(n.types)));
        }
        self.check_required(n, |k| v.get(k).is_some_and(|x| !x.is_null()), path)?;
        for (k, x) in v.members() {
            if x.is_null() {
                continue;
            }
            let at = At::Key(path, k);
            match n.props.get(k) {
                Some(&c) => self.check_src(c, x, &at)?,
                None if n.additional => {}
                None => return Self::fail(&at, "not an attribute of this OCSF object".into()),
            }
        }
        Ok(())
    }
}

/// Where a checked value sits: a chain of segments on the stack, rendered as a dotted path only
/// when a check fails (building the path for every value checked cost more than the checks).
#[derive(Clone, Copy)]
enum At<'a> {
    Top(&'a str),
    Key(&'a At<'a>, &'a str),
    Index(&'a At<'a>, usize),
}

impl At<'_> {
    fn render(&self) -> String {
        let join = |parent: &At<'_>, seg: &str| {
            let mut p = parent.render();
            if !p.is_empty() {
                p.push('.');
            }
            p.push_str(seg);
            p
        };
        match self {
            At::Top(p) => p.to_string(),
            At::Key(parent, k) => join(parent, k),
            At::Index(parent, i) => join(parent, &i.to_string()),
        }
    }
}

/// Patterns are shared by every class schema: compile each once per process.
fn shared_regex(p: &str) -> Result<Regex, regex::Error> {
    use std::sync::{Mutex, OnceLock};
    static CACHE: OnceLock<Mutex<StdHashMap<String, Regex>>> = OnceLock::new();
    let mut cache = CACHE
        .get_or_init(|| Mutex::new(StdHashMap::new()))
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    if let Some(r) = cache.get(p) {
        return Ok(r.clone());
    }
    let r = Regex::new(p)?;
    cache.insert(p.to_string(), r.clone());
    Ok(r)
}

fn type_list(t: u8) -> String {
    let names = [
        (T_STRING, "string"),
        (T_INTEGER, "integer"),
        (T_NUMBER, "number"),
        (T_BOOLEAN, "boolean"),
        (T_OBJECT, "object"),
        (T_ARRAY, "array"),
        (T_NULL, "null"),
    ];
    let v: Vec<&str> = names
        .iter()
        .filter(|(b, _)| t & b != 0)
        .map(|(_, n)| *n)
        .collect();
    v.join("|")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::borrow::Cow;

    /// Violation paths are rendered only on failure now; they must still name the value.
    #[test]
    fn violations_name_the_path_of_the_failing_value() {
        let schema = ClassSchema::compile(
            "Test",
            r#"{"type":"object","required":["class_uid"],"additionalProperties":false,
                "properties":{
                  "class_uid":{"type":"integer","enum":[1]},
                  "resources":{"type":"array","items":{"type":"object","additionalProperties":false,
                    "properties":{"type":{"type":"string","enum":["a","b"]}}}}}}"#,
        )
        .expect("schema compiles");
        let s = |x: &'static str| Out::Str(Cow::Borrowed(x));
        let res = |t: &'static str| Out::Obj(vec![("type", s(t))]);
        let event = |resources: Vec<Out<'static, 'static>>| {
            Out::Obj(vec![
                ("class_uid", Out::Int(1)),
                ("resources", Out::Arr(resources)),
            ])
        };
        assert!(schema.validate(&event(vec![res("a"), res("b")])).is_none());
        let v = schema
            .validate(&event(vec![res("a"), res("zzz")]))
            .expect("bad enum value");
        assert_eq!(v.path, "resources.1.type");
        let v = schema
            .validate(&event(vec![Out::Obj(vec![("name", s("x"))])]))
            .expect("unknown attribute");
        assert_eq!(v.path, "resources.0.name");
        let v = schema
            .validate(&Out::Obj(vec![("resources", Out::Arr(vec![]))]))
            .expect("missing class_uid");
        assert_eq!(v.path, "<event>");
        let id = schema.node_of("resources").unwrap().unwrap();
        let v = schema
            .check_at(id, &Out::Arr(vec![res("a"), res("c")]), "resources")
            .expect("bad enum value");
        assert_eq!(v.path, "resources.1.type");
    }
}
