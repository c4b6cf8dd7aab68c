//! A model server's prefix (KV) cache, as far as timing goes: a request whose conversation
//! start (its messages up to the first user message, or its prompt) the server saw recently
//! gets its first byte after `hit`, any other after `miss`. The server remembers its last
//! `capacity` prefixes. For the balancing fleet simulation.

use std::collections::hash_map::DefaultHasher;
use std::collections::VecDeque;
use std::hash::{Hash, Hasher};
use std::sync::Mutex;
use std::time::Duration;

use serde_json::Value;

/// How the cache behaves (`MockConfig::with_prefix_cache`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PrefixCache {
    pub hit: Duration,
    pub miss: Duration,
    pub capacity: usize,
}

/// The prefixes a mock saw, most recent last.
#[derive(Debug)]
pub(crate) struct SeenPrefixes {
    cfg: PrefixCache,
    seen: Mutex<VecDeque<u64>>,
}

impl SeenPrefixes {
    pub(crate) fn new(cfg: PrefixCache) -> Self {
        SeenPrefixes {
            cfg,
            seen: Mutex::new(VecDeque::with_capacity(cfg.capacity)),
        }
    }

    /// The time to first byte of this request, remembering its prefix.
    pub(crate) fn delay(&self, req: &Value) -> Duration {
        let Some(key) = prefix_key(req) else {
            return self.cfg.miss;
        };
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        let hit = match seen.iter().position(|k| *k == key) {
            Some(at) => {
                seen.remove(at);
                true
            }
            None => false,
        };
        seen.push_back(key);
        while seen.len() > self.cfg.capacity {
            seen.pop_front();
        }
        if hit {
            self.cfg.hit
        } else {
            self.cfg.miss
        }
    }
}

/// The model and the conversation's start: messages up to and including the first user
/// message, or the prompt.
fn prefix_key(req: &Value) -> Option<u64> {
    let mut h = DefaultHasher::new();
    req.get("model")?.to_string().hash(&mut h);
    if let Some(messages) = req.get("messages").and_then(Value::as_array) {
        for m in messages {
            m.to_string().hash(&mut h);
            if m.get("role").and_then(Value::as_str) == Some("user") {
                break;
            }
        }
    } else {
        req.get("prompt")?.to_string().hash(&mut h);
    }
    Some(h.finish())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_seen_prefix_is_fast_until_forgotten() {
        let cache = SeenPrefixes::new(PrefixCache {
            hit: Duration::from_millis(1),
            miss: Duration::from_millis(9),
            capacity: 2,
        });
        let turn = |c: u32, more: bool| {
            let mut m = vec![json!({"role": "user", "content": format!("c{c}")})];
            if more {
                m.push(json!({"role": "assistant", "content": "a"}));
                m.push(json!({"role": "user", "content": "next"}));
            }
            json!({"model": "m", "messages": m})
        };
        let (hit, miss) = (Duration::from_millis(1), Duration::from_millis(9));
        assert_eq!(cache.delay(&turn(1, false)), miss);
        assert_eq!(
            cache.delay(&turn(1, true)),
            hit,
            "a later turn of the same conversation"
        );
        assert_eq!(cache.delay(&turn(2, false)), miss);
        assert_eq!(cache.delay(&turn(3, false)), miss);
        // Capacity 2: conversation 1 was pushed out by 2 and 3.
        assert_eq!(cache.delay(&turn(1, true)), miss);
    }
}
