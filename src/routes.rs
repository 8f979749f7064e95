//! The route table of every component: what each serves, by which method, and
//! which routes need the admin token. The components build spin-sdk's `Router`
//! from these tables, and the OpenAPI test checks `deploy/openapi.yaml`
//! against them, so the code and the document cannot drift apart.

/// One route: a method and a path pattern in spin-sdk `Router` syntax
/// (`:name` is one path segment).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    pub method: &'static str,
    pub path: &'static str,
    /// Needs `Authorization: Bearer <admin_token>`.
    pub admin: bool,
}

impl Route {
    const fn public(method: &'static str, path: &'static str) -> Self {
        Self {
            method,
            path,
            admin: false,
        }
    }

    const fn admin(method: &'static str, path: &'static str) -> Self {
        Self {
            method,
            path,
            admin: true,
        }
    }

    /// The path as OpenAPI writes it (`{name}` for `:name`).
    pub fn openapi_path(&self) -> String {
        self.path
            .split('/')
            .map(|segment| match segment.strip_prefix(':') {
                Some(name) => format!("{{{name}}}"),
                None => segment.to_string(),
            })
            .collect::<Vec<_>>()
            .join("/")
    }
}

// The query component.
pub const CHAT_QUERY: Route = Route::public("POST", "/api/v1/chat/query");
/// The handler decides who may read: the admin token, or (in `jwt` mode) the session's owner.
pub const CHAT_HISTORY: Route = Route::public("GET", "/api/v1/chat/history/:session_id");
pub const DOCUMENTS: Route = Route::admin("POST", "/api/v1/documents");
pub const QUERY_ROUTES: &[Route] = &[CHAT_QUERY, CHAT_HISTORY, DOCUMENTS];

// The metrics component.
pub const METRICS: Route = Route::public("GET", "/metrics");
pub const METRICS_ROUTES: &[Route] = &[METRICS];

// The ops component.
pub const HEALTH: Route = Route::public("GET", "/health");
pub const HEALTH_SERVICES: Route = Route::public("GET", "/health/services");
pub const HEALTH_READINESS: Route = Route::public("GET", "/health/readiness");
// These two list questions and session ids: admin only.
pub const HEALTH_METRICS: Route = Route::admin("GET", "/health/metrics");
pub const CACHE_ANALYTICS: Route = Route::admin("GET", "/health/cache/analytics");
pub const CACHE_CLEAR: Route = Route::admin("POST", "/health/cache/clear");
pub const CLEANUP: Route = Route::admin("POST", "/admin/cleanup");
pub const CACHE_WARMUP: Route = Route::admin("POST", "/admin/cache/warmup");
pub const AUDIT_LOG: Route = Route::admin("GET", "/admin/audit");
pub const OPS_ROUTES: &[Route] = &[
    HEALTH,
    HEALTH_SERVICES,
    HEALTH_READINESS,
    HEALTH_METRICS,
    CACHE_ANALYTICS,
    CACHE_CLEAR,
    CLEANUP,
    CACHE_WARMUP,
    AUDIT_LOG,
];

/// Every route of the application.
pub fn all() -> impl Iterator<Item = &'static Route> {
    QUERY_ROUTES.iter().chain(METRICS_ROUTES).chain(OPS_ROUTES)
}

/// The methods a path pattern of a table takes (for `Allow`).
pub fn allowed_methods(table: &[Route], path: &str) -> Vec<&'static str> {
    table
        .iter()
        .filter(|r| r.path == path)
        .map(|r| r.method)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_are_unique_and_openapi_paths_use_braces() {
        let mut seen: Vec<(&str, &str)> = all().map(|r| (r.method, r.path)).collect();
        seen.sort();
        seen.dedup();
        assert_eq!(seen.len(), all().count());
        assert_eq!(
            CHAT_HISTORY.openapi_path(),
            "/api/v1/chat/history/{session_id}"
        );
        assert_eq!(allowed_methods(OPS_ROUTES, "/health"), ["GET"]);
        let admin: Vec<&str> = all().filter(|r| r.admin).map(|r| r.path).collect();
        assert_eq!(
            admin,
            [
                "/api/v1/documents",
                "/health/metrics",
                "/health/cache/analytics",
                "/health/cache/clear",
                "/admin/cleanup",
                "/admin/cache/warmup",
                "/admin/audit"
            ]
        );
    }
}
