//! Client APIs other than OpenAI's, translated to and from the OpenAI shapes the upstreams speak.

pub mod anthropic;
