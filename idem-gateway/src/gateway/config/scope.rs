//! Whom a key belongs to: `scope` (`header:NAME`, `jwt:CLAIM`, `none`), the
//! older `scope_header`, and the keys a `jwt:` scope verifies tokens with.
//! docs/SECURITY.md says what each source trusts.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use idem::{JwtScope, ScopeSource};

use super::route::header_name;
use super::values::Secs;
use super::{Names, Settings};

/// The `jwt_*` keys of a `jwt:CLAIM` scope, as given.
#[derive(Debug, Clone, Default)]
pub struct JwtKeys {
    /// `jwt_hs256_secret_file`.
    pub hs256_secret_file: Option<PathBuf>,
    /// `jwt_jwks_file`.
    pub jwks_file: Option<PathBuf>,
    /// `jwt_issuer`.
    pub issuer: Option<String>,
    /// `jwt_audience`.
    pub audience: Option<String>,
    /// `jwt_leeway`.
    pub leeway: Duration,
}

/// The scope source the settings name, its `scope` value
/// (`header:authorization`, `jwt:sub`, `none`), and how `--check` describes
/// it.
pub(super) fn scope_source(
    s: &Settings,
    names: &Names,
) -> anyhow::Result<(ScopeSource, String, String)> {
    let n = |key: &str| names.of(key);
    let jwt_keys = [
        ("jwt_hs256_secret_file", s.jwt_hs256_secret_file.is_some()),
        ("jwt_jwks_file", s.jwt_jwks_file.is_some()),
        ("jwt_issuer", s.jwt_issuer.is_some()),
        ("jwt_audience", s.jwt_audience.is_some()),
    ];
    let text = match &s.scope {
        Some(text) => {
            if s.scope_header != super::Settings::default().scope_header {
                bail!(
                    "{} and {} are both set; keep {} (scope = \"header:{}\" says the same)",
                    n("scope"),
                    n("scope_header"),
                    n("scope"),
                    s.scope_header
                );
            }
            text.trim().to_owned()
        }
        None => match s.scope_header.trim() {
            h if h.is_empty() || h.eq_ignore_ascii_case("none") => "none".to_owned(),
            h => format!("header:{h}"),
        },
    };
    let not_jwt = |source: &str| -> anyhow::Result<()> {
        if let Some((key, _)) = jwt_keys.iter().find(|(_, set)| *set) {
            bail!(
                "{} is set, but the scope is {source}, which verifies no token; set {} = \"jwt:sub\" (or another claim) to use it",
                n(key),
                n("scope")
            );
        }
        Ok(())
    };
    if text.eq_ignore_ascii_case("none") {
        not_jwt("none")?;
        return Ok((
            ScopeSource::Shared,
            "none".into(),
            "every request in one scope".into(),
        ));
    }
    if let Some(name) = strip_prefix_ci(&text, "header:") {
        not_jwt(&text)?;
        let name = header_name(&n("scope"), name)?;
        let value = format!("header:{name}");
        return Ok((
            ScopeSource::Header(name),
            value,
            "the header's value".into(),
        ));
    }
    if let Some(claim) = strip_prefix_ci(&text, "jwt:") {
        let claim = claim.trim();
        if claim.is_empty() {
            bail!("{}: name the claim, as in \"jwt:sub\"", n("scope"));
        }
        return jwt_scope(s, names, claim)
            .map(|(scope, shown)| (ScopeSource::verified(scope), format!("jwt:{claim}"), shown));
    }
    Err(anyhow!(
        "{}: {text:?} is not a scope source; use \"header:NAME\" (the header's value, Authorization by default, or one set by a trusted proxy), \"jwt:CLAIM\" (a verified bearer token's claim, as in \"jwt:sub\") or \"none\"",
        n("scope")
    ))
}

/// The verifier of a `jwt:CLAIM` scope.
fn jwt_scope(s: &Settings, names: &Names, claim: &str) -> anyhow::Result<(JwtScope, String)> {
    let n = |key: &str| names.of(key);
    let (scope, keys) = match (&s.jwt_hs256_secret_file, &s.jwt_jwks_file) {
        (Some(_), Some(_)) => bail!(
            "{} and {} are both set; a jwt scope verifies with one of them",
            n("jwt_hs256_secret_file"),
            n("jwt_jwks_file")
        ),
        (None, None) => bail!(
            "{}: a jwt scope needs the keys that verify tokens: set {} (the issuer's JSON Web Key Set, for RS256 and ES256) or {} (a shared HS256 secret)",
            n("scope"),
            n("jwt_jwks_file"),
            n("jwt_hs256_secret_file")
        ),
        (Some(path), None) => {
            let secret = read(path, &n("jwt_hs256_secret_file"))?;
            private(path, &n("jwt_hs256_secret_file"))?;
            // A trailing newline is the editor's or `echo`'s, not the secret's.
            let secret = secret.trim_end_matches(['\r', '\n']);
            let scope = JwtScope::try_hs256(secret.as_bytes())
                .with_context(|| format!("{}: {}", n("jwt_hs256_secret_file"), path.display()))?;
            (scope, format!("HS256 secret {}", path.display()))
        }
        (None, Some(path)) => {
            let json = read(path, &n("jwt_jwks_file"))?;
            let scope = JwtScope::jwks(&json)
                .with_context(|| format!("{}: {}", n("jwt_jwks_file"), path.display()))?;
            (scope, format!("JWKS {}", path.display()))
        }
    };
    let Secs(leeway) = s.jwt_leeway;
    let mut scope = scope.claim(claim).leeway(leeway);
    let mut shown = format!("the verified {claim:?} claim ({keys}");
    if let Some(iss) = &s.jwt_issuer {
        scope = scope.issuer(iss.clone());
        shown.push_str(&format!(", issuer {iss:?}"));
    }
    match &s.jwt_audience {
        Some(aud) => {
            scope = scope.audience(aud.clone());
            shown.push_str(&format!(", audience {aud:?}"));
        }
        None => shown.push_str(", any audience"),
    }
    shown.push_str(&format!(", leeway {leeway:?})"));
    Ok((scope, shown))
}

fn read(path: &Path, key: &str) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("{key}: cannot read {}", path.display()))
}

/// Refuses a secret other users can read: whoever reads it can sign a
/// token for any subject and read that subject's replays.
fn private(path: &Path, key: &str) -> anyhow::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path)
            .with_context(|| format!("{key}: cannot read {}", path.display()))?
            .permissions()
            .mode();
        if mode & 0o077 != 0 {
            bail!(
                "{key}: {} can be read by other users, who could then sign a token for anyone; chmod 600 {}",
                path.display(),
                path.display()
            );
        }
    }
    Ok(())
}

fn strip_prefix_ci<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
    let head = text.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &text[prefix.len()..])
}
