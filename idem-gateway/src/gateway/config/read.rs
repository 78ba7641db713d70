//! Reading the TOML table into typed settings: errors that name the key
//! (and the flag, when a flag gave the value) and suggest the closest known
//! key for a misspelt one.

use std::collections::HashSet;
use std::path::Path;

use anyhow::{anyhow, Context};
use serde::Deserialize;

/// Names a top-level key as the user set it: its flag when one gave it.
pub(super) struct Names(pub(super) HashSet<&'static str>);

impl Names {
    pub(super) fn of(&self, key: &str) -> String {
        if self.0.contains(key) {
            format!("--{}", key.replace('_', "-"))
        } else {
            key.to_owned()
        }
    }

    /// `e` with a leading top-level key replaced by its flag when a flag
    /// gave it.
    pub(super) fn rename(&self, e: anyhow::Error) -> anyhow::Error {
        let msg = format!("{e:#}");
        match msg.split_once(':') {
            Some((key, rest)) if self.0.contains(key) => anyhow!("{}:{rest}", self.of(key)),
            _ => e,
        }
    }
}

/// Reads `table` as a `T`; errors start with the key's path under `at`.
/// `known` are the keys this table may hold (for a misspelt one, the
/// closest is suggested).
pub(super) fn read<T: for<'de> Deserialize<'de>>(
    table: toml::Table,
    at: &str,
    known: &[&[&str]],
) -> anyhow::Result<T> {
    serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner().message().trim_end().to_owned();
        let inner = match inner.strip_prefix("unknown field `") {
            Some(rest) => {
                let key = rest.split('`').next().unwrap_or_default();
                match closest(key, known.iter().flat_map(|k| k.iter().copied())) {
                    Some(near) => format!("unknown key; did you mean {near}?"),
                    None => "unknown key (docs/config.md lists the keys)".to_owned(),
                }
            }
            None => inner,
        };
        anyhow!("{at}{path}: {inner}")
    })
}

/// The name in `names` closest to `key`, if it is close (a typo, not
/// another word).
pub(super) fn closest<'a>(key: &str, names: impl Iterator<Item = &'a str>) -> Option<&'a str> {
    fn distance(a: &str, b: &str) -> usize {
        let b: Vec<char> = b.chars().collect();
        let mut row: Vec<usize> = (0..=b.len()).collect();
        for (i, ca) in a.chars().enumerate() {
            let mut prev = row[0];
            row[0] = i + 1;
            for (j, cb) in b.iter().enumerate() {
                let cur = row[j + 1];
                row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(cur + 1);
                prev = cur;
            }
        }
        row[b.len()]
    }
    names
        .map(|n| (distance(key, n), n))
        .filter(|&(d, n)| d <= 2.max(n.len() / 4))
        .min()
        .map(|(_, n)| n)
}

/// Moves the keys of `names` from `table` into a table of their own.
pub(super) fn take_keys(table: &mut toml::Table, names: &[&str]) -> toml::Table {
    names
        .iter()
        .filter_map(|&k| table.remove(k).map(|v| (k.to_owned(), v)))
        .collect()
}

/// The config file's table.
pub(super) fn read_file(path: &Path) -> anyhow::Result<toml::Table> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the config file {}", path.display()))?;
    text.parse()
        .map_err(|e| anyhow!("config file {}: {e}", path.display()))
}
