//! `ai_proxy::usage::strip::StripUsageChunk` on arbitrary upstream streams split into arbitrary
//! reads (what an upstream, or the network, can deliver).
//!
//! Beyond "no panic": what the client receives is the stream with at most one span cut out,
//! whatever the reads; the span is whole SSE events holding a `"usage"` key; and the result
//! does not depend on how the stream was split.
#![no_main]

use ai_proxy::usage::strip::StripUsageChunk;
use bytes::Bytes;
use libfuzzer_sys::fuzz_target;

fn run(stream: &[u8], cuts: &[usize]) -> Vec<u8> {
    let mut strip = StripUsageChunk::default();
    let mut out = Vec::new();
    let mut from = 0;
    let ends = cuts.iter().copied().chain(std::iter::once(stream.len()));
    let ends: Vec<usize> = ends.collect();
    for (k, &to) in ends.iter().enumerate() {
        let mut body = Some(Bytes::copy_from_slice(&stream[from..to]));
        strip.filter(&mut body, k + 1 == ends.len());
        out.extend_from_slice(&body.unwrap_or_default());
        from = to;
    }
    out
}

fuzz_target!(|data: &[u8]| {
    // First byte: how many reads; the rest is the stream.
    let Some((&n, stream)) = data.split_first() else {
        return;
    };
    let reads = usize::from(n % 8) + 1;
    let mut cuts: Vec<usize> = (1..reads).map(|k| stream.len() * k / reads).collect();
    cuts.dedup();
    let out = run(stream, &cuts);
    assert_eq!(out, run(stream, &[]), "depends on the reads");
    assert!(out.len() <= stream.len());
    let prefix = stream.iter().zip(&out).take_while(|(a, b)| a == b).count();
    let suffix = out.len() - prefix;
    assert_eq!(
        &out[prefix..],
        &stream[stream.len() - suffix..],
        "more than one span removed"
    );
    let removed = &stream[prefix..stream.len() - suffix];
    if !removed.is_empty() {
        let holds_usage = removed.windows(7).any(|w| w == b"\"usage\"");
        assert!(holds_usage, "removed a span without usage: {removed:?}");
    }
});
