#!/usr/bin/env bash
# On the lent GPU machine (runs as root, /tmp kept while the machine is warm).
#   bash scripts/gpu/device_payload.sh stage .gpu-payload-N   # once per carried chunk folder
#   bash scripts/gpu/device_payload.sh install && source /tmp/gpu/env.sh   # after the last chunk
# "install" unpacks scripts/gpu/pack_payload.sh's archive into /tmp/gpu, builds the cuBLAS-12 shim against
# the image's cuBLAS 13, links ../shared to the carried datasets, and exports PYTHONPATH, LD_LIBRARY_PATH
# and RAGICL_CUBLAS13 from /tmp/gpu/env.sh.
set -eo pipefail
mode=${1:?usage: device_payload.sh stage DIR | install}
if [ "$mode" = stage ]; then
  mkdir -p /tmp/payload-parts
  cp "$2"/* /tmp/payload-parts/
  ls -la /tmp/payload-parts
  return 0 2>/dev/null || exit 0
fi
repo=$PWD
if [ ! -f /tmp/gpu/env.sh ]; then
  (cd /tmp/payload-parts && [ "$(cat part.* | sha256sum | cut -d' ' -f1)" = "$(cat SHA256)" ]) \
    || { echo "payload checksum mismatch: a chunk is missing or damaged"; ls -la /tmp/payload-parts; exit 1; }
  rm -rf /tmp/gpu && mkdir -p /tmp/gpu
  cat /tmp/payload-parts/part.* | xz -d | tar -C /tmp/gpu -xf -
  # faiss's own preload looks for the CUDA-12 pip wheels (nvidia.cublas...); the loader path does it here
  rm -f /tmp/gpu/site/faiss/_gpu_build.py
  cu13=$(python3 - <<'PY'
import glob, os, sys
hits = [p for d in sys.path if os.path.isdir(d) for p in glob.glob(os.path.join(d, "nvidia", "**", "libcublas.so.13"), recursive=True)]
print(hits[0] if hits else "")
PY
)
  [ -n "$cu13" ] || { echo "no libcublas.so.13 in the image's nvidia wheels"; exit 1; }
  if command -v gcc >/dev/null; then
    bash "$repo/scripts/gpu/build_shim.sh" /tmp/gpu/cudalib
  else  # no compiler there: the copies pack_payload.sh built
    cp /tmp/payload-parts/libcublas.so.12 /tmp/payload-parts/libcublasLt.so.12 /tmp/gpu/cudalib/
  fi
  cat > /tmp/gpu/env.sh <<ENV
export PYTHONPATH=/tmp/gpu/site:$repo\${PYTHONPATH:+:\$PYTHONPATH}
export LD_LIBRARY_PATH=/tmp/gpu/cudalib:$(dirname "$cu13")\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}
export RAGICL_CUBLAS13=$cu13
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
ENV
fi
[ -e ../shared ] || ln -s /tmp/gpu/shared ../shared
. /tmp/gpu/env.sh
python3 -c "import faiss, numpy as np; print('faiss', faiss.__version__, 'GPUs:', faiss.get_num_gpus()); \
r = faiss.StandardGpuResources(); x = np.random.rand(1000, 64).astype('float32'); i = faiss.GpuIndexFlatIP(r, 64); \
i.add(x); c = faiss.IndexFlatIP(64); c.add(x); print('faiss-gpu flat == cpu:', bool((i.search(x[:50], 5)[1] == c.search(x[:50], 5)[1]).all()))" \
  || echo "faiss-gpu did not load: the torch path (TorchExactSearch) still runs"
