//! `extract` regexes, with a hand matcher for the simple shapes tables use.
//!
//! Most extracts are "a path segment" or "the string value of a key in embedded JSON":
//! literals, ASCII classes with `+`/`*`, `\s*`, `.`, anchors and one capture group. Running
//! the `regex` crate's capture engines on every record cost more than the rest of mapping an
//! Azure record. Such a pattern is compiled into tokens and matched by a small backtracking
//! matcher, which (like the regex crate's leftmost-first semantics) tries start positions left
//! to right and greedy quantifiers longest first, so it finds the same match and the same
//! capture. Anything else (alternation, other escapes, counted repetition) keeps the regex.
//! Where Unicode could make the regex and the byte matcher differ (`(?i)` case folding, `\s`
//! beyond ASCII), a haystack with non-ASCII bytes goes to the regex.

use regex::Regex;

/// Longest haystack given to the hand matcher (resource ids, ARNs and URIs are far shorter).
const FAST_MAX_LEN: usize = 1024;

/// A compiled `extract`: the regex, and the hand matcher when the pattern allows one.
#[derive(Debug)]
pub struct Extract {
    re: Regex,
    fast: Option<Fast>,
}

impl Extract {
    pub fn new(pattern: &str) -> Result<Extract, regex::Error> {
        let re = Regex::new(pattern)?;
        let fast = if re.captures_len() == 2 {
            Fast::parse(pattern)
        } else {
            None
        };
        Ok(Extract { re, fast })
    }

    pub fn captures_len(&self) -> usize {
        self.re.captures_len()
    }

    /// Capture group 1 of the leftmost-first match, as `Regex::captures` gives it.
    pub fn capture<'s>(&self, s: &'s str) -> Option<&'s str> {
        if let Some(f) = &self.fast {
            // The hand matcher backtracks, so its worst case grows with the square of the
            // input; the regex crate is linear whatever the input. Long (or hostile) values go
            // to the regex.
            if s.len() <= FAST_MAX_LEN && (!f.unicode_sensitive || s.is_ascii()) {
                match f.capture(s.as_bytes()) {
                    Some(None) => return None,
                    Some(Some((a, b))) => {
                        if let Some(m) = s.get(a..b) {
                            return Some(m);
                        }
                    }
                    None => {}
                }
            }
        }
        self.re
            .captures(s)
            .and_then(|c| c.get(1))
            .map(|m| m.as_str())
    }

    /// True when the hand matcher handles this pattern (tests).
    pub fn is_fast(&self) -> bool {
        self.fast.is_some()
    }
}

#[derive(Debug, Clone)]
enum Tok {
    /// Literal bytes (lowercase when case-insensitive).
    Lit(Vec<u8>),
    /// A byte class repeated `min..=max` times (max 1 or unbounded); `maximal`: only the
    /// longest run can be followed by the rest of the pattern, so no backtracking.
    Class {
        set: Box<[bool; 256]>,
        min: usize,
        one: bool,
        maximal: bool,
        /// The first byte of the literal that follows (lowercase when case-insensitive):
        /// backtracking tries only the run lengths it could follow.
        then: Option<u8>,
        /// A class of all bytes but one to three (`[^/]`, `[^"/]`, `.`): runs end at the first
        /// excluded byte, found with memchr.
        stops: Option<Vec<u8>>,
    },
    /// `(?:[^"\\]|\\.)*`: the body of a JSON string (escapes kept).
    JStr,
    Open,
    Close,
    End,
}

/// True when a match of an unanchored pattern can start only at the last occurrence of its
/// leading literal's first byte: the pattern runs to the end (`$`), and neither the rest of
/// the literal nor any later token can hold that byte, so a match starting at an earlier
/// occurrence would have to pass a later one. `/([^/]+)$` (the last path segment) then costs
/// one reverse search instead of a try at every `/`.
fn last_start(toks: &[Tok], ci: bool) -> bool {
    let mut rest = toks.iter().skip_while(|t| matches!(t, Tok::Open));
    let Some(Tok::Lit(l)) = rest.next() else {
        return false;
    };
    let (first, upper) = (l[0], l[0].to_ascii_uppercase());
    let holds = |set: &[bool; 256]| set[first as usize] || (ci && set[upper as usize]);
    if !matches!(toks.last(), Some(Tok::End))
        || l[1..]
            .iter()
            .any(|&b| b == first || (ci && b.to_ascii_lowercase() == first))
    {
        return false;
    }
    rest.all(|t| match t {
        Tok::Open | Tok::Close | Tok::End => true,
        Tok::Class { set, .. } => !holds(set),
        Tok::Lit(_) | Tok::JStr => false,
    })
}

