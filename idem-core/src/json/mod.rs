//! Canonical JSON for request fingerprints.
//!
//! Two JSON documents that differ only in object key order or insignificant
//! whitespace canonicalise to the same bytes. Numbers and strings are kept as
//! written (no float parsing), so `1` and `1.0`, or `"A"` and `"\u0041"`,
//! stay different: a conservative choice, since treating two different
//! payloads as equal would replay one request's answer to another.
//!
//! # Examples
//!
//! ```
//! use idem_core::json::canonicalize;
//! assert_eq!(
//!     canonicalize(br#"{ "b": [1, 2], "a": {"y": null, "x": true} }"#).unwrap(),
//!     br#"{"a":{"x":true,"y":null},"b":[1,2]}"#.to_vec(),
//! );
//! assert!(canonicalize(b"{not json").is_none());
//! ```

/// Nesting deeper than this is refused (falls back to raw bytes), so a
/// hostile body cannot exhaust the stack.
pub const MAX_DEPTH: usize = 128;

mod jcs;
mod tree;

pub use jcs::jcs;

/// The canonical form of `input`, or `None` when it is not valid JSON.
pub fn canonicalize(input: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(input.len());
    canonicalize_into(input, &mut out).then_some(out)
}

/// [`canonicalize`] into `out` (cleared first), so a caller can reuse one
/// buffer; `false` (and `out` unspecified) when `input` is not valid JSON.
pub fn canonicalize_into(input: &[u8], out: &mut Vec<u8>) -> bool {
    out.clear();
    // Validating UTF-8 once up front lets the scanner work on bytes.
    if std::str::from_utf8(input).is_err() {
        return false;
    }
    let mut p = Parser {
        s: input,
        i: 0,
        unsorted: false,
    };
    p.ws();
    if p.value(out, 0).is_none() {
        // Written in one pass as it is read, until an object whose keys are
        // out of order: sorting it in place would move (and re-read) its
        // whole subtree, at every such level. Documents with one go to the
        // tree pass, which stays linear however deep they nest.
        return p.unsorted && tree::canonicalize(input, out);
    }
    p.ws();
    p.i == input.len()
}

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
    /// The one-pass writer stopped at an object whose keys are out of order.
    unsorted: bool,
}

