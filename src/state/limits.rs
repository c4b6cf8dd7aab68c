//! What a client key may use (its limits, as configured) and what an admission decides.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// A token budget's period, in UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Period {
    Day,
    Month,
}

/// `budget: {tokens, period}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Budget {
    pub tokens: u64,
    pub period: Period,
}

/// A client key's limits; each `None` is no limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct KeyLimits {
    /// Requests admitted in any 60 s.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub requests_per_minute: Option<u32>,
    /// Prompt and completion tokens of the last 60 s under which a request is admitted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tokens_per_minute: Option<u64>,
    /// Requests in flight at once.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_concurrent: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub budget: Option<Budget>,
}

impl KeyLimits {
    /// Checked as written in `field` (`auth.keys[0]`): every limit greater than 0.
    pub fn new(
        field: &str,
        requests_per_minute: Option<u32>,
        tokens_per_minute: Option<u64>,
        max_concurrent: Option<u32>,
        budget: Option<Budget>,
    ) -> Result<KeyLimits, String> {
        let zero = [
            ("requests_per_minute", requests_per_minute == Some(0)),
            ("tokens_per_minute", tokens_per_minute == Some(0)),
            ("max_concurrent", max_concurrent == Some(0)),
            ("budget.tokens", budget.is_some_and(|b| b.tokens == 0)),
        ];
        if let Some((name, _)) = zero.iter().find(|(_, z)| *z) {
            return Err(format!("{field}.{name}: must be greater than 0"));
        }
        Ok(KeyLimits {
            requests_per_minute,
            tokens_per_minute,
            max_concurrent,
            budget,
        })
    }

    pub fn is_empty(&self) -> bool {
        *self == KeyLimits::default()
    }

    /// Whether the key's limits need the tokens of its answers.
    pub fn counts_tokens(&self) -> bool {
        self.tokens_per_minute.is_some() || self.budget.is_some()
    }
}

/// What is left after an admission, for the `x-ratelimit-*` headers (`None`: no such limit).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Remaining {
    pub requests: Option<u64>,
    pub tokens: Option<u64>,
}

/// Why a request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exceeded {
    Requests,
    Tokens,
    Concurrent,
    Budget,
    /// The shared state could not be reached and `on_error` is `deny`.
    StateUnavailable,
}

/// A refused request: why, when to retry, and what is left.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal {
    pub exceeded: Exceeded,
    pub retry_after: Duration,
    pub remaining: Remaining,
}

/// A key's live usage, for `/v1/keys`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub requests_this_minute: u64,
    pub tokens_this_minute: u64,
    pub in_flight: u64,
    /// Tokens of the budget's current period (0 without a budget).
    pub budget_used: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_limit_is_positive() {
        let b = |tokens| {
            Some(Budget {
                tokens,
                period: Period::Day,
            })
        };
        let k = |r, t, c, budget| KeyLimits::new("auth.keys[0]", r, t, c, budget);
        assert!(k(Some(1), Some(1), Some(1), b(1)).is_ok());
        assert!(k(None, None, None, None).unwrap().is_empty());
        for (bad, name) in [
            (k(Some(0), None, None, None), "requests_per_minute"),
            (k(None, Some(0), None, None), "tokens_per_minute"),
            (k(None, None, Some(0), None), "max_concurrent"),
            (k(None, None, None, b(0)), "budget.tokens"),
        ] {
            assert_eq!(
                bad.unwrap_err(),
                format!("auth.keys[0].{name}: must be greater than 0")
            );
        }
    }
}
