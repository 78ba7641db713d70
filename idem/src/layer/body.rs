//! Request and response bodies of the layer.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

use crate::protocol::Tee;

/// A boxed error, as bodies report them.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

pin_project! {
    /// The body the inner service receives: the buffered bytes of a covered
    /// request (it had to be read to fingerprint it), or the untouched stream
    /// of one that is not covered.
    pub struct RequestBody<B> {
        #[pin]
        kind: RequestKind<B>,
    }
}

pin_project! {
    #[project = RequestBodyProj]
    enum RequestKind<B> {
        Buffered { data: Option<Bytes> },
        Streaming { #[pin] inner: B },
    }
}

impl<B> RequestBody<B> {
    /// A body of `bytes`.
    pub fn buffered(bytes: Bytes) -> Self {
        Self {
            kind: RequestKind::Buffered {
                data: (!bytes.is_empty()).then_some(bytes),
            },
        }
    }

    /// A copy of a buffered body that has not been read yet, to send it
    /// again (a proxy retrying a request its upstream never read); `None`
    /// for a streamed body.
    pub fn try_clone(&self) -> Option<Self> {
        match &self.kind {
            RequestKind::Buffered { data } => Some(Self {
                kind: RequestKind::Buffered { data: data.clone() },
            }),
            RequestKind::Streaming { .. } => None,
        }
    }

    /// The original body, streamed.
    pub fn streaming(inner: B) -> Self {
        Self {
            kind: RequestKind::Streaming { inner },
        }
    }
}

impl<B> Body for RequestBody<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.project().kind.project() {
            RequestBodyProj::Buffered { data } => {
                Poll::Ready(data.take().map(|d| Ok(Frame::data(d))))
            }
            RequestBodyProj::Streaming { inner } => inner.poll_frame(cx).map_err(Into::into),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            RequestKind::Buffered { data } => data.is_none(),
            RequestKind::Streaming { inner } => inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            RequestKind::Buffered { data } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
            RequestKind::Streaming { inner } => inner.size_hint(),
        }
    }
}

pin_project! {
    /// The body the layer answers with: bytes it built or replayed, the inner
    /// service's stream, (for a response too large to store) the part it
    /// already read followed by the rest of the stream, or a streamed answer
    /// stored as it passes.
    pub struct ResponseBody<B> {
        #[pin]
        kind: ResponseKind<B>,
    }
}

pin_project! {
    #[project = ResponseBodyProj]
    enum ResponseKind<B> {
        Full { data: Option<Bytes> },
        Inner { #[pin] inner: B },
        // Boxed: the body was already polled while unpinned-by-box.
        Prefixed { prefix: Option<Bytes>, inner: Pin<Box<B>> },
        // Boxed: kept out of every other response's size.
        Streamed { tee: Box<Tee> },
        // Boxed for the same reason; only answers with trailers (gRPC).
        Trailed { data: Option<Bytes>, trailers: Option<Box<HeaderMap>> },
    }
}

impl<B> ResponseBody<B> {
    /// A body of `bytes`.
    pub fn full(bytes: impl Into<Bytes>) -> Self {
        let bytes = bytes.into();
        Self {
            kind: ResponseKind::Full {
                data: (!bytes.is_empty()).then_some(bytes),
            },
        }
    }

    /// An empty body.
    pub fn empty() -> Self {
        Self {
            kind: ResponseKind::Full { data: None },
        }
    }

    /// The inner body, untouched.
    pub fn inner(inner: B) -> Self {
        Self {
            kind: ResponseKind::Inner { inner },
        }
    }

    /// `bytes`, then `trailers` (a gRPC answer's status).
    pub(crate) fn trailed(bytes: Bytes, trailers: Box<HeaderMap>) -> Self {
        Self {
            kind: ResponseKind::Trailed {
                data: (!bytes.is_empty()).then_some(bytes),
                trailers: Some(trailers),
            },
        }
    }

    /// The whole body, when it is bytes the layer holds (a refusal, a
    /// replay), to read it again.
    pub(crate) fn full_bytes(&self) -> Option<&Bytes> {
        match &self.kind {
            ResponseKind::Full { data } => data.as_ref(),
            _ => None,
        }
    }

    /// A streamed answer, stored as it passes (see the route's `stream`).
    pub(crate) fn streamed(tee: Tee) -> Self {
        Self {
            kind: ResponseKind::Streamed { tee: Box::new(tee) },
        }
    }

    /// `prefix`, then the rest of `inner`.
    pub fn prefixed(prefix: Bytes, inner: Pin<Box<B>>) -> Self {
        Self {
            kind: ResponseKind::Prefixed {
                prefix: Some(prefix),
                inner,
            },
        }
    }
}

impl<B> Body for ResponseBody<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.project().kind.project() {
            ResponseBodyProj::Full { data } => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            ResponseBodyProj::Inner { inner } => inner.poll_frame(cx).map_err(Into::into),
            ResponseBodyProj::Prefixed { prefix, inner } => match prefix.take() {
                Some(p) => Poll::Ready(Some(Ok(Frame::data(p)))),
                None => inner.as_mut().poll_frame(cx).map_err(Into::into),
            },
            ResponseBodyProj::Streamed { tee } => Pin::new(&mut **tee).poll_frame(cx),
            ResponseBodyProj::Trailed { data, trailers } => Poll::Ready(match data.take() {
                Some(d) => Some(Ok(Frame::data(d))),
                None => trailers.take().map(|t| Ok(Frame::trailers(*t))),
            }),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            ResponseKind::Full { data } => data.is_none(),
            ResponseKind::Inner { inner } => inner.is_end_stream(),
            ResponseKind::Prefixed { prefix, inner } => prefix.is_none() && inner.is_end_stream(),
            ResponseKind::Streamed { tee } => tee.is_end_stream(),
            ResponseKind::Trailed { data, trailers } => data.is_none() && trailers.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            ResponseKind::Full { data } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
            ResponseKind::Inner { inner } => inner.size_hint(),
            ResponseKind::Prefixed { prefix, inner } => {
                let p = prefix.as_ref().map_or(0, |d| d.len() as u64);
                let h = inner.size_hint();
                let mut out = SizeHint::new();
                out.set_lower(h.lower() + p);
                if let Some(u) = h.upper() {
                    out.set_upper(u + p);
                }
                out
            }
            ResponseKind::Streamed { tee } => tee.size_hint(),
            ResponseKind::Trailed { data, .. } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
        }
    }
}
