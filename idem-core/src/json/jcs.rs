//! RFC 8785, the JSON Canonicalization Scheme (JCS): the canonical form
//! content keys are hashed from, the same in every language. Unlike the
//! fingerprint's form (`canonicalize`, which keeps numbers and strings as
//! written), JCS reads numbers as IEEE doubles and writes them as
//! ECMAScript does (`42.50` and `4.25e1` are both `42.5`, `-0` is `0`),
//! writes strings with the fewest escapes, and sorts members by their
//! names' UTF-16 code units: what `JSON.stringify` gives in JavaScript, so
//! a JavaScript, Python and Rust client compute the same key for one
//! payload.

use std::fmt::Write as _;

use serde_json::Value;

/// The JCS form of `input`, or `None` when it is not JSON (or holds a
/// number no double can hold).
pub fn jcs(input: &[u8]) -> Option<Vec<u8>> {
    let value: Value = serde_json::from_slice(input).ok()?;
    let mut out = String::with_capacity(input.len());
    write(&value, &mut out)?;
    Some(out.into_bytes())
}

fn write(value: &Value, out: &mut String) -> Option<()> {
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => number(n.as_f64()?, out)?,
        Value::String(s) => string(s, out),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write(item, out)?;
            }
            out.push(']');
        }
        Value::Object(members) => {
            let mut sorted: Vec<(Vec<u16>, &String, &Value)> = members
                .iter()
                .map(|(k, v)| (k.encode_utf16().collect(), k, v))
                .collect();
            sorted.sort_by(|a, b| a.0.cmp(&b.0));
            out.push('{');
            for (i, (_, k, v)) in sorted.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                string(k, out);
                out.push(':');
                write(v, out)?;
            }
            out.push('}');
        }
    }
    Some(())
}

/// A string as `JSON.stringify` writes it: `"` and `\` escaped, control
/// characters as their short escapes or `\u00xx`, everything else as is.
fn string(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// A double as ECMAScript's `Number.prototype.toString` writes it: the
/// shortest digits that read back to it, in fixed notation from 1e-6 up to
/// 1e21, in exponent notation (`1e+21`, `5e-324`) outside.
fn number(x: f64, out: &mut String) -> Option<()> {
    if !x.is_finite() {
        return None;
    }
    if x == 0.0 {
        // Both zeros.
        out.push('0');
        return Some(());
    }
    if x < 0.0 {
        out.push('-');
    }
    // Rust's `{:e}` gives the shortest round-trip digits: `d.ddde±x`.
    let sci = format!("{:e}", x.abs());
    let (mantissa, exp) = sci.split_once('e')?;
    let exp: i32 = exp.parse().ok()?;
    let digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
    let k = digits.len() as i32;
    // The decimal point's place after the first `n` digits.
    let n = exp + 1;
    if k <= n && n <= 21 {
        out.push_str(&digits);
        out.extend(std::iter::repeat_n('0', (n - k) as usize));
    } else if 0 < n && n <= 21 {
        out.push_str(&digits[..n as usize]);
        out.push('.');
        out.push_str(&digits[n as usize..]);
    } else if -6 < n && n <= 0 {
        out.push_str("0.");
        out.extend(std::iter::repeat_n('0', (-n) as usize));
        out.push_str(&digits);
    } else {
        out.push_str(&digits[..1]);
        if k > 1 {
            out.push('.');
            out.push_str(&digits[1..]);
        }
        let _ = write!(out, "e{}{}", if n > 0 { '+' } else { '-' }, (n - 1).abs());
    }
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn num(x: f64) -> String {
        let mut s = String::new();
        number(x, &mut s).map(|()| s).unwrap_or_default()
    }

    #[test]
    fn numbers_are_written_as_ecmascript_writes_them() {
        for (x, s) in [
            (42.5, "42.5"),
            (1e3, "1000"),
            (-0.0, "0"),
            (1e21, "1e+21"),
            (1e20, "100000000000000000000"),
            (1e-7, "1e-7"),
            (1e-6, "0.000001"),
            (0.1, "0.1"),
            (-1.5, "-1.5"),
            (5e-324, "5e-324"),
            (123.456e-10, "1.23456e-8"),
        ] {
            assert_eq!(num(x), s, "{x:e}");
        }
        assert_eq!(num(f64::NAN), "");
    }

    #[test]
    fn not_json_is_none() {
        assert!(jcs(b"{\"a\": ").is_none());
        assert!(jcs(b"1e400").is_none());
    }
}
