#!/usr/bin/env bash
# Issue 13 §4 on a lent GPU: converged fine-tuned references and the full comparison per dataset, written
# as each dataset finishes (a time limit loses only the dataset in progress).
#   bash scripts/gpu/results13.sh OUT_DIR [datasets...]     # default: trec sst2 cr rte agnews subj banking77
# For each dataset: `ragicl finetune` to convergence (early stopping on a dev split of the training data),
# `ragicl index build`, then experiments/run_best.py (zero-shot, random-8, retrieved-8, kNN votes 8/32,
# ragicl best, fine-tuned; 500 test queries or the whole test set) with the reference. Needs ../shared
# (device_payload.sh links the carried datasets) and the default models (carried in the payload).
set -uo pipefail
out=${1:?usage: results13.sh OUT_DIR [datasets...]}; shift
sets=${*:-trec sst2 cr rte agnews subj banking77}
mkdir -p "$out" /tmp/r13/refs /tmp/r13/indexes
rag() { python3 -c 'import sys; from ragicl.cli import main; sys.exit(main(sys.argv[1:]))' "$@"; }
for d in $sets; do
  t0=$SECONDS
  if [ ! -e "/tmp/r13/refs/$d/done" ]; then
    rag finetune --train "../shared/datasets/$d/train.jsonl" --out "/tmp/r13/refs/$d" --batch-size 32 \
      > "$out/finetune_$d.log" 2>&1 && touch "/tmp/r13/refs/$d/done"
    cp "/tmp/r13/refs/$d/ragicl_finetune.json" "$out/finetune_$d.json" 2>/dev/null
  fi
  refs=/tmp/r13/refs; [ -e "/tmp/r13/refs/$d/done" ] || refs=/tmp/r13/no-refs  # a failed reference: no row
  python3 experiments/run_best.py --datasets "$d" --n 500 --k 8 --tune-budget none --tune-max-seconds 120 --dev-size 300 \
    --index-root /tmp/r13/indexes --finetuned-root "$refs" --out "$out" > "$out/eval_$d.log" 2>&1
  echo "$d: $((SECONDS - t0)) s, rc $?" | tee -a "$out/summary.log"
done
