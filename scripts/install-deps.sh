#!/usr/bin/env bash
# Installs what building ai-proxy needs beyond cargo: cmake and a C toolchain (Pingora's
# zlib-ng and zstd build C code), and what its tests start: redis-server. Debian/Ubuntu;
# elsewhere install them by hand.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v cargo >/dev/null 2>&1; then
  echo "cargo not found: install Rust (https://rustup.rs) first" >&2
  exit 1
fi
need=()
command -v cmake >/dev/null 2>&1 || need+=(cmake)
command -v cc >/dev/null 2>&1 || need+=(build-essential)
command -v curl >/dev/null 2>&1 || need+=(curl)
# The shared-limits tests start their own Redis (Debian's server) on a free loopback port.
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
if [ ${#need[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  echo "installing: ${need[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}" >/dev/null
fi
# The SDKs the integration tests drive, as users do: the `openai` and `anthropic` Python SDKs
# in a venv of the checkout (.venv, git-ignored).
if [ ! -x .venv/bin/python ] || ! .venv/bin/python -c "import openai, anthropic" 2>/dev/null; then
  if ! python3 -c "import venv, ensurepip" 2>/dev/null; then
    sudo=""
    [ "$(id -u)" -ne 0 ] && sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq python3-venv >/dev/null
  fi
  python3 -m venv .venv
  .venv/bin/pip install -q --disable-pip-version-check openai anthropic
fi
