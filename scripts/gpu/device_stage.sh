#!/usr/bin/env bash
# On the GPU machine, once per carried chunk folder: move its parts to /tmp/chunks (the machine keeps
# /tmp while warm, ~30 s between calls). Usage: bash scripts/gpu/device_stage.sh .faiss-gpu-N
set -euo pipefail
mkdir -p /tmp/chunks
cp "$1"/* /tmp/chunks/
ls -la /tmp/chunks
