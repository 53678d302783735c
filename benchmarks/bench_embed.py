#!/usr/bin/env python
"""Where embedding time goes (issue 15 §2): tokenization, the forward pass, the host copies, batch size.

Times, on the same texts (SST-2 sentences repeated to ``--n``), in one process:

1. **tokenize**: the embedder's tokenizer alone, batch by batch (host work);
2. **forward**: the model on pre-tokenized, pre-moved batches (device work, synchronised once at the end);
3. **encode** at each ``--batch-sizes``: ``SentenceTransformerEmbedder.encode`` end to end (what
   ``ExampleIndex.build`` calls), i.e. tokenization + forward + pooling + the copy back per batch;
4. with ``--profile``: ``torch.profiler`` over one encode, the top operators by self time.

The sum of 1 and 2 against 3 says whether the host (tokenization, per-batch copies) or the device bounds the
rate. Random-weight stand-ins have the same speed as the real model (same config and tokenizer).

    python benchmarks/bench_embed.py --n 4000 --batch-sizes 64 256
    python benchmarks/bench_embed.py --device cuda --n 50000 --batch-sizes 64 256 1024 --profile
"""

from __future__ import annotations

import argparse
import time

import _bench_common as bc


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=4000, help="texts to embed (SST-2 sentences, repeated)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--profile", action="store_true", help="torch.profiler over one encode")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    bc.setup_logging()
    info = bc.print_environment(args.device)

    import torch

    from ragicl.data import read_dataset
    from ragicl.index.embed import SentenceTransformerEmbedder

    cuda = args.device.startswith("cuda")
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    base = [ex.text() for ex in read_dataset(bc.dataset_file("sst2", "train"))]
    texts = (base * (args.n // len(base) + 1))[:args.n]
    emb = SentenceTransformerEmbedder(device=args.device, show_progress=False)
    model = emb.load()
    param = next(model.parameters())
    print(f"# embedder on {param.device}, {param.dtype}; {len(texts)} texts, mean "
          f"{sum(map(len, texts)) / len(texts):.0f} characters")
    emb.encode(texts[:256], batch_size=64)  # warm-up (kernels, allocator)
    sync()
    rows = []
    bs = args.batch_sizes[0]
    t = time.perf_counter()
    feats = [model.preprocess(texts[i:i + bs]) if hasattr(model, "preprocess") else model.tokenize(texts[i:i + bs]) for i in range(0, len(texts), bs)]
    tok_s = time.perf_counter() - t
    rows.append({"stage": f"tokenize (batch {bs})", "seconds": tok_s, "texts/s": len(texts) / tok_s})
    moved = [{k: (v.to(param.device) if hasattr(v, "to") else v) for k, v in f.items()} for f in feats]
    sync()
    t = time.perf_counter()
    with torch.inference_mode():
        for f in moved:
            model(f)
    sync()
    fwd_s = time.perf_counter() - t
    rows.append({"stage": f"forward only (batch {bs}, inputs on device)", "seconds": fwd_s,
                 "texts/s": len(texts) / fwd_s})
    for size in args.batch_sizes:
        t = time.perf_counter()
        emb.encode(texts, batch_size=size)
        sync()
        secs = time.perf_counter() - t
        rows.append({"stage": f"encode end to end (batch {size})", "seconds": secs, "texts/s": len(texts) / secs,
                     "host share %": 100 * tok_s / secs if size == bs else None})
    bc.print_table(rows, f"Embedding {len(texts)} texts, all-MiniLM-L6-v2, {args.device}")
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
        with profile(activities=acts) as prof:
            emb.encode(texts[:4096], batch_size=bs)
            sync()
        key = "self_cuda_time_total" if cuda else "self_cpu_time_total"
        print(prof.key_averages().table(sort_by=key, row_limit=15))
    print(f"\n# load at end: {bc.load_average()}")
    bc.save_json(args.json, {"env": info, "args": vars(args), "rows": rows})


if __name__ == "__main__":
    main()
