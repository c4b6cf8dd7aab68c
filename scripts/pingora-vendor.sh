#!/usr/bin/env bash
# The Pingora crates ai-proxy carries patches on, rebuilt from their crates.io release and
# the patch series in patches/<crate>/ (applied in file-name order):
#
#   scripts/pingora-vendor.sh                rebuild vendor/<crate> from release + series
#   scripts/pingora-vendor.sh --check        fail if vendor/<crate> is not exactly that
#   scripts/pingora-vendor.sh --test         run the patches' own tests in the vendored crates
#   scripts/pingora-vendor.sh --diff CRATE   print what vendor/CRATE changes on top of the
#                                            series: the body of the next patch
#
# vendor/<crate> is what Cargo builds ([patch.crates-io] in Cargo.toml); CI runs --check so
# the vendored tree never drifts from the series (no silent edits). README, "Patches on
# Pingora", says how to add a patch and how to move to a new Pingora release.
set -euo pipefail
cd "$(dirname "$0")/.."

VERSION=0.9.1
# The sha256 of each crate's .crate file as published (crates.io's index, the `checksum` of
# an unpatched Cargo.lock). A new release means new sums here.
declare -A SHA256=(
    [pingora-core]=a535f47f65fdcb003f9e1df04cd18e614c128dfe9388acce3f211ae38ac14d68
)
# The patches' tests (libtest name filters: 0001, 0003, 0004, 0006, then 0002, 0005 and 0007
# with their modules' tests), and the features they need.
declare -A TESTS=(
    [pingora-core]="
        connectors::tests::test_unwatched_
        connectors::tests::test_per_thread_pool
        protocols::l4::stream::tests::test_register_with_current_runtime
        connectors::tests::test_connect_future_is_boxed
        listeners::test::test_handshake_future_is_small
        protocols::http::v1::client::tests_stream
        protocols::http::v1::body::tests
        protocols::http::v1::server::tests"
)
declare -A FEATURES=(
    [pingora-core]=rustls
)

cache=target/pingora-crates
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# The release's .crate: Cargo's own download if it has one, else crates.io; checked either way.
fetch() {
    local crate=$1 file="$cache/$1-$VERSION.crate"
    mkdir -p "$cache"
    if [ ! -f "$file" ]; then
        local local_copy
        local_copy=$(ls "${CARGO_HOME:-$HOME/.cargo}"/registry/cache/*/"$crate-$VERSION.crate" 2>/dev/null | head -1 || true)
        if [ -n "$local_copy" ]; then
            cp "$local_copy" "$file.part"
        else
            curl -sSfL --retry 3 -o "$file.part" \
                "https://static.crates.io/crates/$crate/$crate-$VERSION.crate"
        fi
        mv "$file.part" "$file"
    fi
    if ! echo "${SHA256[$crate]}  $file" | sha256sum --check --quiet; then
        rm -f "$file"
        echo "$crate-$VERSION.crate: checksum mismatch" >&2
        exit 1
    fi
    echo "$file"
}

# Release + series of one crate, in $work/<dir>; prints the tree's path.
build_tree() {
    local crate=$1 dir=$2
    mkdir -p "$work/$dir"
    tar -xzf "$(fetch "$crate")" -C "$work/$dir"
    local tree="$work/$dir/$crate-$VERSION"
    for p in patches/"$crate"/*.patch; do
        [ -e "$p" ] || continue
        if ! patch -d "$tree" -p1 --forward --no-backup-if-mismatch --quiet <"$p"; then
            echo "$p does not apply to $crate $VERSION" >&2
            exit 1
        fi
    done
    echo "$tree"
}

case "${1:-}" in
"")
    for crate in "${!SHA256[@]}"; do
        tree=$(build_tree "$crate" "$crate")
        rm -rf "vendor/$crate"
        mkdir -p vendor
        mv "$tree" "vendor/$crate"
        echo "vendor/$crate: $crate $VERSION + $(ls patches/"$crate"/*.patch 2>/dev/null | wc -l) patches"
    done
    ;;
--check)
    status=0
    for crate in "${!SHA256[@]}"; do
        tree=$(build_tree "$crate" "$crate")
        if ! diff -r "$tree" "vendor/$crate" >"$work/$crate.diff"; then
            echo "vendor/$crate differs from $crate $VERSION + patches/$crate (run $0):" >&2
            head -50 "$work/$crate.diff" >&2
            status=1
        fi
    done
    [ $status -eq 0 ] && echo "vendored Pingora crates match their releases and patch series"
    exit $status
    ;;
--diff)
    crate=${2:?"--diff needs a crate: ${!SHA256[*]}"}
    [ -n "${SHA256[$crate]:-}" ] || { echo "not a vendored crate: $crate" >&2; exit 2; }
    tree=$(build_tree "$crate" "$crate")
    mv "$tree" "$work/a"
    cp -r "vendor/$crate" "$work/b"
    # Paths a/src/... and b/src/..., without timestamps.
    (cd "$work" && diff -ruN a b || true) | sed -E 's/^(\+\+\+|---) ([^\t]+)\t.*/\1 \2/'
    ;;
--test)
    # The crate with its own dev-dependencies, so a copy outside this workspace (whose
    # root package would otherwise claim it); one target dir shared between runs.
    for crate in "${!TESTS[@]}"; do
        cp -r "vendor/$crate" "$work/$crate"
        # Its published lock file can pin versions since yanked: resolve afresh.
        rm -f "$work/$crate/Cargo.lock"
        # shellcheck disable=SC2086 # the filters are words
        cargo test --manifest-path "$work/$crate/Cargo.toml" --target-dir "$PWD/target/vendored" \
            --features "${FEATURES[$crate]}" --lib -- ${TESTS[$crate]}
    done
    ;;
*)
    echo "usage: $0 [--check | --test | --diff CRATE]" >&2
    exit 2
    ;;
esac
