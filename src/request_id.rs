//! Request ids: a client's own `x-request-id` when it is safe to echo and log (bounded length,
//! a conservative character set), else one made here. The id goes upstream and comes back
//! on every response, error answers included.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use http::HeaderValue;

pub const HEADER: &str = "x-request-id";
/// Where an upstream's own `x-request-id` goes on the response (ours takes its place).
pub const UPSTREAM_HEADER: &str = "x-upstream-request-id";

/// Longer client ids are replaced, not truncated (a truncated id would match nothing).
const MAX_LEN: usize = 128;

/// The client's id if it is acceptable, else a new one.
pub fn for_request(client: Option<&HeaderValue>) -> HeaderValue {
    client
        .filter(|v| acceptable(v.as_bytes()))
        .cloned()
        .unwrap_or_else(generate)
}

fn acceptable(id: &[u8]) -> bool {
    !id.is_empty()
        && id.len() <= MAX_LEN
        && id
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:@/+=".contains(b))
}

/// `<process prefix>-<counter>`: unique within the process, and across processes and restarts
/// with overwhelming odds; no syscall or lock per request.
fn generate() -> HeaderValue {
    static PREFIX: OnceLock<String> = OnceLock::new();
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let prefix = PREFIX.get_or_init(|| {
        // RandomState is seeded from the OS's randomness once per process.
        let mut h = RandomState::new().build_hasher();
        h.write_u32(std::process::id());
        format!("{:016x}", h.finish())
    });
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    HeaderValue::from_str(&format!("{prefix}-{n:x}")).expect("hex digits and a dash")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_safe_client_id_is_kept() {
        let v = HeaderValue::from_static("abc-123_x.y:z");
        assert_eq!(for_request(Some(&v)), v);
    }

    #[test]
    fn unsafe_or_long_ids_are_replaced() {
        for bad in ["", "has space", "semi;colon", "quote\"", "<script>"] {
            let v = HeaderValue::from_str(bad).unwrap();
            assert_ne!(for_request(Some(&v)), v, "{bad:?}");
        }
        let long = HeaderValue::from_str(&"a".repeat(MAX_LEN + 1)).unwrap();
        assert_ne!(for_request(Some(&long)), long);
        let max = HeaderValue::from_str(&"a".repeat(MAX_LEN)).unwrap();
        assert_eq!(for_request(Some(&max)), max);
    }

    #[test]
    fn generated_ids_are_unique_and_acceptable() {
        let a = for_request(None);
        let b = for_request(None);
        assert_ne!(a, b);
        assert!(acceptable(a.as_bytes()) && acceptable(b.as_bytes()));
    }
}
