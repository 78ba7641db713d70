//! `idem keygen`: the client-side key strategies of the original design.

use std::path::Path;

use anyhow::Context;
use idem_core::key;

/// Which strategy.
#[derive(Debug, Clone)]
pub enum Strategy {
    /// A random UUID v4 (the default).
    Uuid,
    /// SHA-256 of a file's canonical JSON content (or raw bytes if not JSON).
    Content(std::path::PathBuf),
    /// Milliseconds since the epoch and a random part.
    Time,
}

/// Generates one key.
pub fn generate(strategy: &Strategy) -> anyhow::Result<String> {
    Ok(match strategy {
        Strategy::Uuid => key::generate_uuid_v4(),
        Strategy::Time => key::generate_time_key(),
        Strategy::Content(path) => content(path)?,
    })
}

fn content(path: &Path) -> anyhow::Result<String> {
    let data = if path == Path::new("-") {
        let mut buf = Vec::new();
        std::io::Read::read_to_end(&mut std::io::stdin(), &mut buf)
            .context("cannot read standard input")?;
        buf
    } else {
        std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?
    };
    Ok(key::generate_content_key(&data))
}
