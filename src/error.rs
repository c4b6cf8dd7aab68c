//! Gateway errors: each a status, a stable code and an OpenAI error body, carried on Pingora's
//! `Error` so every phase reports them the same way and `fail_to_proxy` renders them in one place.

use bytes::Bytes;
use pingora::{Error, ErrorSource, ErrorType};
use serde_json::json;

/// An error the gateway answers itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// 400: the body is not JSON, or has no usable `model`.
    InvalidRequest,
    /// 401: no client key, or not a valid one.
    InvalidApiKey,
    /// 403: the client key may not use the model.
    ModelNotAllowed,
    /// 404: no endpoint serves the model.
    ModelNotFound,
    /// 404: no such route.
    NotFound,
    /// 405: a local route called with the wrong method.
    MethodNotAllowed,
    /// 408: the client did not send its body in time.
    RequestTimeout,
    /// 413: the body is over `max_body_bytes`.
    BodyTooLarge,
    /// 429: the client key is over its `requests_per_minute`, `tokens_per_minute` or
    /// `max_concurrent`.
    RateLimited,
    /// 429: the client key's token budget for the period is used up.
    QuotaExceeded,
    /// 431: the request head is over `max_header_bytes`.
    HeaderTooLarge,
    /// 502: every candidate endpoint failed before any byte reached the client.
    UpstreamFailed,
    /// 503: the model is known but no endpoint is usable.
    NoHealthyEndpoint,
    /// 503: the key's limits are shared and Redis cannot be reached (`on_error: deny`).
    StateUnavailable,
    /// 504: the upstream timed out.
    UpstreamTimeout,
    /// 500: a bug or a resource problem in the gateway itself.
    Internal,
}

impl ErrorKind {
    pub fn status(self) -> u16 {
        match self {
            ErrorKind::InvalidRequest => 400,
            ErrorKind::InvalidApiKey => 401,
            ErrorKind::ModelNotAllowed => 403,
            ErrorKind::RateLimited | ErrorKind::QuotaExceeded => 429,
            ErrorKind::ModelNotFound | ErrorKind::NotFound => 404,
            ErrorKind::MethodNotAllowed => 405,
            ErrorKind::RequestTimeout => 408,
            ErrorKind::BodyTooLarge => 413,
            ErrorKind::HeaderTooLarge => 431,
            ErrorKind::Internal => 500,
            ErrorKind::UpstreamFailed => 502,
            ErrorKind::NoHealthyEndpoint | ErrorKind::StateUnavailable => 503,
            ErrorKind::UpstreamTimeout => 504,
        }
    }

    /// The stable short code: the OpenAI body's `code`, and the label logs and metrics use.
    pub fn code(self) -> &'static str {
        match self {
            ErrorKind::InvalidRequest => "invalid_request",
            ErrorKind::InvalidApiKey => "invalid_api_key",
            ErrorKind::ModelNotAllowed => "model_not_allowed",
            ErrorKind::RateLimited => "rate_limit_exceeded",
            ErrorKind::QuotaExceeded => "insufficient_quota",
            ErrorKind::ModelNotFound => "model_not_found",
            ErrorKind::NotFound => "not_found",
            ErrorKind::MethodNotAllowed => "method_not_allowed",
            ErrorKind::RequestTimeout => "request_timeout",
            ErrorKind::BodyTooLarge => "request_too_large",
            ErrorKind::HeaderTooLarge => "request_header_too_large",
            ErrorKind::Internal => "internal_error",
            ErrorKind::UpstreamFailed => "upstream_error",
            ErrorKind::NoHealthyEndpoint => "no_healthy_endpoint",
            ErrorKind::StateUnavailable => "state_unavailable",
            ErrorKind::UpstreamTimeout => "upstream_timeout",
        }
    }

    fn error_type(self) -> &'static str {
        // OpenAI's own type for a used-up quota, which SDKs and clients look for.
        if self == ErrorKind::QuotaExceeded {
            "insufficient_quota"
        } else if self.status() < 500 {
            "invalid_request_error"
        } else {
            "api_error"
        }
    }

    fn from_code(code: &str) -> Option<ErrorKind> {
        ALL.iter().copied().find(|k| k.code() == code)
    }

    /// A Pingora error of this kind; the message is what the client reads.
    pub fn err(self, message: impl Into<String>) -> Box<Error> {
        let mut e = Error::explain(
            ErrorType::CustomCode(self.code(), self.status()),
            message.into(),
        );
        e.esource = if self.status() < 500 {
            ErrorSource::Downstream
        } else {
            ErrorSource::Internal
        };
        e
    }
}

