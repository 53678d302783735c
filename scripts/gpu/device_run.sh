#!/usr/bin/env bash
# On the lent GPU machine: run named steps, each under its own time limit, logging to $OUT/run.log and
# writing JSON next to it. Steps: env tests search search-torch fused scoring embed e2e retrieval results13.
#   bash scripts/gpu/device_run.sh env search-torch                  # needs nothing carried
#   bash scripts/gpu/device_payload.sh install && bash scripts/gpu/device_run.sh tests scoring e2e
set -o pipefail
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
[ -f /tmp/gpu/env.sh ] && . /tmp/gpu/env.sh
export PYTHONPATH=${PYTHONPATH:-$PWD} HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1
log="$OUT/run.log"
step() {  # step NAME SECONDS CMD...
  local name=$1 limit=$2; shift 2
  echo "=== $name ($(date +%T), limit ${limit}s): $*" | tee -a "$log"
  local t0=$SECONDS
  timeout "$limit" "$@" 2>&1 | tee -a "$log"
  echo "=== $name exit ${PIPESTATUS[0]} after $((SECONDS - t0)) s" | tee -a "$log"
}
for s in "$@"; do
  case $s in
    env) step env 60 bash -c 'nvidia-smi; python3 -c "import torch, transformers, sentence_transformers as st; print(torch.__version__, torch.version.cuda, transformers.__version__, st.__version__, torch.cuda.get_device_name(0))"; nproc; free -g' ;;
    tests) step tests 240 python3 -m pytest tests/test_gpu.py -q -rs -p no:cacheprovider ;;
    search-torch) step search-torch 300 python3 benchmarks/bench_gpu_search.py --no-faiss --n 1000000 10000000 --json "$OUT/gpu_search_torch.json" ;;
    search) step search 300 python3 benchmarks/bench_gpu_search.py --n 1000000 10000000 --chunks 262144 --json "$OUT/gpu_search.json" ;;
    scoring) step scoring 180 python3 benchmarks/bench_scoring.py --device cuda --prompts 512 --budget 1024 --before-batch 32 --json "$OUT/scoring.json" ;;
    embed) step embed 240 python3 benchmarks/bench_embed.py --device cuda --n 50000 --batch-sizes 64 256 1024 --profile --json "$OUT/embed.json" ;;
    e2e) step e2e 180 python3 benchmarks/bench_end_to_end.py --device cuda --queries 1821 --json "$OUT/e2e.json" ;;
    fused) step fused 420 bash -c 'python3 -m pytest tests/test_fused_topk.py -q -rs -p no:cacheprovider; python3 benchmarks/bench_gpu_search.py --no-faiss --n 1000000 10000000 --chunks 262144 --json "$OUT/gpu_search_fused.json"' ;;
    retrieval) step retrieval 240 python3 benchmarks/bench_retrieval.py --device cuda --n 1000000 --queries 1000 --no-ann --overhead-n 1000 --json "$OUT/retrieval.json" ;;
    results13) step results13 540 bash scripts/gpu/results13.sh "$OUT/results13" ;;
    *) echo "unknown step $s" | tee -a "$log" ;;
  esac
done
