#!/usr/bin/env bash
# Generates the benchmark workspace for runner-vs-nextest.sh: one package,
# 20 integration-test binaries (tests/t00.rs .. tests/t19.rs), 100 trivial
# tests each = 2,000 tests. The library target has test = false and
# doctest = false so the only test binaries are those 20.
#
# Usage: gen-workspace.sh DIR [BINARIES] [TESTS_PER_BINARY]
# Idempotent: a stamp file records the shape, so an existing workspace of
# the same shape is reused (and its build with it).
set -euo pipefail

dir=${1:?usage: gen-workspace.sh DIR [BINARIES] [TESTS_PER_BINARY]}
bins=${2:-20}
per=${3:-100}
stamp="v1 bins=$bins per=$per"

if [[ -f $dir/.bench-stamp && $(<"$dir/.bench-stamp") == "$stamp" ]]; then
    exit 0
fi

rm -rf "$dir/src" "$dir/tests"
mkdir -p "$dir/src" "$dir/tests"
# [workspace] makes it its own root: without it cargo would walk up and find
# /work/main's workspace, which does not list this directory.
cat >"$dir/Cargo.toml" <<TOML
[package]
name = "ephem-bench-ws"
version = "0.1.0"
edition = "2021"
publish = false

[lib]
test = false
doctest = false

[workspace]
TOML
echo '//! Empty: only the integration tests matter.' >"$dir/src/lib.rs"

for ((b = 0; b < bins; b++)); do
    f=$(printf '%s/tests/t%02d.rs' "$dir" "$b")
    {
        for ((t = 0; t < per; t++)); do
            printf '#[test]\nfn test_%03d() {\n    assert_eq!(1 + 1, 2);\n}\n\n' "$t"
        done
    } >"$f"
done
echo "$stamp" >"$dir/.bench-stamp"
