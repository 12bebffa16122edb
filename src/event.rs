//! The OCSF event under construction, and its encoding to one JSON line.
//!
//! An event is a small tree whose leaves mostly borrow from the parsed record (`Raw`, borrowed
//! strings), so building it costs a few vector pushes and encoding copies straight from the
//! input buffer.

use crate::json::{self, Src};
use std::borrow::Cow;

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
}
