//! The routes the gateway answers itself: health, readiness, the merged model list and the
//! endpoint view.

use bytes::Bytes;
use http::Method;

use crate::auth::ClientKey;
use crate::error::ErrorKind;
use crate::openai::List;
use crate::routes::Routes;

/// A local route's answer: status and JSON body, or an error.
pub enum LocalAnswer {
    Json(u16, Bytes),
    Error(ErrorKind, String),
    /// A model the request's key may not use.
    Refused(Box<pingora::Error>),
    /// `/v1/keys`: the keys' live usage, which may take a call to the shared state.
    Keys,
}

/// The answer for a local path, or `None` when the path is to be proxied. `draining`: the
/// gateway is shutting down; `client`: the request's key, whose allowlist filters the models.
pub fn answer(
    method: &Method,
    path: &str,
    routes: &Routes,
    draining: bool,
    client: Option<&ClientKey>,
) -> Option<LocalAnswer> {
    let route = match path {
        "/health" | "/ready" | "/v1/models" | "/v1/endpoints" | "/v1/keys" => path,
        p if p.starts_with("/v1/models/") => "/v1/models/{id}",
        p if p.starts_with("/v1/") => return None,
        _ => {
            return Some(LocalAnswer::Error(
                ErrorKind::NotFound,
                "no such route: the gateway serves /v1/*, /health and /ready".into(),
            ))
        }
    };
    if method != Method::GET && method != Method::HEAD {
        return Some(LocalAnswer::Error(
            ErrorKind::MethodNotAllowed,
            "this route only answers GET".into(),
        ));
    }
    Some(match route {
        "/health" => LocalAnswer::Json(200, Bytes::from_static(br#"{"status":"ok"}"#)),
        "/ready" => readiness(routes, draining),
        "/v1/models" => match client.filter(|c| !c.allows_any_model()) {
            None => LocalAnswer::Json(200, routes.models_json.clone()),
            Some(c) => {
                let allowed = routes.model_entries.iter().filter(|m| c.allows(&m.id));
                LocalAnswer::Json(200, to_json(&List::new(allowed.collect())))
            }
        },
        "/v1/endpoints" => LocalAnswer::Json(200, routes.endpoints_json()),
        "/v1/keys" => LocalAnswer::Keys,
        _ => retrieve_model(&path["/v1/models/".len()..], routes, client),
    })
}

/// The error for a model the request's key may not use (`model` `None`: a request without
/// one, which only an unrestricted key may send): 403, or 404 as for a model that does not
/// exist when the operator hides unlisted models.
pub fn refused_model(model: Option<&str>, hide: bool) -> Box<pingora::Error> {
    match (model, hide) {
        (Some(m), true) => ErrorKind::ModelNotFound.err(not_found_message(m)),
        (Some(m), false) => ErrorKind::ModelNotAllowed.err(format!(
            "This API key may not use the model `{}`",
            m.chars().take(200).collect::<String>()
        )),
        (None, _) => ErrorKind::ModelNotAllowed
            .err("This API key may only send requests that name one of its models in `model`"),
    }
}

/// The 404 message for a model no endpoint serves.
pub fn not_found_message(id: &str) -> String {
    format!(
        "The model `{}` does not exist or is not served by any endpoint",
        id.chars().take(200).collect::<String>()
    )
}

fn to_json<T: serde::Serialize>(v: &T) -> Bytes {
    Bytes::from(serde_json::to_vec(v).expect("plain data serializes"))
}

/// `GET /ready`: 200 once the first discovery round is done and a model is routable; 503
/// before that and while draining, with the reason as `status`.
fn readiness(routes: &Routes, draining: bool) -> LocalAnswer {
    let (code, status): (u16, &'static [u8]) = if draining {
        (503, br#"{"status":"draining"}"#)
    } else if !routes.ready {
        (503, br#"{"status":"starting"}"#)
    } else if !routes.routable() {
        (503, br#"{"status":"no_models"}"#)
    } else {
        (200, br#"{"status":"ready"}"#)
    };
    LocalAnswer::Json(code, Bytes::from_static(status))
}

/// `GET /v1/models/{id}`: one model of the merged list. Ids may hold slashes
/// (`Qwen/Qwen3-8B`), sent as they are or as `%2F`. A model the key may not use is refused as
/// a request for it would be.
fn retrieve_model(raw_id: &str, routes: &Routes, client: Option<&ClientKey>) -> LocalAnswer {
    let id = percent_decode(raw_id);
    match routes.model(&id) {
        Some(_) if client.is_some_and(|c| !c.allows(&id)) => LocalAnswer::Refused(refused_model(
            Some(&id),
            routes.settings.auth.hide_unlisted_models,
        )),
        Some(entry) => LocalAnswer::Json(200, to_json(entry)),
        None => LocalAnswer::Error(ErrorKind::ModelNotFound, not_found_message(&id)),
    }
}

/// `%XX` escapes decoded; anything malformed is kept as it is.
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (bytes[i], bytes.get(i + 1), bytes.get(i + 2)) {
            (b'%', Some(&h), Some(&l)) if hex(h).is_some() && hex(l).is_some() => {
                out.push((hex(h).unwrap_or(0) * 16 + hex(l).unwrap_or(0)) as u8);
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("Qwen%2FQwen3-8B"), "Qwen/Qwen3-8B");
        assert_eq!(percent_decode("a%zzb%2"), "a%zzb%2");
        assert_eq!(percent_decode("plain/id"), "plain/id");
    }

    #[test]
    fn local_and_proxied_paths() {
        let r = Routes::default();
        let status = |m: &Method, p: &str| match answer(m, p, &r, false, None) {
            None => 0,
            Some(LocalAnswer::Json(s, _)) => s,
            Some(LocalAnswer::Error(k, _)) => k.status(),
            Some(LocalAnswer::Refused(_)) => 403,
            Some(LocalAnswer::Keys) => 1,
        };
        assert_eq!(status(&Method::GET, "/health"), 200);
        assert_eq!(status(&Method::GET, "/ready"), 503);
        assert_eq!(status(&Method::GET, "/v1/models"), 200);
        assert_eq!(status(&Method::POST, "/v1/models"), 405);
        assert_eq!(status(&Method::GET, "/v1/keys"), 1);
        assert_eq!(status(&Method::POST, "/v1/keys"), 405);
        assert_eq!(status(&Method::POST, "/v1/chat/completions"), 0);
        assert_eq!(status(&Method::GET, "/v1/models/x"), 404);
        assert_eq!(status(&Method::DELETE, "/v1/models/x"), 405);
        assert_eq!(status(&Method::GET, "/v1/files/x"), 0);
        assert_eq!(status(&Method::GET, "/admin"), 404);
        assert_eq!(status(&Method::GET, "/v1"), 404);
    }
}
