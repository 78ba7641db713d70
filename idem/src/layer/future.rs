//! The layer's response future.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use std::sync::Arc;
use std::time::Instant;

use http::Response;
use pin_project_lite::pin_project;

use super::body::ResponseBody;
use super::Shared;
use crate::access::{enabled as access_enabled, AccessLine};

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

pin_project! {
    /// Response future of [`Idempotency`](super::Idempotency).
    ///
    /// Requests the policy does not cover go straight to the inner service's
    /// future with no allocation; covered ones run the idempotency protocol in
    /// a boxed future.
    ///
    /// A covered request is never cancelled half-way (SPEC rule 12): if this
    /// future is dropped before it finished (the client went away), the rest
    /// of the protocol moves to a task of its own, so a started execution
    /// runs to completion and stores its answer for the client's retry, and
    /// a `begin` already sent to the store is followed through instead of
    /// leaving its key in progress until the lease ends. Spawning every
    /// covered request up front would give the same guarantee, but costs a
    /// task and a cross-thread wake-up per request; in place is the common
    /// case, so only abandoned requests pay.
    pub struct ResponseFuture<F, B, E>
    where
        B: Send,
        B: 'static,
        E: Send,
        E: 'static,
    {
        #[pin]
        kind: Kind<F, B, E>,
    }

    impl<F, B, E> PinnedDrop for ResponseFuture<F, B, E>
    where
        B: Send,
        B: 'static,
        E: Send,
        E: 'static,
    {
        fn drop(this: Pin<&mut Self>) {
            if let KindProj::Protocol { fut, span } = this.project().kind.project() {
                if let Some(fut) = fut.take() {
                    detach(fut, span.clone());
                }
            }
        }
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<F, B, E> {
        Passthrough { #[pin] fut: F, seen: Seen },
        Protocol {
            fut: Option<BoxFuture<Result<Response<ResponseBody<B>>, E>>>,
            // The request's span, entered while the protocol runs (what
            // `Instrument` would do, without a second handle on the span).
            span: tracing::Span,
        },
    }
}

/// A request passed through untouched: when it came, and what its access
/// line needs (only when the layer logs one: the method and URI are
/// copied for it, in a box that a layer without access log never makes).
pub(crate) struct Seen {
    started: Instant,
    shared: Arc<Shared>,
    access: Option<Box<(http::Method, http::Uri)>>,
}

impl Seen {
    pub(crate) fn new<B>(shared: &Arc<Shared>, req: &http::Request<B>) -> Self {
        Self {
            started: Instant::now(),
            shared: shared.clone(),
            access: (shared.access_log.is_some() && access_enabled())
                .then(|| Box::new((req.method().clone(), req.uri().clone()))),
        }
    }

    /// Counts the answer (`idempotency_passthrough_*`) and logs its line.
    fn answered<B, E>(&self, out: &Result<Response<B>, E>) {
        let took = self.started.elapsed();
        let status = crate::access::status(out);
        self.shared.metrics.passthrough().observe(status, took);
        if let (Some(access), Some(sink)) = (&self.access, &self.shared.access_log) {
            let (method, uri) = &**access;
            sink.log(&AccessLine {
                method,
                path: uri.path(),
                route: "-",
                status,
                outcome: "passed-through",
                key: None,
                duration: took,
                upstream: None,
            });
        }
    }
}

/// Runs the rest of an abandoned covered request in a task of its own.
fn detach<T: Send + 'static>(fut: BoxFuture<T>, span: tracing::Span) {
    use tracing::Instrument;
    match tokio::runtime::Handle::try_current() {
        Ok(handle) => {
            handle.spawn(
                async move {
                    let _ = fut.await;
                }
                .instrument(span),
            );
        }
        Err(_) => tracing::error!(
            "a covered request was dropped outside the runtime (shutting down?); if it was executing, its key stays in progress until its lease ends"
        ),
    }
}

impl<F, B: Send + 'static, E: Send + 'static> ResponseFuture<F, B, E> {
    pub(crate) fn passthrough(fut: F, seen: Seen) -> Self {
        Self {
            kind: Kind::Passthrough { fut, seen },
        }
    }

    /// The protocol's future, run in `span`.
    pub(crate) fn protocol(
        fut: impl Future<Output = Result<Response<ResponseBody<B>>, E>> + Send + 'static,
        span: tracing::Span,
    ) -> Self {
        Self {
            kind: Kind::Protocol {
                fut: Some(Box::pin(fut)),
                span,
            },
        }
    }
}

impl<F, B, E> Future for ResponseFuture<F, B, E>
where
    F: Future<Output = Result<Response<B>, E>>,
    B: Send + 'static,
    E: Send + 'static,
{
    type Output = Result<Response<ResponseBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Passthrough { fut, seen } => {
                let out = std::task::ready!(fut.poll(cx));
                seen.answered(&out);
                Poll::Ready(out.map(|res| res.map(ResponseBody::inner)))
            }
            KindProj::Protocol { fut, span } => {
                let Some(f) = fut.as_mut() else {
                    return Poll::Pending;
                };
                let _entered = span.enter();
                let out = std::task::ready!(f.as_mut().poll(cx));
                *fut = None;
                if let Ok(r) = &out {
                    tracing::debug!(status = r.status().as_u16(), "covered request answered");
                }
                Poll::Ready(out)
            }
        }
    }
}
