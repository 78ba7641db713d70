//! Rule 11: the request body is read in full (it is part of the
//! fingerprint), refused as soon as it passes the route's limit, and given
//! up (408) when it does not arrive within the body read timeout, or stops
//! for longer than the body idle timeout: a client that sends headers and no
//! body, or trickles it, must not hold an in-flight slot.

use std::future::Future;
use std::pin::Pin;
use std::task::Poll;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::header::CONTENT_LENGTH;
use http::HeaderMap;
use http_body::Body;
use tokio::time::{Instant, Sleep};

use crate::layer::BoxError;

/// Why a request body was not read.
pub(super) enum ReadError {
    TooLarge,
    Failed(BoxError),
    /// Not all of it arrived within the body read timeout.
    TimedOut,
    /// No byte of it arrived for the body idle timeout.
    Idle,
}

/// How long a request body may take.
#[derive(Clone, Copy, Debug)]
pub(crate) struct BodyTimeouts {
    /// All of it, from the first wait for it.
    pub(crate) total: Duration,
    /// Between two of its chunks (and before the first).
    pub(crate) idle: Duration,
}

/// Reads a request body, refusing it as soon as it passes `limit`: a
/// declared `Content-Length` over the limit is refused before any byte is
/// read. The body must have arrived within `timeouts.total` of the first
/// wait for it, with no wait longer than `timeouts.idle`.
pub(super) async fn read_limited<B>(
    headers: &HeaderMap,
    body: B,
    limit: usize,
    timeouts: BodyTimeouts,
) -> Result<Bytes, ReadError>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    let declared = headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(ReadError::TooLarge);
    }
    let mut body = std::pin::pin!(body);
    let mut first: Option<Bytes> = None;
    let mut buf = BytesMut::new();
    let mut total = 0usize;
    // The timer is made at the first wait, not before: a body that is
    // already here (most are) costs no timer and no clock reading. One
    // timer serves both limits: at each wait it is set to the earlier of
    // the total deadline and the idle one.
    let mut timer: Option<(Pin<Box<Sleep>>, Instant)> = None;
    let mut rearm = false;
    loop {
        let next = std::future::poll_fn(|cx| {
            if let Poll::Ready(frame) = body.as_mut().poll_frame(cx) {
                rearm = timer.is_some();
                return Poll::Ready(Ok(frame));
            }
            let (sleep, end) = match &mut timer {
                Some((sleep, end)) => {
                    if rearm {
                        rearm = false;
                        let idle = Instant::now() + timeouts.idle;
                        sleep.as_mut().reset(idle.min(*end));
                    }
                    (sleep, *end)
                }
                None => {
                    let now = Instant::now();
                    let end = now + timeouts.total;
                    let sleep = Box::pin(tokio::time::sleep_until((now + timeouts.idle).min(end)));
                    let (sleep, _) = timer.insert((sleep, end));
                    (sleep, end)
                }
            };
            match sleep.as_mut().poll(cx) {
                Poll::Ready(()) if sleep.deadline() >= end => Poll::Ready(Err(ReadError::TimedOut)),
                Poll::Ready(()) => Poll::Ready(Err(ReadError::Idle)),
                Poll::Pending => Poll::Pending,
            }
        })
        .await?;
        let Some(frame) = next else { break };
        let frame = frame.map_err(|e| ReadError::Failed(e.into()))?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        total += data.len();
        if total > limit {
            return Err(ReadError::TooLarge);
        }
        // One chunk (the usual case) is kept as is, without a copy.
        match first.take() {
            None if buf.is_empty() => first = Some(data),
            Some(f) => {
                buf.extend_from_slice(&f);
                buf.extend_from_slice(&data);
            }
            None => buf.extend_from_slice(&data),
        }
    }
    Ok(first.unwrap_or_else(|| buf.freeze()))
}
