//! The client: one key per logical operation, chosen before the first try
//! and sent on every retry.

use std::future::Future;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use tokio::time::Instant;

use crate::classify::{classify, parse_retry_after, problem_slug, Attempt, Decision};
use crate::{Error, LastAttempt};

/// How a key is chosen for an operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KeyStrategy {
    /// A random UUID v4. The default.
    #[default]
    Uuid,
    /// SHA-256 of the body's canonical JSON: the same content is the same
    /// operation, even from two processes.
    Content,
    /// Milliseconds since the epoch and a random part: sortable.
    Time,
}

/// Retries: how many, how far apart, for how long in all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in all, the first included. The default is 5.
    pub max_attempts: u32,
    /// The backoff's first ceiling; it doubles per retry. The default is 100 ms.
    pub base_delay: Duration,
    /// The largest backoff ceiling. The default is 5 s.
    pub max_delay: Duration,
    /// Each attempt's timeout. The default is 10 s.
    pub attempt_timeout: Duration,
    /// The whole call, retries and waits included. The default is 30 s.
    pub deadline: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 5,
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(5),
            attempt_timeout: Duration::from_secs(10),
            deadline: Duration::from_secs(30),
        }
    }
}

impl RetryPolicy {
    /// The wait before retry number `retry` (1 for the first retry):
    /// exponential backoff with full jitter (a uniform draw below the
    /// ceiling, so many clients do not retry in step), unless the server
    /// said when with `Retry-After`, which is honoured as given.
    pub fn delay(&self, retry: u32, retry_after: Option<Duration>, unit_random: f64) -> Duration {
        if let Some(d) = retry_after {
            return d;
        }
        let ceiling = self
            .base_delay
            .saturating_mul(1u32 << retry.saturating_sub(1).min(20))
            .min(self.max_delay);
        ceiling.mul_f64(unit_random.clamp(0.0, 1.0))
    }
}

/// A final answer.
#[derive(Debug, Clone)]
pub struct Answer {
    /// Its status.
    pub status: StatusCode,
    /// Its headers.
    pub headers: HeaderMap,
    /// Its body.
    pub body: Bytes,
    /// Whether it is a stored answer replayed by the server
    /// (`Idempotent-Replayed: true`): the operation had already executed.
    pub replayed: bool,
    /// The key sent (on every attempt).
    pub key: String,
    /// Attempts made, this one included.
    pub attempts: u32,
}

impl Answer {
    /// The body as JSON.
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_slice(&self.body)
    }
}

/// A retry about to happen, as the client's retry hook sees it.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct RetryEvent {
    /// The attempt that just failed (1 for the first).
    pub attempt: u32,
    /// How long the client waits before the next one.
    pub delay: Duration,
    /// Why: the failed attempt's status and body, or its error.
    pub reason: String,
    /// The key, the same on every attempt.
    pub key: String,
}

type RetryHook = std::sync::Arc<dyn Fn(&RetryEvent) + Send + Sync>;

/// What one attempt gave, before classification.
#[derive(Debug)]
pub(crate) enum Sent {
    Answer {
        status: StatusCode,
        headers: HeaderMap,
        body: Bytes,
    },
    Failed {
        timeout: bool,
        error: reqwest::Error,
    },
}

/// The retrying client. Cheap to clone (one connection pool).
///
/// # Examples
///
/// ```no_run
/// # async fn example() -> Result<(), idem_client::Error> {
/// let client = idem_client::Client::new();
/// let answer = client
///     .post("http://127.0.0.1:8080/payments")
///     .json(&serde_json::json!({"amount": 42.5, "currency": "EUR", "recipient": "acct_123"}))
///     .send()
///     .await?;
/// println!("{} (replayed: {})", answer.status, answer.replayed);
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    policy: RetryPolicy,
    strategy: KeyStrategy,
    on_retry: Option<RetryHook>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("policy", &self.policy)
            .field("strategy", &self.strategy)
            .field("on_retry", &self.on_retry.is_some())
            .finish_non_exhaustive()
    }
}

impl Default for Client {
    fn default() -> Self {
        Self::new()
    }
}

impl Client {
    /// A client with the default [`RetryPolicy`] and UUID v4 keys.
    pub fn new() -> Self {
        Self {
            http: reqwest::Client::new(),
            policy: RetryPolicy::default(),
            strategy: KeyStrategy::Uuid,
            on_retry: None,
        }
    }

