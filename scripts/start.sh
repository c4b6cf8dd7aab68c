#!/usr/bin/env bash
# Build ai-proxy and start it.
# - With upstreams configured (endpoints in conf/ai-proxy.yaml, or ENDPOINTS/TARGET_OPENAI_URL
#   in the environment): runs the gateway on them.
# - Otherwise: the demo. Two bundled mock upstreams (OpenAI-compatible on 127.0.0.1:9101, OCF
#   on 127.0.0.1:9102) and the gateway in front of them on 127.0.0.1:8000 (conf/demo.yaml).
# Ctrl-C stops everything it started.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
cargo build --release --bins

if grep -Eq '^[[:space:]]*-[[:space:]]*url:' conf/ai-proxy.yaml \
   || [ -n "${ENDPOINTS:-}" ] || [ -n "${TARGET_OPENAI_URL:-}" ]; then
  exec target/release/ai-proxy --config conf/ai-proxy.yaml
fi

echo "conf/ai-proxy.yaml lists no endpoints: starting the demo with bundled mock upstreams"
target/release/ai-proxy-mock --listen 127.0.0.1:9101 --kind openai --name mock-openai \
  --models mock-gpt,mock-embed --sse-interval-ms 150 &
openai_pid=$!
target/release/ai-proxy-mock --listen 127.0.0.1:9102 --kind ocf --name mock-ocf \
  --models mock-ocf-llm --sse-interval-ms 150 &
ocf_pid=$!
trap 'kill "$openai_pid" "$ocf_pid" 2>/dev/null || true' EXIT
cat <<'MSG'

Try it:
  curl localhost:8000/v1/models
  curl -N localhost:8000/v1/chat/completions -H 'Content-Type: application/json' \
    -d '{"model":"mock-gpt","stream":true,"messages":[{"role":"user","content":"hi"}]}'

MSG
target/release/ai-proxy --config conf/demo.yaml
