//! Where a proxied request goes, decided once from its body: the pool of the model it names
//! (a JSON `model`, or a multipart form field), or the first reachable endpoint for a request
//! without one; with what the request needs on the way (forced stream usage, affinity key).

use pingora::proxy::Session;
use pingora::Result;

use super::ctx::Target;
use super::local;
use super::model_field::ModelField;
use crate::balance::affinity_key;
use crate::error::ErrorKind;
use crate::multipart;
use crate::openai::{peek_request, PeekError, RequestFields};
use crate::routes::Routes;

/// Routes whose streams end with a usage chunk when asked (`stream_options.include_usage`).
const STREAM_USAGE_ROUTES: &[&str] = &["/v1/chat/completions", "/v1/completions"];

/// Routes whose requests are meaningless without a `model`: a JSON body without one is a 400.
const MODEL_ROUTES: &[&str] = &[
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/embeddings",
    "/v1/responses",
    "/v1/messages",
    "/v1/messages/count_tokens",
];

/// Where a request goes, as its body says.
pub(super) struct Routed {
    pub target: Target,
    /// The gateway is to ask for the stream's usage (`stream_usage: force`, a stream whose
    /// client did not).
    pub force_usage: bool,
    /// The request's affinity key, when its pool's policy wants one.
    pub affinity: Option<u64>,
    /// Where the body names its model.
    pub model_field: ModelField,
}

/// Decide the target of a proxied request from its body.
pub(super) fn decide(session: &Session, routes: &Routes, body: &[u8]) -> Result<Routed> {
    let default = || {
        routes
            .default_upstream
            .clone()
            .map(|u| Routed {
                target: Target::Default(u),
                force_usage: false,
                affinity: None,
                model_field: ModelField::Json,
            })
            .ok_or_else(|| ErrorKind::NoHealthyEndpoint.err("no endpoint is reachable yet"))
    };
    let path = session.req_header().uri.path();
    let needs_model = MODEL_ROUTES.contains(&path);
    if body.is_empty() {
        if needs_model && session.req_header().method == http::Method::POST {
            return Err(ErrorKind::InvalidRequest
                .err("the request body is empty; it needs a JSON object with a `model`"));
        }
        return default();
    }
    if let Some(content_type) = multipart_type(session) {
        let field = multipart::model_field(content_type, body)
            .map_err(|why| ErrorKind::InvalidRequest.err(why))?;
        let Some(range) = field else {
            return default();
        };
        let model = String::from_utf8_lossy(&body[range.clone()])
            .trim()
            .to_string();
        let fields = RequestFields::default();
        let mut routed = model_target(session, routes, model, &fields, false)?;
        routed.model_field = ModelField::Multipart(range);
        return Ok(routed);
    }
    let fields = match peek_request(body) {
        Ok(f) => f,
        Err(PeekError::NotJson(why)) => {
            return Err(ErrorKind::InvalidRequest.err(format!(
                "the request body is not a valid JSON object: {why}"
            )))
        }
    };
    let force_usage = routes.settings.force_stream_usage
        && STREAM_USAGE_ROUTES.contains(&path)
        && fields.stream_without_usage();
    let model = match fields.model.as_deref() {
        Some(m) => m.to_owned(),
        None if needs_model => {
            return Err(
                ErrorKind::InvalidRequest.err("the request body needs a string `model` field")
            )
        }
        None => return default(),
    };
    model_target(session, routes, model, &fields, force_usage)
}

/// The target of a request for `model`.
fn model_target(
    session: &Session,
    routes: &Routes,
    model: String,
    fields: &RequestFields<'_>,
    force_usage: bool,
) -> Result<Routed> {
    match routes.pool(&model) {
        Some(pool) => {
            let affinity = pool.wants_affinity().then(|| {
                let session_id = session
                    .req_header()
                    .headers
                    .get(affinity_key::SESSION_HEADER);
                affinity_key::key(
                    routes.settings.affinity_key,
                    fields,
                    session_id.map(|v| v.as_bytes()),
                )
            });
            Ok(Routed {
                target: Target::Model {
                    pool: pool.clone(),
                    model,
                },
                force_usage,
                affinity: affinity.flatten(),
                model_field: ModelField::Json,
            })
        }
        None if !routes.ready => Err(ErrorKind::NoHealthyEndpoint
            .err("model discovery has not completed yet; retry shortly")),
        None => Err(ErrorKind::ModelNotFound.err(local::not_found_message(&model))),
    }
}

/// The content type of a multipart request.
fn multipart_type(session: &Session) -> Option<&[u8]> {
    session
        .req_header()
        .headers
        .get(http::header::CONTENT_TYPE)
        .map(|v| v.as_bytes())
        .filter(|v| v.starts_with(b"multipart/"))
}
