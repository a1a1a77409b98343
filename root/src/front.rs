//! What every public request meets before its fan-out and after it: its
//! token (when the root asks for one), the admission limit, the rules of a
//! request's time frame and size, and the request metrics. `Search` and
//! `Root/Query` share one.

use std::time::Duration;

use fanout_proto::search::limits::QueryLimits;

use crate::admission::Admission;
use crate::auth::{Authenticator, Tenant};
use crate::metrics::RootMetrics;

/// A request's time frame and size limits.
#[derive(Debug, Clone, Copy)]
pub struct RequestRules {
    /// Overall timeout of a request whose caller sets none.
    pub default_timeout: Duration,
    /// Kept back from every deadline to answer the caller in.
    pub deadline_margin: Duration,
    /// What a search query may cost.
    pub query_limits: QueryLimits,
}

/// See the module docs.
#[derive(Debug)]
pub struct Front {
    pub rules: RequestRules,
    pub admission: std::sync::Arc<Admission>,
    pub metrics: std::sync::Arc<RootMetrics>,
    /// Bearer tokens, when the root asks for them.
    pub auth: Option<std::sync::Arc<Authenticator>>,
    /// The line logged for each request.
    pub request_log: crate::request_log::RequestLog,
}

impl Front {
    /// The caller's tenant when the root asks for tokens (`None` when it
    /// does not), its rate already taken; the status to answer otherwise.
    pub fn authenticate(
        &self,
        metadata: &tonic::metadata::MetadataMap,
    ) -> Result<Option<std::sync::Arc<Tenant>>, tonic::Status> {
        let Some(auth) = &self.auth else {
            return Ok(None);
        };
        let tenant = auth.authenticate(metadata)?;
        tenant.take_rate()?;
        Ok(Some(tenant))
    }

    /// The latest a request may wait for admission: when its caller's
    /// `grpc-timeout` runs out, else its default timeout (a malformed
    /// timeout is refused later, with the request).
    pub fn admission_deadline(
        &self,
        metadata: &tonic::metadata::MetadataMap,
    ) -> tokio::time::Instant {
        let timeout = fanout_runtime::deadline::timeout_from_metadata(metadata)
            .ok()
            .flatten()
            .unwrap_or(self.rules.default_timeout);
        // Bounded: the wait itself is short, a caller's timeout may not be.
        tokio::time::Instant::now() + timeout.min(Duration::from_secs(3600))
    }
}
