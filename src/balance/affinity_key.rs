//! The key `prefix_affinity` keeps a conversation on one endpoint by: what the client names it
//! by (`user`, `prompt_cache_key`, an `x-session-id` header), or else a hash of how it starts.
//! A chat's start is its messages up to and including the first user message (the system
//! prompt and the opening question), which every later turn repeats; a completion's is the
//! start of its prompt. At most `MAX_PREFIX` bytes are hashed.

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::openai::RequestFields;

/// Where the key comes from (`balancing.prefix_affinity.key`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeySource {
    /// The first present of `user`, `prompt_cache_key`, `x-session-id`, the prefix.
    #[default]
    Auto,
    User,
    PromptCacheKey,
    /// The `x-session-id` request header.
    SessionHeader,
    /// The conversation's start.
    Prefix,
}

/// The request header a client can name its session by.
pub const SESSION_HEADER: &str = "x-session-id";

/// Bytes of a conversation's start that are hashed, at most.
pub const MAX_PREFIX: usize = 4096;

/// The affinity key of a request; `None` when it has none (any endpoint will do).
pub fn key(source: KeySource, fields: &RequestFields<'_>, session: Option<&[u8]>) -> Option<u64> {
    fn raw(v: Option<&RawValue>) -> Option<&[u8]> {
        v.map(|r| r.get().as_bytes()).filter(|b| *b != b"null")
    }
    let named = |tag: u8, bytes: Option<&[u8]>| bytes.map(|b| hash(&[&[tag], b]));
    let user = || named(b'u', raw(fields.user));
    let cache_key = || named(b'c', raw(fields.prompt_cache_key));
    let header = || named(b's', session.filter(|s| !s.is_empty()));
    let prefix = || conversation_start(fields);
    match source {
        KeySource::Auto => user().or_else(cache_key).or_else(header).or_else(prefix),
        KeySource::User => user(),
        KeySource::PromptCacheKey => cache_key(),
        KeySource::SessionHeader => header(),
        KeySource::Prefix => prefix(),
    }
}

/// A hash of the conversation's start: chat messages up to the first user message, else the
/// first bytes of `prompt` or `input`.
fn conversation_start(fields: &RequestFields<'_>) -> Option<u64> {
    if let Some(messages) = fields.messages {
        #[derive(Deserialize)]
        struct Role<'a> {
            #[serde(borrow)]
            role: Option<std::borrow::Cow<'a, str>>,
        }
        let list: Vec<&RawValue> = serde_json::from_str(messages.get()).ok()?;
        let mut parts: Vec<&[u8]> = vec![b"m"];
        let mut taken = 0;
        for m in list {
            let text = m.get().as_bytes();
            let room = MAX_PREFIX.saturating_sub(taken);
            parts.push(&text[..text.len().min(room)]);
            taken += text.len().min(room);
            let is_user = serde_json::from_str::<Role>(m.get())
                .is_ok_and(|r| r.role.as_deref() == Some("user"));
            if is_user || taken >= MAX_PREFIX {
                break;
            }
        }
        return (parts.len() > 1).then(|| hash(&parts));
    }
    let text = fields.prompt.or(fields.input)?.get().as_bytes();
    Some(hash(&[b"p", &text[..text.len().min(MAX_PREFIX)]]))
}

/// FNV-1a, 64 bits: stable across processes and builds, so replicas agree on a key.
fn hash(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for &b in *part {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        // Parts are separated, so ("ab", "c") and ("a", "bc") differ.
        h ^= 0xff;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::openai::peek_request;

    fn key_of(body: &str, source: KeySource, session: Option<&str>) -> Option<u64> {
        let fields = peek_request(body.as_bytes()).unwrap();
        key(source, &fields, session.map(str::as_bytes))
    }

    #[test]
    fn every_turn_of_a_chat_has_the_key_of_its_first() {
        let turn1 = r#"{"model":"m","messages":[{"role":"system","content":"Be brief."},{"role":"user","content":"Hi"}]}"#;
        let turn2 = r#"{"messages":[{"role":"system","content":"Be brief."},{"role":"user","content":"Hi"},{"role":"assistant","content":"Hello"},{"role":"user","content":"More"}],"model":"m"}"#;
        let other = r#"{"model":"m","messages":[{"role":"system","content":"Be brief."},{"role":"user","content":"Bye"}]}"#;
        let k1 = key_of(turn1, KeySource::Auto, None);
        assert!(k1.is_some());
        assert_eq!(k1, key_of(turn2, KeySource::Auto, None));
        assert_ne!(k1, key_of(other, KeySource::Auto, None));
    }

    #[test]
    fn named_keys_come_first_in_auto_and_each_source_reads_its_own() {
        let body = r#"{"model":"m","user":"alice","prompt_cache_key":"pk","messages":[{"role":"user","content":"Hi"}]}"#;
        let auto = key_of(body, KeySource::Auto, Some("s1"));
        assert_eq!(auto, key_of(body, KeySource::User, None));
        assert_ne!(auto, key_of(body, KeySource::PromptCacheKey, None));
        assert_eq!(
            key_of(r#"{"model":"m"}"#, KeySource::Auto, Some("s1")),
            key_of(r#"{"model":"x"}"#, KeySource::SessionHeader, Some("s1"))
        );
        assert_eq!(key_of(r#"{"model":"m"}"#, KeySource::Auto, None), None);
        assert_eq!(
            key_of(r#"{"model":"m","user":null}"#, KeySource::User, None),
            None
        );
        let p = key_of(
            r#"{"model":"m","prompt":"Once upon"}"#,
            KeySource::Prefix,
            None,
        );
        assert!(p.is_some());
    }

    #[test]
    fn the_hashed_start_is_bounded() {
        let long = "x".repeat(3 * MAX_PREFIX);
        let a = format!(
            r#"{{"model":"m","messages":[{{"role":"system","content":"{long}"}},{{"role":"user","content":"a"}}]}}"#
        );
        let b = format!(
            r#"{{"model":"m","messages":[{{"role":"system","content":"{long}"}},{{"role":"user","content":"b"}}]}}"#
        );
        // Only the first MAX_PREFIX bytes count: the two differ after them.
        assert_eq!(
            key_of(&a, KeySource::Prefix, None),
            key_of(&b, KeySource::Prefix, None)
        );
    }
}
