//! The server under test, as the checks reach it: one host, one path and
//! method, the user's headers and body template, and a budget of requests
//! that no check can exceed.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _};
use bytes::Bytes;
use http::header::{HeaderName, HeaderValue};
use http::{HeaderMap, Method, Uri};
use http_body_util::{BodyExt, Full};

use crate::gateway::upstream_client::{tls_config, UpstreamClient};

/// What a request's `Idempotency-Key` header holds.
#[derive(Clone, Copy)]
pub(super) enum Key<'a> {
    /// No header.
    None,
    /// The header's exact value (a bare token, a quoted string, garbage).
    Raw(&'a str),
}

/// Whose request: the first credential (every check's default) or the
/// second one (the scope check).
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Who {
    First,
    Second,
}

/// One exchange, kept as evidence.
#[derive(Clone)]
pub(super) struct Answer {
    pub(super) status: u16,
    pub(super) headers: HeaderMap,
    pub(super) body: Bytes,
}

impl Answer {
    pub(super) fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    pub(super) fn content_type(&self) -> &str {
        self.headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    /// `201, 57 bytes: {"id":"pay_…` for a report.
    pub(super) fn brief(&self) -> String {
        let text = String::from_utf8_lossy(&self.body);
        let mut shown: String = text.chars().take(80).collect();
        if shown.len() < text.len() {
            shown.push('…');
        }
        format!(
            "{} ({} bytes{}): {}",
            self.status,
            self.body.len(),
            if self.headers.contains_key("idempotent-replayed") {
                ", Idempotent-Replayed"
            } else {
                ""
            },
            shown.replace('\n', " ")
        )
    }
}

/// Why a request got no answer.
#[derive(Debug)]
pub(super) enum SendError {
    /// `--max-requests` reached.
    Budget(usize),
    /// The network or the server's connection failed.
    Failed(String),
}

impl std::fmt::Display for SendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Budget(max) => write!(f, "the request budget ({max}, --max-requests) is spent"),
            Self::Failed(e) => write!(f, "no answer: {e}"),
        }
    }
}

/// The server under test.
pub(super) struct Target {
    client: UpstreamClient<Full<Bytes>>,
    uri: Uri,
    pub(super) method: Method,
    headers: Vec<(HeaderName, HeaderValue)>,
    /// The two credentials of the scope check (a header given twice).
    credentials: Option<(HeaderName, HeaderValue, HeaderValue)>,
    template: String,
    /// The header that makes the endpoint fail (`--fail-header`).
    fail: Option<(HeaderName, HeaderValue)>,
    max: usize,
    sent: AtomicUsize,
    timeout: Duration,
}

impl Target {
    /// The target of `args` (`--target`, `--path`, `--method`, the
    /// `--header`s, one name given twice: two credentials), with the body
    /// `template` (the `--body` or the `--body-file`'s content).
    pub(super) fn new(args: &super::ConformanceArgs, template: String) -> anyhow::Result<Self> {
        let (target, path, method, headers) =
            (&args.target, &args.path, &args.method, &args.headers);
        let (fail_header, max, ca_file) = (
            args.fail_header.as_deref(),
            args.max_requests,
            args.ca_file.as_deref(),
        );
        let base: Uri = target
            .parse()
            .map_err(|e| anyhow!("--target {target:?}: {e}; write it as http://HOST:PORT"))?;
        let tls = match base.scheme_str() {
            Some("http") => None,
            Some("https") => Some(std::sync::Arc::new(tls_config(ca_file)?)),
            _ => bail!("--target {target:?} must start with http:// or https://"),
        };
        let Some(authority) = base.authority().cloned() else {
            bail!("--target {target:?} has no host");
        };
        if !path.starts_with('/') {
            bail!("--path {path:?} must start with /");
        }
        let prefix = base.path().trim_end_matches('/');
        let uri = Uri::builder()
            .scheme(base.scheme_str().unwrap_or("http"))
            .authority(authority)
            .path_and_query(format!("{prefix}{path}"))
            .build()
            .with_context(|| format!("--target {target:?} with --path {path:?}"))?;
        let method: Method = method
            .to_ascii_uppercase()
            .parse()
            .map_err(|e| anyhow!("--method {method:?}: {e}"))?;
        let mut parsed: Vec<(HeaderName, HeaderValue)> = Vec::new();
        let mut credentials = None;
        for h in headers {
            let Some((name, value)) = h.split_once(':') else {
                bail!("--header {h:?} must be 'Name: value'");
            };
            let name = HeaderName::from_bytes(name.trim().as_bytes())
                .map_err(|e| anyhow!("--header {h:?}: {e}"))?;
            let value =
                HeaderValue::from_str(value.trim()).map_err(|e| anyhow!("--header {h:?}: {e}"))?;
            if name == "idempotency-key" {
                bail!("--header {h:?}: the checks choose the Idempotency-Key of each request");
            }
            match parsed.iter().position(|(n, _)| *n == name) {
                Some(i) if credentials.is_none() => {
                    let (n, first) = parsed.remove(i);
                    credentials = Some((n, first, value));
                }
                Some(_) => bail!("--header {h:?}: only one header may be given twice (the two credentials of the scope check)"),
                None => parsed.push((name, value)),
            }
        }
        let fail = match fail_header {
            None => None,
            Some(h) => {
                let (name, value) = h
                    .split_once(':')
                    .ok_or_else(|| anyhow!("--fail-header {h:?} must be 'Name: value'"))?;
                Some((
                    HeaderName::from_bytes(name.trim().as_bytes())
                        .map_err(|e| anyhow!("--fail-header {h:?}: {e}"))?,
                    HeaderValue::from_str(value.trim())
                        .map_err(|e| anyhow!("--fail-header {h:?}: {e}"))?,
                ))
            }
        };
        Ok(Self {
            client: UpstreamClient::new(Duration::from_secs(10), tls, true),
            fail,
            uri,
            method,
            headers: parsed,
            credentials,
            template,
            max,
            sent: AtomicUsize::new(0),
            timeout: Duration::from_secs(30),
        })
    }