    /// Calls `hook` before each retry (its attempt, delay and reason): for
    /// logs and metrics of retries.
    pub fn on_retry(mut self, hook: impl Fn(&RetryEvent) + Send + Sync + 'static) -> Self {
        self.on_retry = Some(std::sync::Arc::new(hook));
        self
    }

    /// Sets the retry policy. The default is [`RetryPolicy::default`].
    pub fn retry_policy(mut self, policy: RetryPolicy) -> Self {
        self.policy = policy;
        self
    }

    /// Sets how keys are chosen. The default is [`KeyStrategy::Uuid`].
    pub fn key_strategy(mut self, strategy: KeyStrategy) -> Self {
        self.strategy = strategy;
        self
    }

    /// Uses this `reqwest` client (its pool, TLS and timeouts).
    pub fn with_http(mut self, http: reqwest::Client) -> Self {
        self.http = http;
        self
    }

    /// One logical operation: `method` on `url`.
    pub fn request(&self, method: Method, url: impl Into<String>) -> Operation {
        Operation {
            client: self.clone(),
            method,
            url: url.into(),
            headers: HeaderMap::new(),
            body: Bytes::new(),
            key: None,
        }
    }

    /// A POST operation.
    pub fn post(&self, url: impl Into<String>) -> Operation {
        self.request(Method::POST, url)
    }

    /// A PATCH operation.
    pub fn patch(&self, url: impl Into<String>) -> Operation {
        self.request(Method::PATCH, url)
    }
}

/// One logical operation: built once, sent with the same key on every try.
#[derive(Debug)]
pub struct Operation {
    client: Client,
    method: Method,
    url: String,
    headers: HeaderMap,
    body: Bytes,
    key: Option<String>,
}

impl Operation {
    /// Adds a header.
    pub fn header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        self.headers.append(name, value);
        self
    }

    /// Sets `Authorization: Bearer <token>` (it is also the server's default scope).
    pub fn bearer(self, token: &str) -> Result<Self, Error> {
        let v = HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| {
            Error::Build("the bearer token has characters a header cannot hold".into())
        })?;
        Ok(self.header(http::header::AUTHORIZATION, v))
    }

    /// Sets a JSON body (and its content type).
    pub fn json<T: serde::Serialize + ?Sized>(mut self, value: &T) -> Self {
        // Serialising plain data does not fail; an error leaves an empty body.
        self.body = serde_json::to_vec(value)
            .map(Bytes::from)
            .unwrap_or_default();
        self.headers.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        self
    }

    /// Sets a raw body.
    pub fn body(mut self, body: impl Into<Bytes>) -> Self {
        self.body = body.into();
        self
    }

    /// Uses this key instead of generating one: for an operation that must
    /// keep its key across process restarts (store it with the operation).
    pub fn key(mut self, key: impl Into<String>) -> Self {
        self.key = Some(key.into());
        self
    }

    /// The key this operation sends, chosen now if not yet.
    pub fn chosen_key(&mut self) -> &str {
        let strategy = self.client.strategy;
        let body = &self.body;
        self.key.get_or_insert_with(|| match strategy {
            KeyStrategy::Uuid => idem_core::key::generate_uuid_v4(),
            KeyStrategy::Content => idem_core::key::generate_content_key(body),
            KeyStrategy::Time => idem_core::key::generate_time_key(),
        })
    }

    /// Sends the operation, retrying per the client's [`RetryPolicy`] with
    /// the same key, until a final answer, a refusal, or the limits.
    pub async fn send(mut self) -> Result<Answer, Error> {
        let key = self.chosen_key().to_owned();
        let key_value = HeaderValue::from_str(&key)
            .map_err(|_| Error::Build(format!("the key {key:?} cannot be sent as a header")))?;
        let policy = self.client.policy;
        let hook = self.client.on_retry.clone();
        let http = self.client.http.clone();
        let (method, url, mut headers, body) = (self.method, self.url, self.headers, self.body);
        headers.insert(HeaderName::from_static("idempotency-key"), key_value);
        run(&policy, key, hook.as_deref(), |timeout| {
            let request = http
                .request(method.clone(), url.as_str())
                .headers(headers.clone())
                .body(body.clone())
                .timeout(timeout);
            async move {
                match request.send().await {
                    Ok(res) => {
                        let status = res.status();
                        let headers = res.headers().clone();
                        match res.bytes().await {
                            Ok(body) => Sent::Answer {
                                status,
                                headers,
                                body,
                            },
                            // The answer broke off: as good as lost.
                            Err(error) => Sent::Failed {
                                timeout: error.is_timeout(),
                                error,
                            },
                        }
                    }
                    Err(error) => Sent::Failed {
                        timeout: error.is_timeout(),
                        error,
                    },
                }
            }
        })
        .await
    }
}

