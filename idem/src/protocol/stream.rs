//! Streamed answers (the route's `stream` setting): the answer's status and
//! headers go to the client at once and its body as the handler produces
//! it, while a copy is kept; when the body ends the copy is stored, so a
//! retry replays the same bytes. Server-sent events and NDJSON stream by
//! default: buffered, every event would wait for the last.
//!
//! The rules are those of a buffered answer, applied at the end of the
//! stream instead of before the first byte: a body over the stored-response
//! limit is stored without it (the oversize rule); a body that breaks off is
//! stored marked as lost (rule 13: the operation ran; the first client's
//! stream ends with the error, since its status line has already gone). A
//! client that leaves mid-stream does not cancel anything (rule 12): the
//! rest of the stream is read and the answer stored on a task of its own.

use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Bytes, BytesMut};
use http::{HeaderName, HeaderValue};
use http_body::{Body, Frame, SizeHint};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::BodyExt;
use idem_core::{Fence, StoreKey, StoredResponse};

use super::execute::declared_length;
use super::finish::complete;
use super::renew::Registration;
use super::replay::{storable_headers, IDEMPOTENT_BODY_LOST};
use super::Route;
use crate::layer::{Admitted, BoxError, InFlightGuard};

/// What is kept of a streamed answer until it is stored, with what keeps
/// its execution counted and its lease renewed until then.
pub(crate) struct Recording {
    route: Route,
    key: StoreKey,
    fence: Fence,
    status: u16,
    headers: Vec<(HeaderName, HeaderValue)>,
    declared: Option<u64>,
    kept: BytesMut,
    received: u64,
    /// Past the stored-response limit: `kept` was let go.
    over: bool,
    trailers: Option<http::HeaderMap>,
    // Held, not read: dropped once the answer is stored (or given up).
    _renewed: Registration,
    _in_flight: InFlightGuard,
    _permit: Option<Admitted>,
}

impl Recording {
    #[allow(clippy::too_many_arguments)] // Each is one piece of the execution it outlives.
    pub(super) fn new(
        route: Route,
        key: StoreKey,
        fence: Fence,
        parts: &http::response::Parts,
        renewed: Registration,
        in_flight: InFlightGuard,
        permit: Option<Admitted>,
    ) -> Self {
        Self {
            route,
            key,
            fence,
            status: parts.status.as_u16(),
            headers: storable_headers(&parts.headers),
            declared: declared_length(&parts.headers),
            kept: BytesMut::new(),
            received: 0,
            over: false,
            trailers: None,
            _renewed: renewed,
            _in_flight: in_flight,
            _permit: permit,
        }
    }

    fn keep(&mut self, frame: &Frame<Bytes>) {
        if let Some(data) = frame.data_ref() {
            self.received += data.len() as u64;
            if self.over {
                return;
            }
            if self.kept.len() + data.len() > self.route.policy().max_stored_response {
                // The oversize rule: stored without its body, so what was
                // kept is let go at once rather than held to the end.
                self.over = true;
                self.kept = BytesMut::new();
            } else {
                self.kept.extend_from_slice(data);
            }
        } else if let Some(t) = frame.trailers_ref() {
            self.trailers = Some(t.clone());
        }
    }

    /// Stores what was kept; `broke`: the stream ended with an error.
    async fn store(mut self, broke: Option<String>) {
        let body_omitted = match &broke {
            Some(e) => {
                tracing::warn!(key = %self.key.short(), route = self.route.name(), status = self.status, received = self.received, error = %e, "the streamed answer broke off: the operation ran; its answer is kept without the body");
                self.headers
                    .push((IDEMPOTENT_BODY_LOST, HeaderValue::from_static("true")));
                Some(self.declared.unwrap_or(self.received))
            }
            None if self.over => Some(self.received),
            None => None,
        };
        let body = match body_omitted {
            Some(_) => Bytes::new(),
            None => std::mem::take(&mut self.kept).freeze(),
        };
        if let Some(t) = &self.trailers {
            self.headers.extend(super::grpc::stored_trailers(t));
        }
        let stored = StoredResponse {
            status: self.status,
            headers: std::mem::take(&mut self.headers),
            body,
            body_omitted,
        };
        complete(
            &self.route,
            &self.key,
            self.fence,
            stored,
            std::time::Instant::now(),
        )
        .await;
    }
}

type Storing = Pin<Box<dyn Future<Output = ()> + Send>>;

/// The handler's body, its type erased (the tee outlives the request, and
/// its `Drop` hands the body to a task of its own).
pub(crate) type Inner = UnsyncBoxBody<Bytes, BoxError>;

/// The body of a streamed answer: the handler's frames, passed on as they
/// come and kept; at the end, the copy stored before the client is told
/// the body ended (so a retry that follows at once finds the answer).
pub(crate) struct Tee {
    inner: Option<Inner>,
    recording: Option<Recording>,
    storing: Option<Storing>,
    /// The stream's error, given to the client once the answer is stored.
    broke: Option<BoxError>,
}

impl Tee {
    pub(super) fn new(inner: Inner, recording: Recording) -> Self {
        Self {
            inner: Some(inner),
            recording: Some(recording),
            storing: None,
            broke: None,
        }
    }
}

impl Body for Tee {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        loop {
            if let Some(storing) = &mut this.storing {
                ready!(storing.as_mut().poll(cx));
                this.storing = None;
                return Poll::Ready(this.broke.take().map(Err));
            }
            let Some(inner) = &mut this.inner else {
                return Poll::Ready(None);
            };
            let ended = match ready!(Pin::new(inner).poll_frame(cx)) {
                Some(Ok(frame)) => {
                    if let Some(r) = &mut this.recording {
                        r.keep(&frame);
                    }
                    return Poll::Ready(Some(Ok(frame)));
                }
                Some(Err(e)) => Some(e),
                None => None,
            };
            this.inner = None;
            let Some(recording) = this.recording.take() else {
                return Poll::Ready(ended.map(Err));
            };
            // The error goes to the client; its text goes to the log.
            let why = ended.as_ref().map(|e| e.to_string());
            this.broke = ended;
            this.storing = Some(Box::pin(recording.store(why)));
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_none() && self.storing.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), Body::size_hint)
    }
}

impl Drop for Tee {
    fn drop(&mut self) {
        // The client left before the end (rule 12: nothing is cancelled):
        // the rest is read and the answer stored on a task of its own.
        let rest: Storing = match (
            self.inner.take(),
            self.recording.take(),
            self.storing.take(),
        ) {
            (_, _, Some(storing)) => storing,
            (Some(inner), Some(recording), None) => Box::pin(drain(inner, recording)),
            _ => return,
        };
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn(rest);
            }
            Err(_) => tracing::error!(
                "a streamed answer was dropped outside a tokio runtime before it was stored; its key stays in progress until its lease ends"
            ),
        }
    }
}

/// Reads the rest of a stream nobody receives any more, then stores it.
async fn drain(mut inner: Inner, mut recording: Recording) {
    let broke = loop {
        match inner.frame().await {
            None => break None,
            Some(Ok(frame)) => recording.keep(&frame),
            Some(Err(e)) => break Some(e.to_string()),
        }
    };
    recording.store(broke).await;
}