impl Parser<'_> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }

    fn ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.i += 1;
        }
    }

    fn value(&mut self, out: &mut Vec<u8>, depth: usize) -> Option<()> {
        if depth > MAX_DEPTH {
            return None;
        }
        match self.peek()? {
            b'{' => self.object(out, depth),
            b'[' => self.array(out, depth),
            b'"' => {
                let start = self.i;
                self.string()?;
                out.extend_from_slice(&self.s[start..self.i]);
                Some(())
            }
            b't' => self.literal(b"true", out),
            b'f' => self.literal(b"false", out),
            b'n' => self.literal(b"null", out),
            _ => self.number(out),
        }
    }

    fn literal(&mut self, lit: &[u8], out: &mut Vec<u8>) -> Option<()> {
        self.skip_literal(lit)?;
        out.extend_from_slice(lit);
        Some(())
    }

    fn skip_literal(&mut self, lit: &[u8]) -> Option<()> {
        if self.s[self.i..].starts_with(lit) {
            self.i += lit.len();
            Some(())
        } else {
            None
        }
    }

    fn string(&mut self) -> Option<()> {
        self.i += 1; // opening quote
        loop {
            let c = self.peek()?;
            self.i += 1;
            match c {
                b'"' => return Some(()),
                b'\\' => match self.peek()? {
                    b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => self.i += 1,
                    b'u' => {
                        let hex = self.s.get(self.i + 1..self.i + 5)?;
                        if !hex.iter().all(u8::is_ascii_hexdigit) {
                            return None;
                        }
                        self.i += 5;
                    }
                    _ => return None,
                },
                0..=0x1f => return None,
                _ => {}
            }
        }
    }

    fn number(&mut self, out: &mut Vec<u8>) -> Option<()> {
        let start = self.i;
        self.skip_number()?;
        out.extend_from_slice(&self.s[start..self.i]);
        Some(())
    }

    fn skip_number(&mut self) -> Option<()> {
        if self.peek() == Some(b'-') {
            self.i += 1;
        }
        match self.peek()? {
            b'0' => self.i += 1,
            b'1'..=b'9' => self.digits(),
            _ => return None,
        }
        if self.peek() == Some(b'.') {
            self.i += 1;
            if !self.peek()?.is_ascii_digit() {
                return None;
            }
            self.digits();
        }
        if matches!(self.peek(), Some(b'e' | b'E')) {
            self.i += 1;
            if matches!(self.peek(), Some(b'+' | b'-')) {
                self.i += 1;
            }
            if !self.peek()?.is_ascii_digit() {
                return None;
            }
            self.digits();
        }
        Some(())
    }

    fn digits(&mut self) {
        while matches!(self.peek(), Some(b'0'..=b'9')) {
            self.i += 1;
        }
    }

    fn array(&mut self, out: &mut Vec<u8>, depth: usize) -> Option<()> {
        self.i += 1;
        out.push(b'[');
        self.ws();
        if self.peek()? == b']' {
            self.i += 1;
            out.push(b']');
            return Some(());
        }
        loop {
            self.ws();
            self.value(out, depth + 1)?;
            self.ws();
            match self.peek()? {
                b',' => {
                    self.i += 1;
                    out.push(b',');
                }
                b']' => {
                    self.i += 1;
                    out.push(b']');
                    return Some(());
                }
                _ => return None,
            }
        }
    }

    fn object(&mut self, out: &mut Vec<u8>, depth: usize) -> Option<()> {
        self.i += 1;
        self.ws();
        if self.peek()? == b'}' {
            self.i += 1;
            out.extend_from_slice(b"{}");
            return Some(());
        }
        // Members are written straight to `out`, canonicalised one by one;
        // keys must end up sorted by their raw bytes (a stable sort, so
        // duplicate keys keep their order). Clients usually send few keys,
        // often already in order, and then this one pass allocates nothing;
        // the first key out of order hands the document to `tree`.
        out.push(b'{');
        let mut prev: &[u8] = &[];
        let mut sorted = true;
        let mut first = true;
        loop {
            self.ws();
            if self.peek()? != b'"' {
                return None;
            }
            let key_start = self.i;
            self.string()?;
            let key = &self.s[key_start..self.i];
            self.ws();
            if self.peek()? != b':' {
                return None;
            }
            self.i += 1;
            self.ws();
            if !first {
                out.push(b',');
                sorted &= prev <= key;
            }
            first = false;
            prev = key;
            out.extend_from_slice(key);
            out.push(b':');
            self.value(out, depth + 1)?;
            self.ws();
            match self.peek()? {
                b',' => self.i += 1,
                b'}' => {
                    self.i += 1;
                    break;
                }
                _ => return None,
            }
        }
        out.push(b'}');
        if !sorted {
            self.unsorted = true;
            return None;
        }
        Some(())
    }
}

#[cfg(test)]
mod tests {
    use super::canonicalize;

    fn c(s: &str) -> Option<String> {
        canonicalize(s.as_bytes()).map(|v| String::from_utf8(v).unwrap_or_default())
    }

