//! Spin's HTTP route matching: an exact path, a `/...` wildcard suffix, and
//! `:name` segments; the most specific route wins (exact over parameters over
//! wildcards, then the longest).

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    Param,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub raw: String,
    segments: Vec<Segment>,
    wildcard: bool,
}

/// What matched, for the `spin-*` request headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteMatch {
    /// The route as written in the manifest.
    pub raw_route: String,
    /// The route without its `/...` suffix.
    pub component_route: String,
    /// The part of the path after the component route (`spin-path-info`).
    pub path_info: String,
}

impl Route {
    pub fn parse(raw: &str) -> Self {
        let trimmed = raw.trim();
        let (base, wildcard) = match trimmed.strip_suffix("/...") {
            Some(base) => (base, true),
            None if trimmed == "/..." => ("", true),
            None => (trimmed, false),
        };
        let segments = base
            .split('/')
            .filter(|s| !s.is_empty())
            .map(|s| {
                if s.starts_with(':') {
                    Segment::Param
                } else {
                    Segment::Literal(s.to_string())
                }
            })
            .collect();
        Self {
            raw: raw.to_string(),
            segments,
            wildcard,
        }
    }

    fn matches(&self, path: &str) -> Option<RouteMatch> {
        let parts: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
        if parts.len() < self.segments.len()
            || (!self.wildcard && parts.len() != self.segments.len())
        {
            return None;
        }
        for (segment, part) in self.segments.iter().zip(&parts) {
            if let Segment::Literal(lit) = segment {
                if lit != part {
                    return None;
                }
            }
        }
        let component_route = format!("/{}", parts[..self.segments.len()].join("/"));
        let rest = &parts[self.segments.len()..];
        let path_info = if rest.is_empty() {
            String::new()
        } else {
            format!("/{}", rest.join("/"))
        };
        Some(RouteMatch {
            raw_route: self.raw.clone(),
            component_route: if component_route == "/" && self.segments.is_empty() {
                String::new()
            } else {
                component_route
            },
            path_info,
        })
    }

    /// Higher is more specific.
    fn rank(&self) -> (u8, usize, usize) {
        let params = self
            .segments
            .iter()
            .filter(|s| **s == Segment::Param)
            .count();
        let kind = match (self.wildcard, params) {
            (false, 0) => 2,
            (false, _) => 1,
            (true, _) => 0,
        };
        (kind, self.segments.len(), self.segments.len() - params)
    }
}

/// A routing table from routes to component ids.
#[derive(Debug, Clone, Default)]
pub struct Router(Vec<(Route, String)>);

impl Router {
    pub fn add(&mut self, route: &str, component: &str) {
        self.0.push((Route::parse(route), component.to_string()));
    }

    pub fn route(&self, path: &str) -> Option<(&str, RouteMatch)> {
        self.0
            .iter()
            .filter_map(|(route, component)| route.matches(path).map(|m| (route, component, m)))
            .max_by_key(|(route, _, _)| route.rank())
            .map(|(_, component, m)| (component.as_str(), m))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn router() -> Router {
        let mut r = Router::default();
        r.add("/api/v1/chat/query", "query");
        r.add("/api/v1/chat/history/:session_id", "history");
        r.add("/api/v1/...", "api");
        r.add("/health/...", "ops");
        r.add("/metrics", "metrics");
        r
    }

    #[test]
    fn exact_beats_wildcard() {
        let router = router();
        let (c, m) = router.route("/api/v1/chat/query").unwrap();
        assert_eq!(c, "query");
        assert_eq!(m.path_info, "");
    }

    #[test]
    fn params_match_one_segment() {
        assert_eq!(
            router().route("/api/v1/chat/history/abc").unwrap().0,
            "history"
        );
        assert_eq!(
            router().route("/api/v1/chat/history/abc/x").unwrap().0,
            "api"
        );
    }

    #[test]
    fn wildcard_matches_base_and_below() {
        let router = router();
        let (c, m) = router.route("/health").unwrap();
        assert_eq!((c, m.path_info.as_str()), ("ops", ""));
        let (c, m) = router.route("/health/services").unwrap();
        assert_eq!(
            (c, m.path_info.as_str(), m.component_route.as_str()),
            ("ops", "/services", "/health")
        );
    }

    #[test]
    fn no_match_is_none() {
        assert!(router().route("/nope").is_none());
        assert!(router().route("/metricsx").is_none());
    }
}
