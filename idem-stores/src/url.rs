//! Store URLs (`memory://`, `sqlite://PATH`, `redis://…`, `postgres://…`)
//! and the redaction of the credentials any URL may carry.

use std::path::PathBuf;

use anyhow::bail;

/// A parsed `--store` URL.
#[derive(Clone, PartialEq, Eq)]
pub enum StoreUrl {
    /// `memory://`: in this process only.
    Memory,
    /// `sqlite://PATH`: `sqlite://idem.db` is relative, `sqlite:///var/lib/idem.db` absolute.
    Sqlite(PathBuf),
    /// `redis://HOST:PORT/DB`, `rediss://…` (TLS), or
    /// `redis+cluster://HOST:PORT,HOST:PORT` (`rediss+cluster://…`).
    Redis(String),
    /// `postgres://USER[:PASSWORD]@HOST:PORT/DATABASE` (or `postgresql://`),
    /// with `?sslmode=require|verify-ca|verify-full` for TLS.
    Postgres(String),
}

impl std::fmt::Debug for StoreUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

/// `url` with its credentials replaced by `***`: the password of its user
/// information (`postgres://u:***@h`, `redis://:***@h`) and the values of
/// query parameters that carry secrets (`?password=***`, `sslpassword`,
/// `token`, `secret`). Every URL idem prints goes through this.
pub fn redact(url: &str) -> String {
    let (head, query) = match url.split_once('?') {
        Some((h, q)) => (h, Some(q)),
        None => (url, None),
    };
    let mut out = match (head.find("://"), head.rfind('@')) {
        (Some(s), Some(at)) if at > s => match head[s + 3..at].split_once(':') {
            Some((user, _)) => format!("{}://{user}:***{}", &head[..s], &head[at..]),
            None => head.to_owned(),
        },
        _ => head.to_owned(),
    };
    if let Some(query) = query {
        out.push('?');
        let params: Vec<String> = query
            .split('&')
            .map(|pair| match pair.split_once('=') {
                Some((name, _)) if is_secret_param(name) => format!("{name}=***"),
                _ => pair.to_owned(),
            })
            .collect();
        out.push_str(&params.join("&"));
    }
    out
}

fn is_secret_param(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    ["password", "secret", "token"]
        .iter()
        .any(|s| name.contains(s))
        || matches!(name.as_str(), "pass" | "passwd" | "pwd" | "auth")
}

impl std::str::FromStr for StoreUrl {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> anyhow::Result<Self> {
        if s == "memory://" || s == "memory:" || s == "memory" {
            return Ok(Self::Memory);
        }
        if let Some(path) = s.strip_prefix("sqlite://") {
            if path.is_empty() {
                bail!("store URL {s:?} has no file path; use sqlite://idem.db or sqlite:///absolute/path.db");
            }
            return Ok(Self::Sqlite(PathBuf::from(path)));
        }
        if s.starts_with("redis://")
            || s.starts_with("rediss://")
            || s.starts_with("redis+cluster://")
            || s.starts_with("rediss+cluster://")
        {
            return Ok(Self::Redis(s.to_owned()));
        }
        if s.starts_with("postgres://") || s.starts_with("postgresql://") {
            return Ok(Self::Postgres(s.to_owned()));
        }
        bail!(
            "unknown store URL {:?}; use sqlite://PATH (the default is sqlite://idem.db), memory://, \
             redis://HOST:PORT (rediss:// for TLS), redis+cluster://HOST:PORT,HOST:PORT (rediss+cluster://) \
             or postgres://USER@HOST:PORT/DB (?sslmode=verify-full for TLS)",
            redact(s)
        )
    }
}

impl std::fmt::Display for StoreUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Memory => f.write_str("memory://"),
            Self::Sqlite(p) => write!(f, "sqlite://{}", p.display()),
            Self::Redis(u) | Self::Postgres(u) => f.write_str(&redact(u)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!("memory://".parse::<StoreUrl>().ok(), Some(StoreUrl::Memory));
        assert_eq!(
            "sqlite://idem.db".parse::<StoreUrl>().ok(),
            Some(StoreUrl::Sqlite("idem.db".into()))
        );
        assert_eq!(
            "sqlite:///var/lib/idem.db".parse::<StoreUrl>().ok(),
            Some(StoreUrl::Sqlite("/var/lib/idem.db".into()))
        );
        assert!("sqlite://".parse::<StoreUrl>().is_err());
        assert!("mysql://x".parse::<StoreUrl>().is_err());
        for tls in ["rediss://h:6380/0", "rediss+cluster://a:1,b:2"] {
            assert!(matches!(tls.parse::<StoreUrl>(), Ok(StoreUrl::Redis(_))));
        }
        assert!(matches!(
            "redis+cluster://a:1,b:2".parse::<StoreUrl>(),
            Ok(StoreUrl::Redis(_))
        ));
        assert_eq!(
            "postgres://u:secret@h:5432/db"
                .parse::<StoreUrl>()
                .map(|u| u.to_string())
                .ok(),
            Some("postgres://u:***@h:5432/db".to_owned())
        );
    }

    #[test]
    fn credentials_are_redacted_wherever_they_are_in_a_url() {
        for (url, shown) in [
            ("postgres://u:pw@h/db", "postgres://u:***@h/db"),
            ("redis://:pw@h:6379/0", "redis://:***@h:6379/0"),
            (
                "postgres://h/db?user=u&password=pw&sslmode=verify-full",
                "postgres://h/db?user=u&password=***&sslmode=verify-full",
            ),
            (
                "postgresql://u:pw@h/db?sslpassword=k&application_name=idem",
                "postgresql://u:***@h/db?sslpassword=***&application_name=idem",
            ),
            ("http://h:1/x?token=t", "http://h:1/x?token=***"),
            ("redis://h:6379/0", "redis://h:6379/0"),
        ] {
            assert_eq!(redact(url), shown);
            assert!(!redact(url).contains("pw"), "{url}");
        }
        let store: StoreUrl = "postgres://h/db?password=pw".parse().expect("url");
        assert_eq!(store.to_string(), "postgres://h/db?password=***");
        assert!(!format!("{store:?}").contains("pw"));
    }
}
