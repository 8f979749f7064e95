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
        }
    }

    pub fn down(name: &str, latency_ms: f64, error: impl Into<String>) -> Self {
        Self {
            name: name.to_string(),
            status: ServiceStatus::Down,
            latency_ms: round_ms(latency_ms),
            error: Some(error.into()),
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
