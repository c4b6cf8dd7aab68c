//! `ai_proxy::endpoint::parse_url` and `Endpoint::new` on arbitrary URL text (UTF-8,
//! lossily), for both endpoint kinds.
//!
//! Properties: no panic; an error never repeats the URL's userinfo (`user:password@`); an
//! accepted URL is http(s) with a host and no credentials, query or fragment; what
//! `Endpoint::new` accepts it can use: the stored URL parses to the same parts, the `Host`
//! header and the request/discovery paths are valid, and the request rewrite succeeds.
#![no_main]

use ai_proxy::endpoint::{parse_url, Endpoint, EndpointKind};
use libfuzzer_sys::fuzz_target;
use pingora::http::RequestHeader;

/// The userinfo of `scheme://userinfo@host...`, with its `@`, if the URL has that shape
/// and the userinfo occurs only once.
fn userinfo(url: &str) -> Option<&str> {
    let start = url.find("://")? + 3;
    let rest = &url[start..];
    let auth_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let at = rest[..auth_end].rfind('@')?;
    let ui = &rest[..=at];
    (ui.len() > 1 && url.matches(ui).count() == 1).then_some(ui)
}

/// An error may show the URL (with `{:?}`) only with its userinfo redacted. The check is
/// skipped when the userinfo's text (raw or escaped) would appear in the redacted URL anyway
/// (`***@`, or escapes that happen to spell it).
fn check_err(url: &str, err: &str) {
    let Some(ui) = userinfo(url) else { return };
    let redacted = format!("{:?}", url.replacen(ui, "***@", 1));
    let escaped = format!("{ui:?}");
    let escaped = &escaped[1..escaped.len() - 1];
    for leak in [ui, escaped] {
        if !redacted.contains(leak) {
            assert!(
                !err.contains(leak),
                "error repeats the userinfo {ui:?}: {err}"
            );
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let url = String::from_utf8_lossy(data);
    let url = url.as_ref();
    match parse_url(url) {
        Ok(p) => {
            assert!(!p.host.is_empty());
            assert!(!url.contains(['?', '#']));
            assert!(
                url.starts_with("http://") || url.starts_with("https://") || {
                    let l = url.to_ascii_lowercase();
                    l.starts_with("http://") || l.starts_with("https://")
                }
            );
            assert!(!p.base_path.ends_with('/'));
        }
        Err(e) => check_err(url, &e),
    }
    for kind in [EndpointKind::Openai, EndpointKind::Ocf] {
        let ep = match Endpoint::new(url, kind, None, None, None) {
            Ok(ep) => ep,
            Err(e) => {
                check_err(url, &e);
                continue;
            }
        };
        let again = parse_url(&ep.url).expect("the stored URL parses again");
        assert_eq!(
            (
                again.tls,
                again.host.as_str(),
                again.port,
                again.base_path.as_str()
            ),
            (ep.tls, ep.host.as_str(), ep.port, ep.base_path.as_str()),
            "stored URL {:?} parses differently",
            ep.url
        );
        assert!(!ep.name.is_empty());
        let dp = ep.discovery_path();
        assert!(
            dp.parse::<http::uri::PathAndQuery>().is_ok(),
            "discovery path {dp:?} is not a valid request path"
        );
        let mut req = RequestHeader::build("POST", b"/v1/chat/completions?x=1", None).unwrap();
        ep.rewrite_request(&mut req)
            .unwrap_or_else(|e| panic!("rewrite for {:?} failed: {e}", ep.url));
        assert_eq!(req.headers["host"], ep.host_header);
        let want = ep.upstream_path("/v1/chat/completions?x=1");
        assert_eq!(
            req.uri.path_and_query().map(|p| p.as_str()),
            Some(want.as_str())
        );
    }
});