#[derive(Debug)]
struct Fast {
    toks: Vec<Tok>,
    /// The leading literal's searcher, for unanchored case-sensitive patterns.
    finder: Option<memchr::memmem::Finder<'static>>,
    anchored: bool,
    /// Only the leading literal's last occurrence can start a match (`last_start`).
    last_only: bool,
    ci: bool,
    /// `(?i)` or `\s`: non-ASCII haystacks go to the regex.
    unicode_sensitive: bool,
}

const JSTR: &str = r#"(?:[^"\\]|\\.)*"#;

fn ws_set() -> [bool; 256] {
    let mut s = [false; 256];
    for b in [b'\t', b'\n', 0x0b, 0x0c, b'\r', b' '] {
        s[b as usize] = true;
    }
    s
}

impl Fast {
    fn parse(p: &str) -> Option<Fast> {
        let (ci, mut rest) = match p.strip_prefix("(?i)") {
            Some(r) => (true, r),
            None => (false, p),
        };
        let anchored = match rest.strip_prefix('^') {
            Some(r) => {
                rest = r;
                true
            }
            None => false,
        };
        if !rest.is_ascii() {
            return None;
        }
        let b = rest.as_bytes();
        let mut toks: Vec<Tok> = Vec::new();
        let mut unicode_sensitive = ci;
        let mut groups = 0;
        let mut i = 0;
        while i < b.len() {
            let c = b[i];
            // One atom: a literal byte or a class.
            let atom: Option<[bool; 256]> = match c {
                b'$' if i + 1 == b.len() => {
                    toks.push(Tok::End);
                    i += 1;
                    continue;
                }
                b'(' if rest[i..].starts_with("(?:") => {
                    if !rest[i..].starts_with(JSTR) {
                        return None;
                    }
                    toks.push(Tok::JStr);
                    i += JSTR.len();
                    continue;
                }
                b'(' => {
                    groups += 1;
                    if groups > 1 {
                        return None;
                    }
                    toks.push(Tok::Open);
                    i += 1;
                    continue;
                }
                b')' => {
                    toks.push(Tok::Close);
                    i += 1;
                    continue;
                }
                b'.' => {
                    let mut s = [true; 256];
                    s[b'\n' as usize] = false;
                    i += 1;
                    Some(s)
                }
                b'[' => {
                    let (s, n) = parse_class(&b[i..], ci)?;
                    i += n;
                    Some(s)
                }
                b'\\' => {
                    let e = *b.get(i + 1)?;
                    i += 2;
                    if e == b's' {
                        unicode_sensitive = true;
                        Some(ws_set())
                    } else if e.is_ascii_punctuation() {
                        push_lit(&mut toks, e, ci);
                        None
                    } else {
                        return None;
                    }
                }
                b'|' | b'?' | b'{' | b'}' | b'*' | b'+' | b'$' | b'^' | b']' => return None,
                _ => {
                    i += 1;
                    push_lit(&mut toks, c, ci);
                    None
                }
            };
            let q = b.get(i).copied();
            if matches!(q, Some(b'?' | b'{')) {
                return None;
            }
            let (min, one) = match q {
                Some(b'+') => (1, false),
                Some(b'*') => (0, false),
                _ => (1, true),
            };
            if !one {
                i += 1;
                if matches!(b.get(i), Some(b'?' | b'+' | b'*' | b'{')) {
                    return None;
                }
            }
            let set = match atom {
                Some(s) => s,
                None if one => continue,
                None => {
                    // A quantified literal byte becomes a class of that byte.
                    let Some(Tok::Lit(l)) = toks.last_mut() else {
                        return None;
                    };
                    let last = l.pop()?;
                    if l.is_empty() {
                        toks.pop();
                    }
                    let mut s = [false; 256];
                    s[last as usize] = true;
                    if ci {
                        s[last.to_ascii_uppercase() as usize] = true;
                    }
                    s
                }
            };
            toks.push(Tok::Class {
                set: Box::new(set),
                min,
                one,
                maximal: false,
                then: None,
                stops: {
                    let out: Vec<u8> = (0..=255u8).filter(|&x| !set[x as usize]).collect();
                    (!out.is_empty() && out.len() <= 3).then_some(out)
                },
            });
        }
        if groups != 1 {
            return None;
        }
        // Unanchored: start positions are tried one by one, so the first token must be a
        // literal (start positions then fall on character boundaries).
        if !anchored
            && !matches!(
                toks.iter().find(|t| !matches!(t, Tok::Open)),
                Some(Tok::Lit(_))
            )
        {
            return None;
        }
        for k in 0..toks.len() {
            let next = toks[k + 1..]
                .iter()
                .find(|t| !matches!(t, Tok::Open | Tok::Close));
            let maximal = match (&toks[k], next) {
                (Tok::JStr, Some(Tok::Lit(l))) if l[0] == b'"' => false,
                (Tok::JStr, _) => return None,
                (Tok::Class { .. }, None | Some(Tok::End)) => true,
                (Tok::Class { set, .. }, Some(Tok::Lit(l))) => {
                    !(set[l[0] as usize] || ci && set[l[0].to_ascii_uppercase() as usize])
                }
                (
                    Tok::Class { set, .. },
                    Some(Tok::Class {
                        set: next_set, min, ..
                    }),
                ) => *min >= 1 && (0..256).all(|x| !(set[x] && next_set[x])),
                _ => false,
            };
            let then = match next {
                Some(Tok::Lit(l)) => Some(l[0]),
                _ => None,
            };
            if let Tok::Class {
                maximal: m,
                set,
                one,
                then: t,
                ..
            } = &mut toks[k]
            {
                *m = maximal;
                *t = then;
                // A single or backtracked class could split a multi-byte character.
                if (*one || !maximal) && set[128..].iter().any(|x| *x) {
                    unicode_sensitive = true;
                }
            }
        }
        let finder = match toks.iter().find(|t| !matches!(t, Tok::Open)) {
            Some(Tok::Lit(l)) if !anchored && !ci => {
                Some(memchr::memmem::Finder::new(l.as_slice()).into_owned())
            }
            _ => None,
        };
        let last_only = !anchored && last_start(&toks, ci);
        Some(Fast {
            toks,
            finder,
            anchored,
            last_only,
            ci,
            unicode_sensitive,
        })
    }

