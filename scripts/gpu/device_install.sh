#!/usr/bin/env bash
# On the GPU machine, after every chunk is staged: join, check, install into /tmp/site, and prove that
# faiss sees the GPU. Then: export PYTHONPATH=/tmp/site:$PWD and run the benchmarks with --device cuda.
set -euo pipefail
cd /tmp/chunks
mkdir -p /tmp/wheels && cat part.* | tar -C /tmp/wheels -xf -
(cd /tmp/wheels && sha256sum -c /tmp/chunks/SHA256SUMS)
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site /tmp/wheels/*.whl
PYTHONPATH=/tmp/site python3 -c "import faiss; print('faiss', faiss.__version__, 'GPUs:', faiss.get_num_gpus())"
