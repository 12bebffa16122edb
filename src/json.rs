//! A read-only view over a simd-json tape, and the JSON writer every output goes through.
//!
//! Records are parsed once, in place, into a flat tape; the mapping engine reads that tape and
//! the encoder copies strings straight from it. No owned tree is built on the hot path.

use simd_json::{Node, StaticNode};

/// One value on a parsed tape: the node and everything nested below it.
#[derive(Clone, Copy, Debug)]
pub struct Src<'t, 'i>(&'t [Node<'i>]);

impl<'t, 'i> Src<'t, 'i> {
    /// The whole document of a parsed tape.
    pub fn root(tape: &'t simd_json::Tape<'i>) -> Self {
        Src(&tape.0)
    }

    fn head(&self) -> Node<'i> {
        self.0[0]
    }

    /// Number of tape nodes this value spans (1 for scalars).
    fn span(&self) -> usize {
        match self.head() {
            Node::Object { count, .. } | Node::Array { count, .. } => count + 1,
            _ => 1,
        }
    }

    pub fn as_str(&self) -> Option<&'i str> {
        match self.head() {
            Node::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn is_null(&self) -> bool {
        matches!(self.head(), Node::Static(StaticNode::Null))
    }

    pub fn is_object(&self) -> bool {
        matches!(self.head(), Node::Object { .. })
    }

    pub fn is_array(&self) -> bool {
        matches!(self.head(), Node::Array { .. })
    }

    pub fn as_static(&self) -> Option<StaticNode> {
        match self.head() {
            Node::Static(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_i64(&self) -> Option<i64> {
        match self.head() {
            Node::Static(StaticNode::I64(v)) => Some(v),
            Node::Static(StaticNode::U64(v)) => i64::try_from(v).ok(),
            Node::Static(StaticNode::F64(v)) if v.fract() == 0.0 && v.abs() < 9.0e15 => {
                Some(v as i64)
            }
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match self.head() {
            Node::Static(StaticNode::Bool(b)) => Some(b),
            _ => None,
        }
    }

    /// A short name of the JSON type, for error messages.
    pub fn type_name(&self) -> &'static str {
        match self.head() {
            Node::String(_) => "string",
            Node::Object { .. } => "object",
            Node::Array { .. } => "array",
            Node::Static(StaticNode::Null) => "null",
            Node::Static(StaticNode::Bool(_)) => "boolean",
            Node::Static(_) => "number",
        }
    }

    /// Where this value sits inside `base` (which must contain it), as tape indexes; lets a
    /// per-record memo store positions instead of borrowed slices.
    pub fn offset_in(&self, base: Src<'t, 'i>) -> (u32, u32) {
        let size = std::mem::size_of::<Node<'i>>();
        let start = (self.0.as_ptr() as usize - base.0.as_ptr() as usize) / size;
        (start as u32, self.0.len() as u32)
    }

    /// The value at tape indexes produced by `offset_in` on the same base.
    pub fn at(&self, start: u32, len: u32) -> Src<'t, 'i> {
        Src(&self.0[start as usize..(start + len) as usize])
    }

    /// The type name with its article, for messages: "an object", "a string".
    pub fn type_phrase(&self) -> &'static str {
        match self.type_name() {
            "string" => "a string",
            "object" => "an object",
            "array" => "an array",
            "null" => "null",
            "boolean" => "a boolean",
            _ => "a number",
        }
    }

    /// Object members in document order; empty for non-objects.
    pub fn members(&self) -> Members<'t, 'i> {
        match self.head() {
            Node::Object { len, .. } => Members {
                rest: &self.0[1..],
                left: len,
            },
            _ => Members { rest: &[], left: 0 },
        }
    }

    /// Array elements in order; empty for non-arrays.
    pub fn elements(&self) -> Elements<'t, 'i> {
        match self.head() {
            Node::Array { len, .. } => Elements {
                rest: &self.0[1..],
                left: len,
            },
            _ => Elements { rest: &[], left: 0 },
        }
    }

    pub fn len(&self) -> usize {
        match self.head() {
            Node::Object { len, .. } | Node::Array { len, .. } => len,
            _ => 0,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Member of an object by key (first match, as JSON parsers do).
    pub fn get(&self, key: &str) -> Option<Src<'t, 'i>> {
        for (k, v) in self.members() {
            if key_eq(k, key) {
                return Some(v);
            }
        }
        None
    }

    /// True for null, and for empty objects and arrays: values that carry nothing to keep.
    pub fn is_void(&self) -> bool {
        match self.head() {
            Node::Static(StaticNode::Null) => true,
            Node::Object { len, .. } | Node::Array { len, .. } => len == 0,
            _ => false,
        }
    }
}

pub struct Members<'t, 'i> {
    rest: &'t [Node<'i>],
    left: usize,
}

impl<'t, 'i> Iterator for Members<'t, 'i> {
    type Item = (&'i str, Src<'t, 'i>);
    fn next(&mut self) -> Option<Self::Item> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        let key = match self.rest[0] {
            Node::String(s) => s,
            // simd-json only ever writes string keys; an empty key keeps us safe regardless.
            _ => "",
        };
        let value = Src(&self.rest[1..]);
        let span = value.span();
        let v = Src(&self.rest[1..1 + span]);
        self.rest = &self.rest[1 + span..];
        Some((key, v))
    }
}

pub struct Elements<'t, 'i> {
    rest: &'t [Node<'i>],
    left: usize,
}

impl<'t, 'i> Iterator for Elements<'t, 'i> {
    type Item = Src<'t, 'i>;
    fn next(&mut self) -> Option<Self::Item> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        let span = Src(self.rest).span();
        let v = Src(&self.rest[..span]);
        self.rest = &self.rest[span..];
        Some(v)
    }
}

/// Key equality without a `memcmp` call for keys of up to 16 bytes (most JSON keys): two
/// overlapping word compares.
#[inline(always)]
pub fn key_eq(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let n = a.len();
    if n != b.len() {
        return false;
    }
    let w8 = |x: &[u8], i: usize| {
        let mut w = [0u8; 8];
        w.copy_from_slice(&x[i..i + 8]);
        u64::from_le_bytes(w)
    };
    let w4 = |x: &[u8], i: usize| {
        let mut w = [0u8; 4];
        w.copy_from_slice(&x[i..i + 4]);
        u32::from_le_bytes(w)
    };
    match n {
        0..=3 => a == b,
        4..=7 => w4(a, 0) == w4(b, 0) && w4(a, n - 4) == w4(b, n - 4),
        8..=16 => w8(a, 0) == w8(b, 0) && w8(a, n - 8) == w8(b, n - 8),
        _ => w8(a, 0) == w8(b, 0) && a == b,
    }
}

/// Escaping table: 0 = copy, b'u' = \u00XX, anything else = two-byte escape.
const ESCAPE: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut i = 0;
    while i < 0x20 {
        t[i] = b'u';
        i += 1;
    }
    t[b'\n' as usize] = b'n';
    t[b'\r' as usize] = b'r';
    t[b'\t' as usize] = b't';
    t[0x08] = b'b';
    t[0x0c] = b'f';
    t[b'"' as usize] = b'"';
    t[b'\\' as usize] = b'\\';
    t
};