    /// `Some(capture)` when the matcher decided (`Some(None)`: no match); `None` to defer to
    /// the regex.
    #[allow(clippy::option_option)]
    fn capture(&self, h: &[u8]) -> Option<Option<(usize, usize)>> {
        let mut cap = (0, 0);
        if self.anchored {
            return Some(self.at(0, h, 0, &mut cap).then_some(cap));
        }
        let lit = self.toks.iter().find_map(|t| match t {
            Tok::Lit(l) => Some(l.as_slice()),
            _ => None,
        })?;
        if self.last_only {
            let start = if self.ci {
                memchr::memrchr2(lit[0], lit[0].to_ascii_uppercase(), h)
            } else {
                memchr::memrchr(lit[0], h)
            };
            return Some(
                start
                    .filter(|&pos| self.at(0, h, pos, &mut cap))
                    .map(|_| cap),
            );
        }
        // Start positions: where the leading literal occurs (found with memmem, or by its
        // first byte in either case and a compare), so the matcher runs only there.
        let mut pos = 0;
        while pos < h.len() {
            if let Some(f) = &self.finder {
                match f.find(&h[pos..]) {
                    Some(off) => pos += off,
                    None => break,
                }
            } else {
                let (first, upper) = (lit[0], lit[0].to_ascii_uppercase());
                match memchr::memchr2(first, upper, &h[pos..]) {
                    Some(off) => pos += off,
                    None => break,
                }
                if !h
                    .get(pos..pos + lit.len())
                    .is_some_and(|w| w.eq_ignore_ascii_case(lit))
                {
                    pos += 1;
                    continue;
                }
            }
            if self.at(0, h, pos, &mut cap) {
                return Some(Some(cap));
            }
            pos += 1;
        }
        Some(None)
    }

