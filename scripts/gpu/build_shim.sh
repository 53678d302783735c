#!/usr/bin/env bash
# Build the cuBLAS-12 stand-ins for faiss-gpu into DIR: libcublas.so.12 (forwards to cuBLAS 13, see
# cublas12_shim.c) and an empty libcublasLt.so.12 (faiss lists it as needed but calls nothing in it).
set -euo pipefail
dir=${1:?usage: build_shim.sh DIR}
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$dir"
gcc -shared -fPIC -O2 -o "$dir/libcublas.so.12" -Wl,-soname,libcublas.so.12 \
    -Wl,--version-script="$here/cublas12.map" "$here/cublas12_shim.c" -ldl
tmp=$(mktemp -d)
echo 'void ragicl_cublaslt12_placeholder(void) {}' > "$tmp/lt.c"
gcc -shared -fPIC -o "$dir/libcublasLt.so.12" -Wl,-soname,libcublasLt.so.12 \
    -Wl,--version-script="$here/cublasLt12.map" "$tmp/lt.c"
rm -rf "$tmp"
