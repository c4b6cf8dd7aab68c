//! Anthropic's Messages API (`POST /v1/messages`) over chat completions upstreams: the request
//! translated once when it arrives, the answer (whole or streamed) and the errors on the way
//! back. Pure functions over bytes; the proxy decides when to call them.

mod error;
mod json;
mod request;
mod response;
mod stream;

pub use error::{error_body, error_event, error_from_openai, error_type};
pub use request::{ChatRequest, Reply};
pub use response::message_from_chat;
pub use stream::StreamTranslator;