    fn at(&self, k: usize, h: &[u8], pos: usize, cap: &mut (usize, usize)) -> bool {
        let Some(t) = self.toks.get(k) else {
            return true;
        };
        match t {
            Tok::Lit(l) => {
                let Some(w) = h.get(pos..pos + l.len()) else {
                    return false;
                };
                let eq = if self.ci {
                    w.iter().zip(l).all(|(a, b)| a.to_ascii_lowercase() == *b)
                } else {
                    w == &l[..]
                };
                eq && self.at(k + 1, h, pos + l.len(), cap)
            }
            Tok::Class {
                set,
                min,
                one,
                maximal,
                then,
                stops,
            } => {
                let rest = &h[pos..];
                let run = match stops {
                    Some(st) if !*one => match st[..] {
                        [a] => memchr::memchr(a, rest),
                        [a, b] => memchr::memchr2(a, b, rest),
                        [a, b, c] => memchr::memchr3(a, b, c, rest),
                        _ => None,
                    }
                    .unwrap_or(rest.len()),
                    _ => {
                        let limit = if *one { 1 } else { usize::MAX };
                        rest.iter()
                            .take(limit)
                            .take_while(|&&c| set[c as usize])
                            .count()
                    }
                };
                if run < *min {
                    return false;
                }
                if *maximal {
                    return self.at(k + 1, h, pos + run, cap);
                }
                (*min..=run).rev().any(|n| {
                    let fits = match (then, h.get(pos + n)) {
                        (None, _) => true,
                        (Some(_), None) => false,
                        (Some(t), Some(c)) => *c == *t || (self.ci && c.to_ascii_lowercase() == *t),
                    };
                    fits && self.at(k + 1, h, pos + n, cap)
                })
            }
            Tok::JStr => {
                let mut i = pos;
                while let Some(&c) = h.get(i) {
                    match c {
                        b'"' => break,
                        b'\\' => match h.get(i + 1) {
                            Some(b'\n') | None => return false,
                            Some(_) => i += 2,
                        },
                        _ => i += 1,
                    }
                }
                self.at(k + 1, h, i, cap)
            }
            Tok::Open => {
                cap.0 = pos;
                self.at(k + 1, h, pos, cap)
            }
            Tok::Close => {
                cap.1 = pos;
                self.at(k + 1, h, pos, cap)
            }
            Tok::End => pos == h.len() && self.at(k + 1, h, pos, cap),
        }
    }
}

fn push_lit(toks: &mut Vec<Tok>, c: u8, ci: bool) {
    let c = if ci { c.to_ascii_lowercase() } else { c };
    match toks.last_mut() {
        Some(Tok::Lit(l)) => l.push(c),
        _ => toks.push(Tok::Lit(vec![c])),
    }
}