fn unit_random() -> f64 {
    let bits = getrandom::u64().unwrap_or(0x9e37_79b9_7f4a_7c15);
    (bits >> 11) as f64 / (1u64 << 53) as f64
}

/// The retry loop, apart from HTTP so it can be tested in paused time:
/// `attempt(timeout)` sends once.
pub(crate) async fn run<F, Fut>(
    policy: &RetryPolicy,
    key: String,
    hook: Option<&(dyn Fn(&RetryEvent) + Send + Sync)>,
    mut attempt: F,
) -> Result<Answer, Error>
where
    F: FnMut(Duration) -> Fut,
    Fut: Future<Output = Sent>,
{
    let started = Instant::now();
    let deadline = started + policy.deadline;
    let mut attempts = 0u32;
    loop {
        attempts += 1;
        let left = deadline.saturating_duration_since(Instant::now());
        let sent = attempt(policy.attempt_timeout.min(left)).await;
        let (decision, retry_after, last) = match &sent {
            Sent::Answer {
                status,
                headers,
                body,
            } => {
                let retry_after = headers
                    .get(http::header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| parse_retry_after(v, SystemTime::now()));
                let problem = problem_slug(headers, body);
                let outcome = Attempt::Answer {
                    status: status.as_u16(),
                    problem: problem.as_deref(),
                };
                (
                    classify(&outcome),
                    retry_after,
                    format!(
                        "status {status}: {}",
                        String::from_utf8_lossy(&body[..body.len().min(300)])
                    ),
                )
            }
            Sent::Failed {
                timeout: true,
                error,
            } => (
                classify(&Attempt::Timeout),
                None,
                format!("timed out: {error}"),
            ),
            Sent::Failed {
                timeout: false,
                error,
            } => (classify(&Attempt::ConnectError), None, format!("{error}")),
        };
        let sent = match (decision, sent) {
            (
                Decision::Stop,
                Sent::Answer {
                    status,
                    headers,
                    body,
                },
            ) => return finish(status, headers, body, key, attempts),
            (_, sent) => sent,
        };
        // The last attempt, for an error that lets the caller retry later
        // with the same key.
        let last_attempt = |sent: Sent, key: &str| match sent {
            Sent::Answer {
                status,
                headers,
                body,
            } => LastAttempt::Answer(Box::new(answer(status, headers, body, key, attempts))),
            Sent::Failed { error, .. } => LastAttempt::Failed(error),
        };
        if attempts >= policy.max_attempts {
            let last = last_attempt(sent, &key);
            return Err(Error::GaveUp {
                key,
                attempts,
                last,
            });
        }
        let wait = policy.delay(attempts, retry_after, unit_random());
        if Instant::now() + wait >= deadline {
            let last = last_attempt(sent, &key);
            return Err(Error::Deadline {
                key,
                attempts,
                deadline: policy.deadline,
                last,
            });
        }
        tracing::debug!(attempts, ?wait, %last, "retrying with the same key");
        if let Some(hook) = hook {
            hook(&RetryEvent {
                attempt: attempts,
                delay: wait,
                reason: last,
                key: key.clone(),
            });
        }
        tokio::time::sleep(wait).await;
    }
}

/// A final answer, or the typed refusal its problem+json names.
fn finish(
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
    key: String,
    attempts: u32,
) -> Result<Answer, Error> {
    if status.is_client_error() {
        if let Some(slug) = problem_slug(&headers, &body) {
            let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
            let detail = v["detail"].as_str().unwrap_or_default().to_owned();
            match slug.as_str() {
                "idempotency-key-reused" => return Err(Error::KeyReused { key, detail }),
                "idempotency-key-invalid" => return Err(Error::KeyInvalid { key, detail }),
                "idempotency-key-missing" => return Err(Error::KeyMissing { detail }),
                "request-body-too-large" => return Err(Error::BodyTooLarge { detail }),
                _ => {}
            }
        }
    }
    Ok(answer(status, headers, body, &key, attempts))
}

fn answer(status: StatusCode, headers: HeaderMap, body: Bytes, key: &str, attempts: u32) -> Answer {
    let replayed = headers
        .get("idempotent-replayed")
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"true"));
    Answer {
        status,
        headers,
        body,
        replayed,
        key: key.to_owned(),
        attempts,
    }
}

#[cfg(test)]
mod tests;
