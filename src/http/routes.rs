//! The route table of every component: what each serves, by which method, and
//! which routes need the admin token. The components' router
//! (`chatbot_spin::routing`) serves these tables, and the OpenAPI test checks `deploy/openapi.yaml`
//! against them, so the code and the document cannot drift apart.

/// The methods the routes serve (`HEAD` is served wherever `GET` is).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Post,
}

impl Method {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Get => "GET",
            Self::Post => "POST",
        }
    }
}

impl std::fmt::Display for Method {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One route: a method and a path pattern in spin-sdk `Router` syntax
/// (`:name` is one path segment).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    pub method: Method,
    pub path: &'static str,
    /// Needs `Authorization: Bearer <admin_token>`.
    pub admin: bool,
    /// The largest body the route reads: a longer `Content-Length` is refused
    /// before reading, and a body without one is not read past it.
    pub max_body_bytes: usize,
}

/// What a route reads at most unless it says otherwise (the admin routes'
/// small JSON bodies, and `GET`s, which have none).
pub const DEFAULT_MAX_BODY_BYTES: usize = 64 * 1024;

impl Route {
    const fn public(method: Method, path: &'static str) -> Self {
        Self {
            method,
            path,
            admin: false,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
        }
    }

    const fn admin(method: Method, path: &'static str) -> Self {
        Self {
            method,
            path,
            admin: true,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
        }
    }

    const fn reading_at_most(self, max_body_bytes: usize) -> Self {
        Self {
            max_body_bytes,
            ..self
        }
    }

    /// Whether a request method is served by this route: its own, and `HEAD`
    /// wherever `GET` is served (RFC 9110: the same answer without the body).
    pub fn serves_method(&self, method: &str) -> bool {
        method == self.method.as_str() || (method == "HEAD" && self.method == Method::Get)
    }

    /// Whether a request path is this route's (`:name` matches one segment).
    pub fn matches(&self, path: &str) -> bool {
        let mut pattern = self.path.split('/');
        let mut actual = path.split('/');
        loop {
            match (pattern.next(), actual.next()) {
                (None, None) => return true,
                (Some(p), Some(a)) if p.starts_with(':') && !a.is_empty() => {}
                (Some(p), Some(a)) if p == a => {}
                _ => return false,
            }
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
pub const CHAT_QUERY: Route = Route::public(Method::Post, "/api/v1/chat/query")
    .reading_at_most(crate::chat::query::MAX_BODY_BYTES);
/// The handler decides who may read: the admin token, or (in `jwt` mode) the session's owner.
pub const CHAT_HISTORY: Route = Route::public(Method::Get, "/api/v1/chat/history/:session_id");
pub const DOCUMENTS: Route = Route::admin(Method::Post, "/api/v1/documents")
    .reading_at_most(crate::chat::ingest::MAX_BODY_BYTES);
pub const QUERY_ROUTES: &[Route] = &[CHAT_QUERY, CHAT_HISTORY, DOCUMENTS];

// The metrics component.
pub const METRICS: Route = Route::public(Method::Get, "/metrics");
pub const METRICS_ROUTES: &[Route] = &[METRICS];

// The ops component.
pub const HEALTH: Route = Route::public(Method::Get, "/health");
// Calls every dependency, OpenAI with the organisation's key: admin only.
pub const HEALTH_SERVICES: Route = Route::admin(Method::Get, "/health/services");
pub const HEALTH_READINESS: Route = Route::public(Method::Get, "/health/readiness");
// These two list questions and session ids: admin only.
pub const HEALTH_METRICS: Route = Route::admin(Method::Get, "/health/metrics");
pub const CACHE_ANALYTICS: Route = Route::admin(Method::Get, "/health/cache/analytics");
pub const CACHE_CLEAR: Route = Route::admin(Method::Post, "/health/cache/clear");
pub const CLEANUP: Route = Route::admin(Method::Post, "/admin/cleanup");
pub const CACHE_WARMUP: Route = Route::admin(Method::Post, "/admin/cache/warmup");
pub const AUDIT_LOG: Route = Route::admin(Method::Get, "/admin/audit");
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

/// The methods a path pattern of a table takes (for `Allow`): the table's,
/// and `HEAD` after each `GET`.
pub fn allowed_methods(table: &[Route], path: &str) -> Vec<&'static str> {
    table
        .iter()
        .filter(|r| r.path == path)
        .flat_map(|r| match r.method {
            Method::Get => &["GET", "HEAD"][..],
            Method::Post => &["POST"][..],
        })
        .copied()
        .collect()
}

/// The route that serves `method` on `path`, whose limit bounds the body: a
/// request no route serves (a 404, or a 405) is answered without reading a
/// byte of its body, so a large body sent with the wrong method costs nothing.
pub fn serving_route<'a>(table: &'a [Route], method: &str, path: &str) -> Option<&'a Route> {
    table
        .iter()
        .find(|r| r.serves_method(method) && r.matches(path))
}