/// True when any byte of `w` is a control character, `"` or `\\` (the bytes JSON escapes).
#[inline]
fn needs_escape_8(w: u64) -> bool {
    const LO: u64 = 0x0101_0101_0101_0101;
    const HI: u64 = 0x8080_8080_8080_8080;
    let has_zero = |x: u64| x.wrapping_sub(LO) & !x & HI;
    let lt_0x20 = w.wrapping_sub(LO * 0x20) & !w & HI;
    lt_0x20 | has_zero(w ^ (LO * b'"' as u64)) | has_zero(w ^ (LO * b'\\' as u64)) != 0
}

/// True when `bytes` holds nothing JSON must escape, checked 8 bytes at a time (the tail is
/// padded with a harmless byte).
#[cfg_attr(target_arch = "x86_64", allow(dead_code))]
#[inline]
fn is_clean(bytes: &[u8]) -> bool {
    let mut chunks = bytes.chunks_exact(8);
    for c in &mut chunks {
        let mut w = [0u8; 8];
        w.copy_from_slice(c);
        if needs_escape_8(u64::from_le_bytes(w)) {
            return false;
        }
    }
    let rest = chunks.remainder();
    if rest.is_empty() {
        return true;
    }
    let mut w = [b'a'; 8];
    w[..rest.len()].copy_from_slice(rest);
    !needs_escape_8(u64::from_le_bytes(w))
}

