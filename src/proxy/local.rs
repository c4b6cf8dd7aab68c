//! The routes the gateway answers itself: health, readiness, the merged model list and the
//! endpoint view.

use bytes::Bytes;
use http::Method;

use crate::error::ErrorKind;
use crate::routes::Routes;

/// A local route's answer: status and JSON body, or an error.
pub enum LocalAnswer {
    Json(u16, Bytes),
    Error(ErrorKind, &'static str),
}

/// The answer for a local path, or `None` when the path is to be proxied.
pub fn answer(method: &Method, path: &str, routes: &Routes) -> Option<LocalAnswer> {
    let body = match path {
        "/health" => Bytes::from_static(br#"{"status":"ok"}"#),
        "/ready" if routes.ready => Bytes::from_static(br#"{"status":"ready"}"#),
        "/ready" => {
            return Some(LocalAnswer::Json(
                503,
                Bytes::from_static(br#"{"status":"starting"}"#),
            ))
        }
        "/v1/models" => routes.models_json.clone(),
        "/v1/endpoints" => routes.endpoints_json(),
        p if p.starts_with("/v1/") => return None,
        _ => {
            return Some(LocalAnswer::Error(
                ErrorKind::NotFound,
                "no such route: the gateway serves /v1/*, /health and /ready",
            ))
        }
    };
    if method != Method::GET && method != Method::HEAD {
        return Some(LocalAnswer::Error(
            ErrorKind::MethodNotAllowed,
            "this route only answers GET",
        ));
    }
    Some(LocalAnswer::Json(200, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_and_proxied_paths() {
        let r = Routes::default();
        let status = |m: &Method, p: &str| match answer(m, p, &r) {
            None => 0,
            Some(LocalAnswer::Json(s, _)) => s,
            Some(LocalAnswer::Error(k, _)) => k.status(),
        };
        assert_eq!(status(&Method::GET, "/health"), 200);
        assert_eq!(status(&Method::GET, "/ready"), 503);
        assert_eq!(status(&Method::GET, "/v1/models"), 200);
        assert_eq!(status(&Method::POST, "/v1/models"), 405);
        assert_eq!(status(&Method::POST, "/v1/chat/completions"), 0);
        assert_eq!(status(&Method::GET, "/v1/models/x"), 0);
        assert_eq!(status(&Method::GET, "/admin"), 404);
        assert_eq!(status(&Method::GET, "/v1"), 404);
    }
}