/// Whether `path` is an admin route's, whatever the method: its token is
/// checked first, so that without it nobody learns which methods it takes.
pub fn is_admin_path(table: &[Route], path: &str) -> bool {
    table.iter().any(|r| r.admin && r.matches(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_limits_follow_the_route_that_serves_the_method() {
        let limit =
            |method, path| serving_route(QUERY_ROUTES, method, path).map(|r| r.max_body_bytes);
        assert_eq!(limit("POST", "/api/v1/chat/query"), Some(64 * 1024));
        assert_eq!(limit("POST", "/api/v1/documents"), Some(10_000_000));
        // Another method on the same path reads nothing: it is a 405.
        assert_eq!(limit("PUT", "/api/v1/documents"), None);
        assert_eq!(limit("GET", "/api/v1/documents"), None);
        assert_eq!(
            limit("GET", "/api/v1/chat/history/s-1"),
            Some(DEFAULT_MAX_BODY_BYTES)
        );
        assert_eq!(
            limit("HEAD", "/api/v1/chat/history/s-1"),
            Some(DEFAULT_MAX_BODY_BYTES)
        );
        assert_eq!(limit("POST", "/nowhere"), None);
        assert!(is_admin_path(QUERY_ROUTES, "/api/v1/documents"));
        assert!(!is_admin_path(QUERY_ROUTES, "/api/v1/chat/query"));
        assert!(is_admin_path(OPS_ROUTES, "/admin/audit"));
        assert!(!is_admin_path(OPS_ROUTES, "/health"));
        assert!(CHAT_HISTORY.matches("/api/v1/chat/history/abc"));
        assert!(!CHAT_HISTORY.matches("/api/v1/chat/history/"));
        assert!(!CHAT_HISTORY.matches("/api/v1/chat/history/a/b"));
        assert!(!CHAT_QUERY.matches("/api/v1/chat/query/x"));
    }

    #[test]
    fn routes_are_unique_and_openapi_paths_use_braces() {
        let mut seen: Vec<(&str, &str)> = all().map(|r| (r.method.as_str(), r.path)).collect();
        seen.sort();
        seen.dedup();
        assert_eq!(seen.len(), all().count());
        assert_eq!(
            CHAT_HISTORY.openapi_path(),
            "/api/v1/chat/history/{session_id}"
        );
        assert_eq!(allowed_methods(OPS_ROUTES, "/health"), ["GET", "HEAD"]);
        assert_eq!(
            allowed_methods(QUERY_ROUTES, "/api/v1/chat/query"),
            ["POST"]
        );
        assert!(HEALTH.serves_method("HEAD") && HEALTH.serves_method("GET"));
        assert!(!CHAT_QUERY.serves_method("HEAD") && !HEALTH.serves_method("POST"));
        let admin: Vec<&str> = all().filter(|r| r.admin).map(|r| r.path).collect();
        assert_eq!(
            admin,
            [
                "/api/v1/documents",
                "/health/services",
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