/// Bit i set: byte i of `v` needs an escape in JSON (quote, backslash, control character).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn escape_mask(v: std::arch::x86_64::__m128i) -> u32 {
    use std::arch::x86_64::*;
    // SAFETY: SSE2 is part of every x86-64; these intrinsics only compute on registers.
    unsafe {
        let (quote, bs, ctl) = (
            _mm_set1_epi8(b'"' as i8),
            _mm_set1_epi8(b'\\' as i8),
            _mm_set1_epi8(0x1f),
        );
        _mm_movemask_epi8(_mm_or_si128(
            _mm_or_si128(_mm_cmpeq_epi8(v, quote), _mm_cmpeq_epi8(v, bs)),
            _mm_cmpeq_epi8(_mm_max_epu8(v, ctl), ctl),
        )) as u32
    }
}

/// The index of the first byte JSON must escape, 16 bytes at a time (SSE2 is part of x86-64).
#[cfg(target_arch = "x86_64")]
#[inline]
fn first_escape(bytes: &[u8]) -> Option<usize> {
    use std::arch::x86_64::*;
    let n = bytes.len();
    if n < 16 {
        // Keys and short values: two overlapping word checks, then the position if needed.
        let word = |i: usize| {
            let mut w = [0u8; 8];
            w.copy_from_slice(&bytes[i..i + 8]);
            u64::from_le_bytes(w)
        };
        let half = |i: usize| {
            let mut w = [0u8; 4];
            w.copy_from_slice(&bytes[i..i + 4]);
            u32::from_le_bytes(w) as u64
        };
        let dirty = if n >= 8 {
            needs_escape_8(word(0)) || needs_escape_8(word(n - 8))
        } else if n >= 4 {
            needs_escape_8(half(0) | (half(n - 4) << 32))
        } else {
            bytes.iter().any(|&b| ESCAPE[b as usize] != 0)
        };
        if !dirty {
            return None;
        }
        return bytes.iter().position(|&b| ESCAPE[b as usize] != 0);
    }
    let p = bytes.as_ptr();
    // SAFETY: SSE2 is always available on x86_64; every load reads 16 bytes inside `bytes`
    // (the last window overlaps the previous one instead of reading past the end).
    unsafe {
        let window = |i: usize| escape_mask(_mm_loadu_si128(p.add(i) as *const __m128i));
        let mut i = 0;
        while i + 16 <= n {
            let m = window(i);
            if m != 0 {
                return Some(i + m.trailing_zeros() as usize);
            }
            i += 16;
        }
        if i < n {
            let m = window(n - 16);
            if m != 0 {
                return Some(n - 16 + m.trailing_zeros() as usize);
            }
        }
    }
    None
}

#[cfg(not(target_arch = "x86_64"))]
#[inline]
fn first_escape(bytes: &[u8]) -> Option<usize> {
    if is_clean(bytes) {
        None
    } else {
        bytes.iter().position(|&b| ESCAPE[b as usize] != 0)
    }
}

/// Appends `b`; up to 16 bytes with two overlapping word copies instead of a `memcpy` call
/// (keys and short values are most of what is written).
#[inline]
pub fn push_bytes(out: &mut Vec<u8>, b: &[u8]) {
    let n = b.len();
    if n > 16 {
        out.extend_from_slice(b);
        return;
    }
    out.reserve(16);
    let len = out.len();
    // SAFETY: 16 bytes of spare capacity were reserved; the reads stay inside `b` (n >= 8,
    // resp. n >= 4, for the word reads), the writes inside [len, len + n), and those n bytes
    // are initialised before the length covers them.
    unsafe {
        let (src, dst) = (b.as_ptr(), out.as_mut_ptr().add(len));
        if n >= 8 {
            let (a, z) = (
                std::ptr::read_unaligned(src as *const u64),
                std::ptr::read_unaligned(src.add(n - 8) as *const u64),
            );
            std::ptr::write_unaligned(dst as *mut u64, a);
            std::ptr::write_unaligned(dst.add(n - 8) as *mut u64, z);
        } else if n >= 4 {
            let (a, z) = (
                std::ptr::read_unaligned(src as *const u32),
                std::ptr::read_unaligned(src.add(n - 4) as *const u32),
            );
            std::ptr::write_unaligned(dst as *mut u32, a);
            std::ptr::write_unaligned(dst.add(n - 4) as *mut u32, z);
        } else {
            for i in 0..n {
                *dst.add(i) = *src.add(i);
            }
        }
        out.set_len(len + n);
    }
}

