#!/usr/bin/env bash
# Here (a machine with PyPI): download faiss-gpu 1.15.1 and its CUDA-12 runtime wheels for the lent GPU
# machine (x86-64, Python 3.12), then split them into chunks of < 60 MB in git-ignored folders
# .faiss-gpu-0, .faiss-gpu-1, ... — each small enough to travel in one device call (64 MiB limit).
# Then, in back-to-back device calls, carry one folder per call and run scripts/gpu/device_stage.sh;
# the last call runs scripts/gpu/device_install.sh (see docs/BENCHMARKS.md, "On a GPU").
set -euo pipefail
cd "$(dirname "$0")/../.."
PYVER=${PYVER:-3.12}
rm -rf .faiss-gpu-dl .faiss-gpu-parts .faiss-gpu-[0-9]*
mkdir -p .faiss-gpu-dl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$PYVER" --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 -d .faiss-gpu-dl \
  faiss-gpu==1.15.1 'nvidia-cuda-runtime-cu12>=12.6,<13' 'nvidia-cublas-cu12>=12.6,<13' 'nvidia-curand-cu12>=10.3.7,<11' 2>&1 \
  | grep -v "is ignored: it is neither a file nor a directory" || true
ls .faiss-gpu-dl/*.whl >/dev/null
# cuBLAS-cu12 alone is ~580 MB, so expect ~14 chunks: ~14 back-to-back device calls.
mkdir -p .faiss-gpu-parts
tar -C .faiss-gpu-dl -cf - . | split -b 60M -d -a 2 - .faiss-gpu-parts/part.
i=0
for part in .faiss-gpu-parts/part.*; do
  mkdir -p ".faiss-gpu-$i"; mv "$part" ".faiss-gpu-$i/"; i=$((i + 1))
done
rmdir .faiss-gpu-parts
(cd .faiss-gpu-dl && sha256sum *.whl) > .faiss-gpu-0/SHA256SUMS
echo "wheels: $(ls .faiss-gpu-dl | tr '\n' ' ')"
echo "chunks: $(ls -d .faiss-gpu-[0-9]* | tr '\n' ' ') — carry one per device call"