    /// `POST http://host/payments`, for reports.
    pub(super) fn describe(&self) -> String {
        format!("{} {}", self.method, self.uri)
    }

    /// Requests sent so far.
    pub(super) fn sent(&self) -> usize {
        self.sent.load(Ordering::Relaxed)
    }

    /// Requests left in the budget.
    pub(super) fn left(&self) -> usize {
        self.max.saturating_sub(self.sent())
    }

    /// Whether two credentials were given.
    pub(super) fn has_two_credentials(&self) -> bool {
        self.credentials.is_some()
    }

    /// The name of the credential header, for reports.
    pub(super) fn credential_name(&self) -> Option<&str> {
        self.credentials.as_ref().map(|(n, _, _)| n.as_str())
    }

    /// A body from the template, each `{{uuid}}` a new UUID.
    pub(super) fn body(&self) -> Bytes {
        let mut out = String::with_capacity(self.template.len());
        let mut rest = self.template.as_str();
        while let Some(i) = rest.find("{{uuid}}") {
            out.push_str(&rest[..i]);
            out.push_str(&idem_core::key::generate_uuid_v4());
            rest = &rest[i + "{{uuid}}".len()..];
        }
        out.push_str(rest);
        Bytes::from(out)
    }

    /// Another payload than `body`: a JSON object with one more member, or
    /// the text with a line added.
    pub(super) fn other_body(&self, body: &Bytes) -> Bytes {
        match serde_json::from_slice::<serde_json::Value>(body) {
            Ok(serde_json::Value::Object(mut map)) => {
                map.insert(
                    "idem_conformance_other".into(),
                    serde_json::Value::String(idem_core::key::generate_uuid_v4()),
                );
                Bytes::from(serde_json::Value::Object(map).to_string())
            }
            _ => {
                let mut v = body.to_vec();
                v.extend_from_slice(b"\nidem-conformance-other");
                Bytes::from(v)
            }
        }
    }

    /// `X-Fail: 1`, the `--fail-header` given, for reports.
    pub(super) fn fail_header(&self) -> Option<String> {
        self.fail
            .as_ref()
            .map(|(n, v)| format!("{n}: {}", v.to_str().unwrap_or("…")))
    }

    /// Sends one request with the `--fail-header`.
    pub(super) async fn send_failing(
        &self,
        key: Key<'_>,
        body: &Bytes,
    ) -> Result<Answer, SendError> {
        self.exchange(key, body, Who::First, true).await
    }

    /// Sends one request and reads its whole answer.
    pub(super) async fn send(
        &self,
        key: Key<'_>,
        body: &Bytes,
        who: Who,
    ) -> Result<Answer, SendError> {
        self.exchange(key, body, who, false).await
    }

    async fn exchange(
        &self,
        key: Key<'_>,
        body: &Bytes,
        who: Who,
        failing: bool,
    ) -> Result<Answer, SendError> {
        if self.sent.fetch_add(1, Ordering::Relaxed) >= self.max {
            self.sent.fetch_sub(1, Ordering::Relaxed);
            return Err(SendError::Budget(self.max));
        }
        let mut req = http::Request::builder()
            .method(self.method.clone())
            .uri(self.uri.clone());
        for (n, v) in &self.headers {
            req = req.header(n, v);
        }
        if !self
            .headers
            .iter()
            .any(|(n, _)| n == http::header::CONTENT_TYPE)
            && serde_json::from_slice::<serde_json::Value>(body).is_ok()
        {
            req = req.header(http::header::CONTENT_TYPE, "application/json");
        }
        if let Some((name, first, second)) = &self.credentials {
            req = req.header(name, if who == Who::First { first } else { second });
        }
        if let Key::Raw(k) = key {
            req = req.header("idempotency-key", k);
        }
        if let (true, Some((name, value))) = (failing, &self.fail) {
            req = req.header(name, value);
        }
        let req = req
            .body(Full::new(body.clone()))
            .map_err(|e| SendError::Failed(e.to_string()))?;
        let exchange = async {
            let res = self
                .client
                .request(req)
                .await
                .map_err(|e| SendError::Failed(e.to_string()))?;
            let (parts, body) = res.into_parts();
            let body = body
                .collect()
                .await
                .map_err(|e| SendError::Failed(format!("the answer's body broke off: {e}")))?
                .to_bytes();
            Ok(Answer {
                status: parts.status.as_u16(),
                headers: parts.headers,
                body,
            })
        };
        match tokio::time::timeout(self.timeout, exchange).await {
            Ok(r) => r,
            Err(_) => Err(SendError::Failed(format!(
                "no answer within {:?}",
                self.timeout
            ))),
        }
    }
}

/// A new key, as most clients make them.
pub(super) fn new_key() -> String {
    idem_core::key::generate_uuid_v4()
}