/// The escape JSON writes for byte `c` (one `ESCAPE` marks): `\u00XX` or a two-byte escape,
/// in the first `n` bytes.
#[inline]
fn escape_seq(c: u8) -> ([u8; 6], usize) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    match ESCAPE[c as usize] {
        b'u' => (
            [
                b'\\',
                b'u',
                b'0',
                b'0',
                HEX[(c >> 4) as usize],
                HEX[(c & 0xf) as usize],
            ],
            6,
        ),
        esc => ([b'\\', esc, 0, 0, 0, 0], 2),
    }
}

/// Writes `s` as a JSON string literal: 16 bytes at a time copied speculatively into reserved
/// space and kept up to the first byte that needs an escape (SSE2 is part of x86-64).
#[cfg(target_arch = "x86_64")]
pub fn write_str(out: &mut Vec<u8>, s: &str) {
    use std::arch::x86_64::*;
    let b = s.as_bytes();
    let n = b.len();
    if n < 16 && first_escape(b).is_none() {
        out.reserve(n + 2);
        out.push(b'"');
        push_bytes(out, b);
        out.push(b'"');
        return;
    }
    // Worst case: every byte becomes `\u00XX`.
    out.reserve(n * 6 + 2);
    let len = out.len();
    // SAFETY: `n * 6 + 2` bytes are reserved. Before each 16-byte store at `w`, at most 6
    // bytes were written per input byte consumed (`w <= 1 + 6 * i`) and `i + 16 <= n`, so
    // `w + 16 <= 6 * n + 2`; escapes and the tail write at most 6 bytes per byte consumed,
    // plus the closing quote. The overlapping tail reads `b[n - 16..n]` (n >= 16) and writes
    // output bytes [n - 15, n + 1), below `n * 6 + 2`. Every byte below `w` is written before
    // `set_len`.
    unsafe {
        let src = b.as_ptr();
        let dst = out.as_mut_ptr().add(len);
        *dst = b'"';
        let mut w = 1;
        let mut i = 0;
        let escape = |c: u8, at: *mut u8| -> usize {
            let (seq, n) = escape_seq(c);
            std::ptr::copy_nonoverlapping(seq.as_ptr(), at, n);
            n
        };
        while i + 16 <= n {
            let v = _mm_loadu_si128(src.add(i) as *const __m128i);
            _mm_storeu_si128(dst.add(w) as *mut __m128i, v);
            let m = escape_mask(v);
            if m == 0 {
                i += 16;
                w += 16;
                continue;
            }
            let k = m.trailing_zeros() as usize;
            i += k;
            w += k;
            w += escape(*src.add(i), dst.add(w));
            i += 1;
        }
        if i < n && n >= 16 && w == i + 1 {
            // Nothing escaped so far, so output and input are in step: the tail is the last
            // 16 input bytes, stored over their own (already written) start, instead of a
            // byte loop over up to 15 bytes.
            let v = _mm_loadu_si128(src.add(n - 16) as *const __m128i);
            if escape_mask(v) == 0 {
                _mm_storeu_si128(dst.add(1 + n - 16) as *mut __m128i, v);
                w = n + 1;
                i = n;
            }
        }
        while i < n {
            let c = *src.add(i);
            if ESCAPE[c as usize] == 0 {
                *dst.add(w) = c;
                w += 1;
            } else {
                w += escape(c, dst.add(w));
            }
            i += 1;
        }
        *dst.add(w) = b'"';
        out.set_len(len + w + 1);
    }
}

/// Writes `s` as a JSON string literal.
#[cfg(not(target_arch = "x86_64"))]
pub fn write_str(out: &mut Vec<u8>, s: &str) {
    let mut rest = s.as_bytes();
    out.reserve(rest.len() + 2);
    out.push(b'"');
    while let Some(i) = first_escape(rest) {
        out.extend_from_slice(&rest[..i]);
        let (seq, n) = escape_seq(rest[i]);
        out.extend_from_slice(&seq[..n]);
        rest = &rest[i + 1..];
    }
    out.extend_from_slice(rest);
    out.push(b'"');
}

