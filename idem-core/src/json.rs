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

/// The canonical form of `input`, or `None` when it is not valid JSON.
pub fn canonicalize(input: &[u8]) -> Option<Vec<u8>> {
    // Validating UTF-8 once up front lets the scanner work on bytes.
    std::str::from_utf8(input).ok()?;
    let mut p = Parser { s: input, i: 0 };
    let mut out = Vec::with_capacity(input.len());
    p.ws();
    p.value(&mut out, 0)?;
    p.ws();
    (p.i == input.len()).then_some(out)
}

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
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
        if self.s[self.i..].starts_with(lit) {
            self.i += lit.len();
            out.extend_from_slice(lit);
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
        out.extend_from_slice(&self.s[start..self.i]);
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
        // Members are canonicalised one by one, then sorted by their raw key
        // bytes; the sort is stable, so duplicate keys keep their order.
        let mut members: Vec<(&[u8], Vec<u8>)> = Vec::new();
        if self.peek()? == b'}' {
            self.i += 1;
            out.extend_from_slice(b"{}");
            return Some(());
        }
        loop {
            self.ws();
            if self.peek()? != b'"' {
                return None;
            }
            let start = self.i;
            self.string()?;
            let key = &self.s[start..self.i];
            self.ws();
            if self.peek()? != b':' {
                return None;
            }
            self.i += 1;
            self.ws();
            let mut v = Vec::new();
            self.value(&mut v, depth + 1)?;
            members.push((key, v));
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
        members.sort_by(|a, b| a.0.cmp(b.0));
        out.push(b'{');
        for (n, (k, v)) in members.iter().enumerate() {
            if n > 0 {
                out.push(b',');
            }
            out.extend_from_slice(k);
            out.push(b':');
            out.extend_from_slice(v);
        }
        out.push(b'}');
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
}