    #[test]
    fn canonical_forms() {
        assert_eq!(c(" 1 ").as_deref(), Some("1"));
        assert_eq!(c("[ ]").as_deref(), Some("[]"));
        assert_eq!(c("{ }").as_deref(), Some("{}"));
        assert_eq!(
            c(r#"{"b":1,"a":{"d":[true,false,null],"c":"x y"}}"#),
            c(r#"{ "a" : { "c" : "x y" , "d" : [ true , false , null ] } , "b" : 1 }"#)
        );
        assert_eq!(c(r#"-0.5e+10"#).as_deref(), Some("-0.5e+10"));
        assert_ne!(c("1"), c("1.0"));
        assert_ne!(c(r#"{"a":1,"a":2}"#), c(r#"{"a":2,"a":1}"#));
        assert_eq!(c(r#""\u00e9\n""#).as_deref(), Some(r#""\u00e9\n""#));
    }

    /// 128 objects, each with its keys out of order, around a payload of
    /// `size` bytes; and the same payload in one flat object.
    pub(super) fn nested_and_flat(size: usize) -> (Vec<u8>, Vec<u8>) {
        let payload = format!("\"{}\"", "x".repeat(size));
        let mut nested = payload.clone();
        for _ in 0..128 {
            nested = format!(r#"{{"b": {nested}, "a": 1}}"#);
        }
        let flat = format!(r#"{{"b": {payload}, "a": 1}}"#);
        (nested.into_bytes(), flat.into_bytes())
    }

    fn fastest(input: &[u8]) -> std::time::Duration {
        (0..3)
            .map(|_| {
                let started = std::time::Instant::now();
                assert!(canonicalize(input).is_some());
                started.elapsed()
            })
            .min()
            .unwrap_or_default()
    }

    /// Issue 17 item 14: sorting members re-read (and moved) the whole
    /// subtree at every unsorted level: 128 levels around 1 MiB cost over a
    /// hundred times the flat document.
    #[test]
    fn nesting_unsorted_objects_keeps_the_cost_linear() {
        let (nested, flat) = nested_and_flat(1 << 20);
        let (n, f) = (fastest(&nested), fastest(&flat));
        assert!(n < f * 5, "nested {n:?}, flat {f:?}");
        // And the same bytes as sorting level by level would give.
        let inner = canonicalize(&nested).unwrap_or_default();
        assert!(inner.starts_with(br#"{"a":1,"b":{"a":1,"b":"#));
        assert_eq!(inner.len(), (1 << 20) + 2 + 128 * r#"{"a":1,"b":}"#.len());
    }

    #[test]
    fn invalid_json() {
        for bad in [
            "",
            "{",
            "[1,]",
            "{\"a\"}",
            "01",
            "1.",
            "-",
            "tru",
            "\"\\x\"",
            "{\"a\":1}x",
            "nul",
            "\"abc",
            "[1 2]",
            "{1:2}",
            "1e",
            "\"\u{1}\"",
        ] {
            assert_eq!(c(bad), None, "{bad:?}");
        }
        let deep = "[".repeat(200) + &"]".repeat(200);
        assert_eq!(c(&deep), None);
        let ok = "[".repeat(100) + &"]".repeat(100);
        assert!(c(&ok).is_some());
    }

    /// The straightforward definition (each member buffered, then all
    /// sorted) that the in-place implementation must match byte for byte.
    fn reference(v: &serde_like::Value) -> String {
        use serde_like::Value::*;
        match v {
            Obj(members) => {
                let mut m: Vec<(String, String)> = members
                    .iter()
                    .map(|(k, v)| (format!("\"{k}\""), reference(v)))
                    .collect();
                m.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
                let inner: Vec<String> = m.into_iter().map(|(k, v)| format!("{k}:{v}")).collect();
                format!("{{{}}}", inner.join(","))
            }
            Arr(items) => format!(
                "[{}]",
                items.iter().map(reference).collect::<Vec<_>>().join(",")
            ),
            Num(n) => n.to_string(),
        }
    }

    /// Writes `v` with the given key order and whitespace.
    fn render(v: &serde_like::Value, ws: &str) -> String {
        use serde_like::Value::*;
        match v {
            Obj(members) => {
                let inner: Vec<String> = members
                    .iter()
                    .map(|(k, v)| format!("{ws}\"{k}\"{ws}:{ws}{}", render(v, ws)))
                    .collect();
                format!("{{{}{ws}}}", inner.join(","))
            }
            Arr(items) => format!(
                "[{}]",
                items
                    .iter()
                    .map(|i| render(i, ws))
                    .collect::<Vec<_>>()
                    .join(",")
            ),
            Num(n) => n.to_string(),
        }
    }

    mod serde_like {
        pub(super) enum Value {
            Obj(Vec<(String, Value)>),
            Arr(Vec<Value>),
            Num(u32),
        }
    }

    /// A small deterministic generator: objects with keys in random order
    /// (duplicates and prefixes of one another included), nested.
    fn gen(seed: &mut u64, depth: u32) -> serde_like::Value {
        use serde_like::Value::*;
        fn next(seed: &mut u64) -> u64 {
            *seed ^= *seed << 13;
            *seed ^= *seed >> 7;
            *seed ^= *seed << 17;
            *seed
        }
        let kind = if depth > 3 { 2 } else { next(seed) % 3 };
        match kind {
            0 => {
                let n = next(seed) % 6;
                let keys = ["a", "ab", "b", "a\\u0041", "B", "_", "aa"];
                Obj((0..n)
                    .map(|_| {
                        let k = keys[(next(seed) % keys.len() as u64) as usize].to_owned();
                        (k, gen(seed, depth + 1))
                    })
                    .collect())
            }
            1 => Arr((0..next(seed) % 4).map(|_| gen(seed, depth + 1)).collect()),
            _ => Num((next(seed) % 1000) as u32),
        }
    }

    #[test]
    fn matches_the_buffered_definition() {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..5_000 {
            let v = gen(&mut seed, 0);
            let want = reference(&v);
            for ws in ["", " ", "\n\t"] {
                let text = render(&v, ws);
                assert_eq!(c(&text).as_deref(), Some(want.as_str()), "{text}");
            }
        }
    }
}