/// `[...]` at the start of `b`: the byte set (case-closed when `ci`) and the bytes consumed.
fn parse_class(b: &[u8], ci: bool) -> Option<([bool; 256], usize)> {
    let mut i = 1;
    let negated = b.get(i) == Some(&b'^');
    if negated {
        i += 1;
    }
    let mut set = [false; 256];
    let mut first = true;
    loop {
        let c = *b.get(i)?;
        if c == b']' && !first {
            i += 1;
            break;
        }
        first = false;
        let lo = match c {
            b'\\' => {
                let e = *b.get(i + 1)?;
                if !e.is_ascii_punctuation() {
                    return None;
                }
                i += 2;
                e
            }
            b'[' | b'&' | b'~' => return None,
            _ => {
                i += 1;
                c
            }
        };
        if b.get(i) == Some(&b'-') && b.get(i + 1).is_some_and(|&n| n != b']') {
            let hi = *b.get(i + 1)?;
            if hi == b'\\' || hi == b'[' || hi < lo {
                return None;
            }
            i += 2;
            for x in lo..=hi {
                set[x as usize] = true;
            }
        } else {
            set[lo as usize] = true;
        }
    }
    if ci {
        for x in b'a'..=b'z' {
            let u = x.to_ascii_uppercase() as usize;
            let any = set[x as usize] || set[u];
            set[x as usize] = any;
            set[u] = any;
        }
    }
    if negated {
        for x in set.iter_mut() {
            *x = !*x;
        }
    }
    Some((set, i))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table_patterns() -> Vec<String> {
        let mut out = Vec::new();
        for f in [
            "mappings/azure_activity.toml",
            "mappings/gcp_audit.toml",
            "mappings/k8s_audit.toml",
            "mappings/cloudtrail.toml",
        ] {
            let text = std::fs::read_to_string(f).unwrap();
            for line in text.lines() {
                let mut rest = line;
                while let Some(p) = rest.find("extract = '") {
                    let s = &rest[p + 11..];
                    let end = s.find('\'').unwrap();
                    out.push(s[..end].to_string());
                    rest = &s[end..];
                }
            }
        }
        out.sort();
        out.dedup();
        out
    }

    /// Haystacks built from the pattern's own literals and the bytes classes care about.
    fn haystacks(pattern: &str, seed: u64) -> Vec<String> {
        let mut words: Vec<String> = pattern
            .split(|c: char| !c.is_ascii_alphanumeric())
            .filter(|w| !w.is_empty())
            .map(String::from)
            .collect();
        for w in words.clone() {
            words.push(w.to_uppercase());
        }
        for w in [
            "/", "/", "/", "\"", "\"", ":", " ", "\\", "\\\"", "\n", "-", ".", "a", "Z", "9", "v1",
            "x-y", "é", "K", "\u{212a}", "ſ", "\u{a0}", "?", "@", "b.c", "action", "ACTION",
        ] {
            words.push(w.to_string());
        }
        let mut x = seed;
        let mut next = || {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (x >> 33) as usize
        };
        let mut out = vec![String::new()];
        for _ in 0..4000 {
            let n = next() % 9;
            let mut s = String::new();
            for _ in 0..n {
                s.push_str(&words[next() % words.len()]);
            }
            out.push(s);
        }
        out
    }

    #[test]
    fn hand_matcher_agrees_with_the_regex_on_every_table_pattern() {
        let pats = table_patterns();
        assert!(pats.len() > 20);
        let mut fast = 0;
        for (n, p) in pats.iter().enumerate() {
            let e = Extract::new(p).unwrap();
            fast += e.is_fast() as usize;
            for h in haystacks(p, n as u64 + 1) {
                let want = e.re.captures(&h).and_then(|c| c.get(1)).map(|m| m.as_str());
                assert_eq!(e.capture(&h), want, "pattern {p:?} on {h:?}");
            }
        }
        // Alternations stay with the regex; the rest is matched by hand.
        assert!(fast + 3 >= pats.len(), "{fast} of {}", pats.len());
    }

    #[test]
    fn hand_matcher_cases() {
        let cases: &[(&str, &str, Option<&str>)] = &[
            (
                "^([^/]+)/",
                "Microsoft.Compute/virtualMachines/write",
                Some("Microsoft.Compute"),
            ),
            ("^([^/]+)/", "noslash", None),
            ("/([^/]+)$", "/a/b/c", Some("c")),
            ("/([^/]+)$", "/a/b/", None),
            (
                "(?i)^/subscriptions/([^/]+)",
                "/SUBSCRIPTIONS/abc/x",
                Some("abc"),
            ),
            (
                r#"(?i)"principalId"\s*:\s*"([^"]+)""#,
                r#"{"PrincipalId" : "p1"}"#,
                Some("p1"),
            ),
            (
                r#"(?i)"principalId"\s*:\s*"([^"]+)""#,
                r#"{"principalId":null,"principalId":"p2"}"#,
                Some("p2"),
            ),
            (
                r#""message"\s*:\s*"((?:[^"\\]|\\.)*)""#,
                r#"{"message":"a \"b\" c"}"#,
                Some(r#"a \"b\" c"#),
            ),
            (
                r#"(?i)"roleDefinitionId"\s*:\s*"[^"]*/([^"/]+)""#,
                r#"{"roleDefinitionId":"/x/y/z"}"#,
                Some("z"),
            ),
            (
                "(?i)^(.*/userassignedidentities/[^/]+)",
                "/s/1/UserAssignedIdentities/id/x",
                Some("/s/1/UserAssignedIdentities/id"),
            ),
        ];
        for (p, h, want) in cases {
            let e = Extract::new(p).unwrap();
            assert!(e.is_fast(), "{p}");
            assert_eq!(e.capture(h), *want, "{p} on {h}");
        }
    }

    #[test]
    fn last_occurrence_start_agrees_with_the_regex() {
        // Patterns whose match can only start at the last occurrence of the leading byte,
        // in both cases of case sensitivity, and one that must not take that shortcut.
        let pats = [
            ("/([^/]+)$", true),
            ("a([^a]+)$", true),
            ("(?i)a([^a]+)$", true),
            ("(?i)ab([^a/]+)$", true),
            ("a([^b]+)$", false),
            ("/([^/]+)/[^/]+$", false),
        ];
        let alphabet = b"aAbB/x";
        let mut x: u64 = 11;
        for (p, shortcut) in pats {
            let e = Extract::new(p).unwrap();
            let f = e.fast.as_ref().expect("hand-matched");
            assert_eq!(f.last_only, shortcut, "{p}");
            for _ in 0..5_000 {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let len = (x >> 59) as usize;
                let h: String = (0..len)
                    .map(|i| alphabet[(x >> (i * 3 % 48)) as usize % alphabet.len()] as char)
                    .collect();
                let want = e.re.captures(&h).and_then(|c| c.get(1)).map(|m| m.as_str());
                assert_eq!(e.capture(&h), want, "pattern {p:?} on {h:?}");
            }
        }
    }

    #[test]
    fn long_values_go_to_the_linear_regex_and_agree() {
        // A value that makes a backtracking matcher try every split: far over the limit, so
        // the regex answers (and gives the same capture the hand matcher would).
        let e = Extract::new("(?i)^(.*/userassignedidentities/[^/]+)").unwrap();
        assert!(e.is_fast());
        let long = format!("{}/userAssignedIdentities/id", "/x".repeat(50_000));
        assert_eq!(e.capture(&long), Some(long.as_str()));
        let hostile = "/".repeat(100_000);
        assert_eq!(e.capture(&hostile), None);
    }
}
