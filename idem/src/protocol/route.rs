//! Which policy covers a request: a route rule or the default.

use std::sync::Arc;

use idem_core::{ProblemKind, RoutePolicy};

use super::refusal;
use crate::layer::Shared;
use crate::metrics::RouteMetrics;

/// Which policy applies: a route rule's index, or the default.
#[derive(Clone)]
pub(crate) struct Route {
    pub(crate) shared: Arc<Shared>,
    index: Option<usize>,
}

impl Route {
    pub(crate) fn find(shared: &Arc<Shared>, method: &http::Method, path: &str) -> Option<Self> {
        let index = shared
            .policy
            .routes
            .iter()
            .position(|(p, _)| p.matches(path));
        let route = Self {
            shared: shared.clone(),
            index,
        };
        route.policy().covers(method).then_some(route)
    }

    pub(crate) fn policy(&self) -> &RoutePolicy {
        match self.index {
            Some(i) => &self.shared.policy.routes[i].1,
            None => &self.shared.policy.default,
        }
    }

    pub(crate) fn metrics(&self) -> &RouteMetrics {
        self.shared.route_metrics(self.index)
    }

    /// Counts a refusal or failure in `idempotency_errors_total`.
    pub(crate) fn count(&self, kind: ProblemKind) {
        if let Some(metric) = refusal::metric(kind) {
            self.metrics().error(metric);
        }
    }

    pub(crate) fn name(&self) -> &str {
        match self.index {
            Some(i) => self.shared.policy.routes[i].0.as_str(),
            None => "*",
        }
    }
}
