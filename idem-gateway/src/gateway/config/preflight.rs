//! What would fail at start, checked while validating (so `--check` and
//! the start refuse it alike, exit 2, naming the key).

use anyhow::{anyhow, Context};

use super::{Names, Settings};

/// What would fail at start, refused now (so `--check` says it): an
/// address that cannot be listened on, a file that cannot be read.
pub(super) fn preflight(
    s: &Settings,
    admin_listen: Option<&str>,
    names: &Names,
) -> anyhow::Result<()> {
    use std::net::ToSocketAddrs;
    let n = |key: &str| names.of(key);
    for (key, addr) in [
        ("listen", Some(s.listen.as_str())),
        ("admin_listen", admin_listen),
    ] {
        let Some(addr) = addr else { continue };
        addr.to_socket_addrs()
            .ok()
            .and_then(|mut a| a.next())
            .ok_or_else(|| {
                anyhow!(
                    "{}: {addr:?} is not an address to listen on; write HOST:PORT, as in 127.0.0.1:8080 or 0.0.0.0:8080",
                    n(key)
                )
            })?;
    }
    if let Some(path) = &s.admin_token_file {
        crate::gateway::read_token(path).with_context(|| n("admin_token_file"))?;
    }
    for (key, path) in [
        ("key_signing_secret_file", &s.key_signing_secret_file),
        ("secret_file", &s.secret_file),
    ] {
        if let Some(path) = path {
            idem::Secret::read_file(path).map_err(|e| {
                anyhow!(
                    "{}: {}: {e}; create one with: openssl rand -hex 32 > {}",
                    n(key),
                    path.display(),
                    path.display()
                )
            })?;
        }
    }
    if let Some(path) = &s.store_ca_file {
        std::fs::read(path)
            .with_context(|| format!("{}: cannot read {}", n("store_ca_file"), path.display()))?;
    }
    Ok(())
}