const ALL: [ErrorKind; 16] = [
    ErrorKind::InvalidRequest,
    ErrorKind::InvalidApiKey,
    ErrorKind::ModelNotAllowed,
    ErrorKind::RateLimited,
    ErrorKind::QuotaExceeded,
    ErrorKind::StateUnavailable,
    ErrorKind::ModelNotFound,
    ErrorKind::NotFound,
    ErrorKind::MethodNotAllowed,
    ErrorKind::RequestTimeout,
    ErrorKind::BodyTooLarge,
    ErrorKind::HeaderTooLarge,
    ErrorKind::UpstreamFailed,
    ErrorKind::NoHealthyEndpoint,
    ErrorKind::UpstreamTimeout,
    ErrorKind::Internal,
];

/// What the client is told about a failed request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    pub kind: ErrorKind,
    pub message: String,
}

impl Rendered {
    /// Classify any Pingora error: ours by their code, transport errors by type and source.
    /// `None` when the client is gone and nothing can be sent.
    pub fn from_error(e: &Error) -> Option<Rendered> {
        let context = e.context.as_ref().map(|c| c.as_str().to_string());
        if let ErrorType::CustomCode(code, _) = e.etype() {
            if let Some(kind) = ErrorKind::from_code(code) {
                return Some(Rendered {
                    kind,
                    message: context.unwrap_or_else(|| kind.code().to_string()),
                });
            }
        }
        use ErrorType::*;
        let (kind, what) = match (e.etype(), e.esource()) {
            (ReadError | WriteError | ConnectionClosed, ErrorSource::Downstream) => return None,
            (ConnectTimedout, _) => (
                ErrorKind::UpstreamTimeout,
                "connecting to the upstream timed out",
            ),
            (ReadTimedout | WriteTimedout, ErrorSource::Upstream) => (
                ErrorKind::UpstreamTimeout,
                "the upstream did not answer in time",
            ),
            (ReadTimedout, ErrorSource::Downstream) => {
                (ErrorKind::InvalidRequest, "timed out reading the request")
            }
            (InvalidHTTPHeader | H1Error | H2Error | InvalidH2, ErrorSource::Downstream) => {
                (ErrorKind::InvalidRequest, "malformed HTTP request")
            }
            (_, ErrorSource::Upstream) => {
                (ErrorKind::UpstreamFailed, "the upstream request failed")
            }
            (
                ConnectRefused | ConnectNoRoute | ConnectError | TLSHandshakeFailure | InvalidCert,
                _,
            ) => (ErrorKind::UpstreamFailed, "the upstream request failed"),
            (HTTPStatus(404), _) => (ErrorKind::NotFound, "not found"),
            (HTTPStatus(c), _) if *c < 500 => (ErrorKind::InvalidRequest, "bad request"),
            _ => (ErrorKind::Internal, "internal gateway error"),
        };
        Some(Rendered {
            kind,
            message: format!("{what} ({})", e.etype().as_str()),
        })
    }

    /// The OpenAI error JSON body.
    pub fn body(&self) -> Bytes {
        let v = json!({
            "error": {
                "message": self.message,
                "type": self.kind.error_type(),
                "param": null,
                "code": self.kind.code(),
            }
        });
        Bytes::from(v.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn our_errors_round_trip_through_pingora_errors() {
        for kind in ALL {
            let r = Rendered::from_error(&kind.err("why")).unwrap();
            assert_eq!(r.kind, kind);
            assert_eq!(r.message, "why");
            let v: serde_json::Value = serde_json::from_slice(&r.body()).unwrap();
            let obj = v["error"].as_object().unwrap();
            for key in ["message", "type", "param", "code"] {
                assert!(obj.contains_key(key), "{key}");
            }
            let want_type = if kind == ErrorKind::QuotaExceeded {
                "insufficient_quota"
            } else if kind.status() < 500 {
                "invalid_request_error"
            } else {
                "api_error"
            };
            assert_eq!(obj["type"], want_type);
            assert_eq!(obj["code"], kind.code());
        }
    }

    #[test]
    fn transport_errors_map_to_statuses() {
        let up = |t| Error::new(t).into_up();
        let r = |e: Box<Error>| Rendered::from_error(&e).map(|r| r.kind.status());
        assert_eq!(r(up(ErrorType::ReadTimedout)), Some(504));
        assert_eq!(r(Error::new(ErrorType::ConnectTimedout)), Some(504));
        assert_eq!(r(up(ErrorType::ConnectRefused)), Some(502));
        assert_eq!(r(Error::new(ErrorType::ConnectRefused)), Some(502));
        assert_eq!(r(up(ErrorType::ConnectionClosed)), Some(502));
        assert_eq!(r(Error::new(ErrorType::ConnectionClosed).into_down()), None);
        assert_eq!(r(Error::new(ErrorType::InternalError)), Some(500));
    }
}
