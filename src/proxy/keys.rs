//! `GET /v1/keys` (admin): each client key's name, its limits and its live usage (every
//! replica's while the state is shared). Never a key, nor its digest.

use bytes::Bytes;
use serde_json::{json, Value};

use crate::auth::Auth;
use crate::state::{clock, Limiter};

pub(super) async fn view(auth: &Auth, limiter: &Limiter) -> Bytes {
    let mut data = Vec::with_capacity(auth.keys().len());
    for key in auth.keys() {
        let mut entry = json!({ "name": key.name, "limits": key.limits() });
        if let Some(limited) = key.limited() {
            // One call per key: an admin page, not a request's path.
            let u = limiter.usage(limited).await;
            let mut usage = json!({
                "requests_this_minute": u.requests_this_minute,
                "tokens_this_minute": u.tokens_this_minute,
                "in_flight": u.in_flight,
            });
            if let Some(b) = limited.limits.budget {
                let (_, resets) = clock::period_at(b.period, clock::unix_ms());
                usage["budget_used"] = Value::from(u.budget_used);
                usage["budget_resets_at"] = Value::from(clock::rfc3339(resets));
            }
            entry["usage"] = usage;
        }
        data.push(entry);
    }
    let view = json!({ "object": "list", "state": limiter.mode().as_str(), "data": data });
    Bytes::from(view.to_string())
}
