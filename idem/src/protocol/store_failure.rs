//! Rule 10: the store failed or could not be reached. Fail-closed (503)
//! by default; a fail-open route executes without protection.

use bytes::Bytes;
use http::request::Parts;
use http::{Request, Response};
use idem_core::{ProblemKind, StoreError};
use tower_service::Service;

use super::{outcome, refusal, Route};
use crate::access::{KeyOrDash, Trace};
use crate::layer::{RequestBody, ResponseBody};

/// Rule 10: the store failed. Fail-closed (503) unless the route is
/// fail-open, which executes the request without protection. Boxed by its
/// callers: a cold path whose future would otherwise take room in every
/// covered request's.
pub(super) async fn store_failure<S, ReqBody, ResBody>(
    route: &Route,
    inner: S,
    parts: Parts,
    bytes: Bytes,
    e: StoreError,
    key: Option<idem_core::scope::ShortKey>,
    trace: &Trace,
) -> Result<Response<ResponseBody<ResBody>>, S::Error>
where
    S: Service<Request<RequestBody<ReqBody>>, Response = Response<ResBody>>,
{
    route.count(ProblemKind::StoreUnavailable);
    if route.policy().fail_open {
        tracing::warn!(route = route.name(), key = %KeyOrDash(key), error = %e, "idempotency store failed; executing unprotected (fail-open)");
        let req = Request::from_parts(parts, RequestBody::buffered(bytes));
        return super::execute::unprotected(trace, "fail-open", inner, req).await;
    }
    let kind = match e {
        StoreError::CapacityExceeded { .. } | StoreError::BytesExceeded { .. } => {
            ProblemKind::StoreFull
        }
        _ => ProblemKind::StoreUnavailable,
    };
    outcome(trace, kind.slug());
    tracing::warn!(route = route.name(), key = %KeyOrDash(key), error = %e, "idempotency store failed; refusing (fail-closed)");
    Ok(refusal::response(
        &route.shared,
        &refusal::store_failed(kind, &e),
    ))
}
