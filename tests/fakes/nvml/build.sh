#!/usr/bin/env bash
# Build the fake NVML library: build.sh OUTDIR -> OUTDIR/libnvidia-ml.so.1
# Point LD_LIBRARY_PATH at OUTDIR and FAKE_NVML_TOPOLOGY at a topology JSON
# file to make pynvml (and tools built on it) see the simulated GPUs.
set -euo pipefail

if [[ $# -ne 1 ]]; then
    echo "usage: $0 OUTDIR" >&2
    exit 2
fi

src_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
out_dir="$1"
mkdir -p "$out_dir"

# Build into a temporary name and rename, so processes that are loading the
# library meanwhile never see a half-written file.
tmp="$(mktemp "$out_dir/.libnvidia-ml.so.1.XXXXXX")"
trap 'rm -f "$tmp"' EXIT

"${CC:-cc}" -std=c11 -shared -fPIC -O2 -Wall -Wextra -Werror \
    -fvisibility=hidden \
    -Wl,-soname,libnvidia-ml.so.1 -Wl,--no-undefined \
    -o "$tmp" \
    "$src_dir/fake_nvml.c" "$src_dir/device.c" "$src_dir/topology.c" "$src_dir/events.c" \
    -lcjson -lpthread -lm

chmod 0755 "$tmp"
mv -f "$tmp" "$out_dir/libnvidia-ml.so.1"
trap - EXIT