pub fn write_i64(out: &mut Vec<u8>, v: i64) {
    let mut buf = itoa::Buffer::new();
    out.extend_from_slice(buf.format(v).as_bytes());
}

/// Writes a scalar tape node. Non-finite floats cannot come from a JSON parser; they would
/// be written as null, which callers drop before getting here.
pub fn write_static(out: &mut Vec<u8>, s: StaticNode) {
    match s {
        StaticNode::I64(v) => write_i64(out, v),
        StaticNode::U64(v) => {
            let mut buf = itoa::Buffer::new();
            out.extend_from_slice(buf.format(v).as_bytes());
        }
        StaticNode::F64(v) => {
            if v.is_finite() {
                let mut buf = ryu::Buffer::new();
                out.extend_from_slice(buf.format_finite(v).as_bytes());
            } else {
                out.extend_from_slice(b"null");
            }
        }
        StaticNode::Bool(true) => out.extend_from_slice(b"true"),
        StaticNode::Bool(false) => out.extend_from_slice(b"false"),
        StaticNode::Null => out.extend_from_slice(b"null"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> (Vec<u8>, String) {
        (s.as_bytes().to_vec(), s.to_string())
    }

    #[test]
    fn members_and_elements_walk_nested_values_in_order() {
        let (mut buf, _) = parse(r#"{"a":{"x":[1,{"y":2}]},"b":"s","c":[true,null]}"#);
        let tape = simd_json::to_tape(&mut buf).unwrap();
        let root = Src::root(&tape);
        let keys: Vec<&str> = root.members().map(|(k, _)| k).collect();
        assert_eq!(keys, ["a", "b", "c"]);
        assert_eq!(root.get("b").unwrap().as_str(), Some("s"));
        let x = root.get("a").unwrap().get("x").unwrap();
        let els: Vec<_> = x.elements().collect();
        assert_eq!(els.len(), 2);
        assert_eq!(els[1].get("y").unwrap().as_i64(), Some(2));
        assert!(root.get("c").unwrap().elements().nth(1).unwrap().is_null());
    }

    #[test]
    fn random_strings_are_escaped_like_serde_json() {
        let alphabet = [
            "a", "Z", "0", " ", "\"", "\\", "\n", "\u{1}", "\u{1f}", "é", "😀", "/",
        ];
        let mut x: u64 = 7;
        for _ in 0..20_000 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let len = (x >> 40) as usize % 70;
            let mut s = String::new();
            for _ in 0..len {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                // Mostly plain text, like real values.
                let pick = (x >> 33) as usize % 40;
                s.push_str(alphabet.get(pick).copied().unwrap_or("q"));
            }
            let mut out = b"prefix".to_vec();
            write_str(&mut out, &s);
            assert_eq!(
                String::from_utf8(out).unwrap(),
                format!("prefix{}", serde_json::to_string(&s).unwrap())
            );
            let mut raw = b"p".to_vec();
            push_bytes(&mut raw, s.as_bytes());
            assert_eq!(&raw[1..], s.as_bytes());
        }
    }

    #[test]
    fn strings_are_escaped_like_serde_json() {
        for s in [
            "plain",
            "quote\"back\\slash",
            "ctl\u{1}\n\t\r\u{8}\u{c}",
            "ünï😀",
            "0123456789abcdef\"",
            "0123456789abcdefghij\u{1f}",
            "0123456789abcdef0123456789abcdef\\x",
            "ünï😀ünï😀ünï😀ünï😀ünï😀\n",
            "a long string that needs no escaping at all, of 49+",
            "ab\"",
            "abcd\\",
            "abcdefg\n",
            "abcdefgh\u{7f}x\t",
            "\u{1}bcdefghijklmno",
            "abcdefghijklmno",
            "abcdef",
        ] {
            let mut out = Vec::new();
            write_str(&mut out, s);
            assert_eq!(
                String::from_utf8(out).unwrap(),
                serde_json::to_string(s).unwrap()
            );
        }
    }
}
