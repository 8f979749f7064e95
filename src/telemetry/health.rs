//! Health reports: what `/health` and `/health/services` answer.

use serde::Serialize;

/// The result of probing one dependency.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ServiceCheck {
    /// `redis`, `postgres`, ...
    pub name: String,
    pub status: ServiceStatus,
    /// Round-trip time of the probe, in milliseconds (also when it failed).
    pub latency_ms: f64,
    /// Why the probe failed; absent when it succeeded. Never carries a secret.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Qdrant's only: whether the configured collection exists.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub collection: Option<CollectionCheck>,
}

/// The configured Qdrant collection, as the health check found it. A missing
/// one leaves Qdrant up (a fresh deployment is answered without passages and
/// must stay routable to be ingested into) but is a warning: it is also what a
/// mistyped `qdrant_collection` looks like.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CollectionCheck {
    pub name: String,
    pub exists: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ServiceStatus {
    Up,
    Down,
}

impl ServiceCheck {
    pub fn up(name: &str, latency_ms: f64) -> Self {
        Self {
            name: name.to_string(),
            status: ServiceStatus::Up,
            latency_ms: round_ms(latency_ms),
            error: None,
            collection: None,
        }
    }

    /// Adds what the check found of the configured collection.
    pub fn with_collection(mut self, name: &str, exists: bool) -> Self {
        self.collection = Some(CollectionCheck {
            name: name.to_string(),
            exists,
        });
        self
    }

    pub fn down(name: &str, latency_ms: f64, error: impl Into<String>) -> Self {
        Self {
            name: name.to_string(),
            status: ServiceStatus::Down,
            latency_ms: round_ms(latency_ms),
            error: Some(error.into()),
            collection: None,
        }
    }
}

/// Overall state: `healthy` when every dependency is up, `unhealthy` when none is,
/// `degraded` in between (the query path degrades instead of failing, see DESIGN.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OverallStatus {
    Healthy,
    Degraded,
    Unhealthy,
}

/// How long a `/health/services` report is served before the dependencies
/// are called again: dashboards and several admins polling it cost one
/// round of probes per this many seconds.
pub const REPORT_SECONDS: u64 = 5;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ServicesReport {
    pub status: OverallStatus,
    pub services: Vec<ServiceCheck>,
}

impl ServicesReport {
    pub fn new(services: Vec<ServiceCheck>) -> Self {
        let up = services
            .iter()
            .filter(|s| s.status == ServiceStatus::Up)
            .count();
        let status = if up == services.len() {
            OverallStatus::Healthy
        } else if up == 0 {
            OverallStatus::Unhealthy
        } else {
            OverallStatus::Degraded
        };
        Self { status, services }
    }

    /// What an operator should see although every service is up.
    pub fn warnings(&self) -> Vec<String> {
        self.services
            .iter()
            .filter_map(|s| s.collection.as_ref())
            .filter(|c| !c.exists)
            .map(|c| {
                format!(
                    "Qdrant collection `{}` does not exist: questions are answered without \
                     passages until a document is ingested (or qdrant_collection is mistyped)",
                    c.name
                )
            })
            .collect()
    }

    /// 200 when everything is up, 503 otherwise, so a probe can act on the status alone.
    pub fn http_status(&self) -> u16 {
        match self.status {
            OverallStatus::Healthy => 200,
            _ => 503,
        }
    }
}

/// What `/health` answers: the process is alive. It calls no dependency.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Liveness {
    pub status: &'static str,
    pub service: &'static str,
    pub version: &'static str,
}

impl Liveness {
    pub fn new(version: &'static str) -> Self {
        Self {
            status: "healthy",
            service: "rag-chatbot",
            version,
        }
    }
}

fn round_ms(ms: f64) -> f64 {
    (ms * 1000.0).round() / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_up_is_healthy_and_200() {
        let report = ServicesReport::new(vec![
            ServiceCheck::up("redis", 0.4),
            ServiceCheck::up("postgres", 1.2),
        ]);
        assert_eq!(report.status, OverallStatus::Healthy);
        assert_eq!(report.http_status(), 200);
    }

    #[test]
    fn one_down_is_degraded_and_503() {
        let report = ServicesReport::new(vec![
            ServiceCheck::up("redis", 0.4),
            ServiceCheck::down("postgres", 3.0, "connection refused"),
        ]);
        assert_eq!(report.status, OverallStatus::Degraded);
        assert_eq!(report.http_status(), 503);
    }

    #[test]
    fn a_missing_collection_is_a_warning_not_a_failure() {
        let report = ServicesReport::new(vec![
            ServiceCheck::up("redis", 0.4),
            ServiceCheck::up("qdrant", 1.0).with_collection("documents", false),
        ]);
        assert_eq!(report.status, OverallStatus::Healthy);
        let warnings = report.warnings();
        assert_eq!(warnings.len(), 1);
        assert!(
            warnings[0].contains("`documents` does not exist"),
            "{warnings:?}"
        );
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["services"][1]["collection"]["exists"], false);
        assert!(json["services"][0].get("collection").is_none());
        let present = ServicesReport::new(vec![
            ServiceCheck::up("qdrant", 1.0).with_collection("documents", true)
        ]);
        assert!(present.warnings().is_empty());
    }

    #[test]
    fn all_down_is_unhealthy() {
        let report = ServicesReport::new(vec![ServiceCheck::down("redis", 1.0, "refused")]);
        assert_eq!(report.status, OverallStatus::Unhealthy);
    }

    #[test]
    fn serialises_with_lowercase_states_and_no_error_when_up() {
        let json = serde_json::to_value(ServicesReport::new(vec![ServiceCheck::up(
            "redis", 0.12345,
        )]))
        .unwrap();
        assert_eq!(json["status"], "healthy");
        assert_eq!(json["services"][0]["status"], "up");
        assert_eq!(json["services"][0]["latency_ms"], 0.123);
        assert!(json["services"][0].get("error").is_none());
    }
}
