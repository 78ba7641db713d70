//! The value types of the configuration. Each reads a TOML number or a
//! string (flags and `IDEM_*` variables arrive as strings), so `ttl = 3600`,
//! `ttl = "1h"` and `--ttl 1h` mean the same.

use std::fmt;
use std::marker::PhantomData;
use std::str::FromStr;
use std::time::Duration;

use serde::de::{self, Deserialize, Deserializer, Visitor};

/// Parses a duration: a number of seconds, or a number with `ms`, `s`, `m`,
/// `h` or `d`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num.parse().map_err(|_| {
        format!("{s:?} is not a duration; write seconds (30) or 500ms, 30s, 15m, 24h, 7d")
    })?;
    let scale = match unit.trim() {
        "" | "s" => 1.0,
        "ms" => 0.001,
        "m" => 60.0,
        "h" => 3600.0,
        "d" => 86_400.0,
        other => {
            return Err(format!(
                "{s:?} has an unknown unit {other:?}; use ms, s, m, h or d"
            ))
        }
    };
    let secs = n * scale;
    if !secs.is_finite() || secs > 10.0 * 365.0 * 86_400.0 {
        return Err(format!("{s:?} is too long: at most 3650d (ten years)"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Parses a size in bytes: a number, or a number with `B`, `KiB`, `MiB`,
/// `GiB` (or `KB`, `MB`, `GB`, powers of 1000).
pub fn parse_size(s: &str) -> Result<usize, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size; write bytes (1048576) or 64KiB, 1MiB"))?;
    let scale: u64 = match unit.trim() {
        "" | "B" => 1,
        "KB" | "kB" => 1000,
        "KiB" => 1 << 10,
        "MB" => 1_000_000,
        "MiB" => 1 << 20,
        "GB" => 1_000_000_000,
        "GiB" => 1 << 30,
        other => {
            return Err(format!(
                "{s:?} has an unknown unit {other:?}; use B, KiB, MiB, GiB"
            ))
        }
    };
    n.checked_mul(scale)
        .and_then(|v| usize::try_from(v).ok())
        .ok_or_else(|| format!("{s:?} is too large"))
}

/// Reads a non-negative number or a string as text, then parses it with
/// `T`'s `FromStr`; `off` is accepted where `T` allows it.
struct TextVisitor<T>(PhantomData<T>);

impl<T> Visitor<'_> for TextVisitor<T>
where
    T: FromStr<Err = String>,
{
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a number or a string")
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<T, E> {
        v.to_string().parse().map_err(E::custom)
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<T, E> {
        if v < 0 {
            return Err(E::custom(format!(
                "expected a number or a string, found the negative number {v}"
            )));
        }
        v.to_string().parse().map_err(E::custom)
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<T, E> {
        if v < 0.0 || !v.is_finite() {
            return Err(E::custom(format!(
                "expected a number or a string, found {v}"
            )));
        }
        v.to_string().parse().map_err(E::custom)
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<T, E> {
        v.parse().map_err(E::custom)
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<T, E> {
        if v {
            Err(E::custom("expected a number or a string, found true"))
        } else {
            "off".parse().map_err(E::custom)
        }
    }
}

macro_rules! text_value {
    ($($name:ident),*) => {$(
        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                d.deserialize_any(TextVisitor(PhantomData))
            }
        }
    )*};
}

/// A duration: seconds, or `500ms`, `30s`, `15m`, `24h`, `7d`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Secs(pub(super) Duration);

impl FromStr for Secs {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        parse_duration(s).map(Secs)
    }
}

/// A size in bytes (`64KiB`, `1MiB`) or a count (`10000`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Size(pub(super) usize);

impl FromStr for Size {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        parse_size(s).map(Size)
    }
}

/// A decimal number (a fraction, a rate).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Number(pub(super) f64);

impl FromStr for Number {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().parse::<f64>() {
            Ok(x) if x.is_finite() => Ok(Number(x)),
            _ => Err(format!("{s:?} is not a number")),
        }
    }
}

/// Wait mode: a duration, or `off` (also `none`, `false`, `0`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Wait(pub(super) Option<Duration>);

impl FromStr for Wait {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim() {
            "off" | "none" | "false" => Ok(Wait(None)),
            s => parse_duration(s).map(|d| Wait((!d.is_zero()).then_some(d))),
        }
    }
}

text_value!(Secs, Size, Number, Wait);

/// The field names of a struct deriving `Deserialize`, as serde sees them:
/// the configuration splits a table by them instead of listing them again.
pub(super) fn field_names<'de, T: Deserialize<'de>>() -> &'static [&'static str] {
    struct Names<'a>(&'a mut &'static [&'static str]);

    #[derive(Debug)]
    struct Stop;
    impl fmt::Display for Stop {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("field names read")
        }
    }
    impl std::error::Error for Stop {}
    impl de::Error for Stop {
        fn custom<M: fmt::Display>(_: M) -> Self {
            Stop
        }
    }

    impl<'de> Deserializer<'de> for Names<'_> {
        type Error = Stop;

        fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Stop> {
            Err(Stop)
        }

        fn deserialize_struct<V: Visitor<'de>>(
            self,
            _: &'static str,
            fields: &'static [&'static str],
            _: V,
        ) -> Result<V::Value, Stop> {
            *self.0 = fields;
            Err(Stop)
        }

        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
            bytes byte_buf option unit unit_struct newtype_struct seq tuple
            tuple_struct map enum identifier ignored_any
        }
    }

    let mut fields: &'static [&'static str] = &[];
    let _ = T::deserialize(Names(&mut fields));
    fields
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_sizes() {
        assert_eq!(parse_duration("30"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("24h"), Ok(Duration::from_secs(86_400)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("3w").is_err());
        assert_eq!(parse_size("1MiB"), Ok(1 << 20));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert!(parse_size("-1").is_err());
        assert!(parse_size("1TB").is_err());
    }

    #[test]
    fn values_read_numbers_and_strings_alike() {
        #[derive(serde::Deserialize)]
        struct T {
            a: Secs,
            b: Secs,
            c: Size,
            d: Wait,
            e: Wait,
        }
        let t: T = toml::from_str("a = 90\nb = \"1.5s\"\nc = \"64KiB\"\nd = false\ne = \"2s\"\n")
            .expect("parses");
        assert_eq!(t.a, Secs(Duration::from_secs(90)));
        assert_eq!(t.b, Secs(Duration::from_millis(1500)));
        assert_eq!(t.c, Size(64 << 10));
        assert_eq!(t.d, Wait(None));
        assert_eq!(t.e, Wait(Some(Duration::from_secs(2))));
        assert!(toml::from_str::<T>("a = -1\nb = 1\nc = 1\nd = 1\ne = 1\n").is_err());
    }

    #[test]
    fn field_names_are_serdes() {
        #[derive(serde::Deserialize)]
        #[allow(dead_code)]
        struct T {
            one: u8,
            #[serde(rename = "deux")]
            two: u8,
        }
        assert_eq!(field_names::<T>(), &["one", "deux"]);
    }
}
