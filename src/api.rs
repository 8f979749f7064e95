//! The JSON shapes every component answers with.

use serde::{Deserialize, Serialize};

/// The error body of the seed's contract: `{"detail": "...", "status": "..."}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// What went wrong, for a person.
    pub detail: String,
    /// A stable machine-readable code, e.g. `invalid_request`, `rate_limited`.
    pub status: String,
}

impl ErrorBody {
    pub fn new(status: impl Into<String>, detail: impl Into<String>) -> Self {
        Self {
            detail: detail.into(),
            status: status.into(),
        }
    }

    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("an ErrorBody always serialises")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_body_has_the_seed_field_names() {
        let body = ErrorBody::new("rate_limited", "Rate limit exceeded. Too many requests.");
        let value: serde_json::Value = serde_json::from_slice(&body.to_json()).unwrap();
        assert_eq!(value["detail"], "Rate limit exceeded. Too many requests.");
        assert_eq!(value["status"], "rate_limited");
        assert_eq!(value.as_object().unwrap().len(), 2);
    }
}
