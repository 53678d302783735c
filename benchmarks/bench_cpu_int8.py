"""CPU scoring speed, honestly bounded (issue 36 §5): int8 kernels against float32 on one thread.

The same 8-shot SST-2 prompts that ``benchmarks/bench_engines.py agree`` packed (``runs/engines/sst2-prompts.json``:
the default index and ``ICLClassifier(k=8)``; the first ``--n``) are scored by each variant as ragicl scores
one-token labels: one forward pass per prompt (batch 1, no padding), the LM head at the last position only,
log-softmax, the label tokens' log-probs. Variants:

* ``torch-f32``: the de-quantized SmolLM2 in float32 (what ``TransformersLM`` runs; the reference);
* ``torch-int8``: ``torch.ao.quantization.quantize_dynamic`` with per-channel int8 weights on every
  ``Linear`` of the decoder layers, the LM head (tied to the embeddings) and the embeddings kept in float32;
* ``torch-int8-sq``: the same after SmoothQuant (alpha 0.8, activation maxima of the last 8 saved prompts,
  which are not among the ``--n`` scored);
* ``ort-f32``: ONNX Runtime on the model exported by ``torch.onnx.export`` (dynamo), last-position head;
* ``ort-int8``: that ONNX model through ``onnxruntime.quantization.quantize_dynamic`` (per-channel QInt8
  weights, ``MatMulInteger`` with activations quantized per call; the LM head's MatMul excluded);
* ``ort-nbits8``: ``MatMulNBitsQuantizer`` 8-bit block-wise weights (block 32) with ``accuracy_level=4``
  (int8 activations in the kernel), LM head excluded;
* ``ort-nbits4``: the same with 4-bit weights (the kernels ONNX Runtime optimises for CPUs);
* ``ov-f32``: OpenVINO on the same ONNX model (``openvino`` package), one inference thread;
* ``ov-int8``: OpenVINO with int8 per-channel weights (``nncf.compress_weights`` INT8_SYM, LM head kept) and
  the CPU plugin's dynamic quantization of activations (``DYNAMIC_QUANTIZATION_GROUP_SIZE=32``).

Every variant runs one thread (``OMP_NUM_THREADS=1``, ``torch.set_num_threads(1)``, ORT
``intra_op_num_threads=1``, OpenVINO ``INFERENCE_NUM_THREADS=1``). Timing is interleaved: each round scores
the prompts in blocks of ``--block``, every variant per block, the order rotating, so a load spike hits all
alike; per-variant seconds per round, min and median over ``--rounds``, and the median over blocks of each
block's speed-up (the variants of a block run back to back, so this ratio resists load drift). Tokens/s counts prompt tokens;
FLOPs per prompt are counted as executed (``benchmarks/_hardware.py``: body + attention + a one-position head);
the float32 ceiling is measured (a 2048² matmul, one thread), and so is the int8 GEMM rate
(``torch.ao`` dynamic int8 ``Linear``, 2048² by 2048, fbgemm/x86). Label TV: softmax over the labels per
prompt, ½·Σ|p − p_f32|, against ``torch-f32`` (and ``torch-f32`` against the ``TransformersLM`` scores of
``bench_engines.py`` when present).

ONNX Runtime and OpenVINO are not ragicl dependencies; install them apart, e.g.
``pip install --target runs/pydeps onnxruntime onnx onnxscript openvino`` and ``pip install --no-deps --target runs/pydeps nncf`` (``--pydeps`` adds the folder at
the END of ``sys.path``, after the project's environment). The export and quantized models are cached
under ``runs/engines/onnx/``.

    OMP_NUM_THREADS=1 python benchmarks/bench_cpu_int8.py --n 60 --rounds 2
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

if str(Path(__file__).resolve().parent) not in sys.path:  # _bench_common, _hardware beside this file
    sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench_common import ROOT, load_average, median, print_environment, print_table, save_json

RUNS = ROOT / "runs" / "engines"
ONNX_DIR = RUNS / "onnx"
CACHE = Path(os.environ.get("RAGICL_CACHE", Path.home() / ".cache" / "ragicl"))
MODEL_DIR = CACHE / "models" / "SmolLM2-135M-Instruct"
ALL = ("torch-f32", "torch-int8", "torch-int8-sq", "ort-f32", "ort-int8", "ort-nbits8", "ort-nbits4", "ov-f32", "ov-int8")


def load_hf():
    import torch
    from transformers import AutoModelForCausalLM

    if not (MODEL_DIR / "config.json").exists():  # ragicl converts the packaged GGUF on first use
        from ragicl import TransformersLM

        TransformersLM("SmolLM2-135M-Instruct", device="cpu").load()
    return AutoModelForCausalLM.from_pretrained(MODEL_DIR, dtype=torch.float32).eval()


class LastLogits:
    """``input_ids (1, T)`` -> the LM head at the last position, ``(1, V)``: what one-token label scoring needs."""

    def __new__(cls, model):
        import torch

        class _Last(torch.nn.Module):
            def __init__(self, m):
                super().__init__()
                self.m = m

            def forward(self, input_ids):
                hidden = self.m.model(input_ids=input_ids, use_cache=False).last_hidden_state
                return self.m.lm_head(hidden[:, -1, :])

        return _Last(model).eval()


def torch_runner(model):
    import torch

    last = LastLogits(model)

    def run(ids: list[int]) -> np.ndarray:
        with torch.inference_mode():
            return last(torch.tensor([ids])).float().numpy()[0]
    return run


def torch_int8(model):
    import torch
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    spec = {name: per_channel_dynamic_qconfig for name, mod in model.named_modules()
            if isinstance(mod, torch.nn.Linear) and name.startswith("model.layers.")}
    return quantize_dynamic(model, qconfig_spec=spec, dtype=torch.qint8, inplace=False)


def smooth(model, calibration: list[list[int]], alpha: float = 0.8):
    """SmoothQuant (Xiao et al. 2023) folded into a copy of ``model``: per input channel ``j`` of the decoder's
    Linears, ``s_j = max|X_j|^alpha / max|W_j|^(1-alpha)`` (activation maxima over ``calibration`` prompts)
    moves activation outliers into the weights: divided out of the RMSNorm weight before q/k/v and gate/up,
    out of up_proj's rows before down_proj; o_proj is left as is (grouped-query heads share V rows)."""
    import copy

    import torch

    model = copy.deepcopy(model)
    amax: dict[str, torch.Tensor] = {}
    hooks = []
    for name, mod in model.named_modules():
        if isinstance(mod, torch.nn.Linear) and name.startswith("model.layers."):
            def hook(mod, inp, name=name):
                a = inp[0].detach().abs().reshape(-1, inp[0].shape[-1]).amax(0)
                amax[name] = torch.maximum(amax[name], a) if name in amax else a
            hooks.append(mod.register_forward_pre_hook(hook))
    with torch.inference_mode():
        for ids in calibration:
            model(torch.tensor([ids]))
    for h in hooks:
        h.remove()

    def scales(a, weights):
        w = torch.stack([x.abs().amax(0) for x in weights]).amax(0)
        return (a.clamp(min=1e-5) ** alpha / w.clamp(min=1e-5) ** (1 - alpha)).clamp(min=1e-5)

    with torch.no_grad():
        for i, layer in enumerate(model.model.layers):
            attn, mlp = layer.self_attn, layer.mlp
            for norm, lins, first in ((layer.input_layernorm, (attn.q_proj, attn.k_proj, attn.v_proj), "self_attn.q_proj"),
                                      (layer.post_attention_layernorm, (mlp.gate_proj, mlp.up_proj), "mlp.gate_proj")):
                s = scales(amax[f"model.layers.{i}.{first}"], [x.weight for x in lins])
                norm.weight.div_(s)
                for x in lins:
                    x.weight.mul_(s)
            s = scales(amax[f"model.layers.{i}.mlp.down_proj"], [mlp.down_proj.weight])
            mlp.up_proj.weight.div_(s[:, None])
            mlp.down_proj.weight.mul_(s)
    return model


def outliers(model, prompts: list[list[int]]) -> list[dict]:
    """Per kind of decoder Linear: how much one token's largest input activation exceeds a typical token's
    (per-tensor max over per-token max, median over prompts and layers), and how often that token is the
    first: why one int8 scale per call, as torch's and ONNX Runtime's dynamic kernels use, is coarse here."""
    import torch

    stats: dict[str, list[tuple[float, bool]]] = {}
    hooks = []
    for name, mod in model.named_modules():
        if isinstance(mod, torch.nn.Linear) and name.startswith("model.layers."):
            kind = name.rsplit(".", 1)[-1]

            def hook(mod, inp, kind=kind):
                per_token = inp[0].detach().abs()[0].amax(1)
                stats.setdefault(kind, []).append((float(per_token.max() / per_token.median()),
                                                   int(per_token.argmax()) == 0))
            hooks.append(mod.register_forward_pre_hook(hook))
    with torch.inference_mode():
        for ids in prompts:
            model(torch.tensor([ids]))
    for h in hooks:
        h.remove()
    return [{"Linear": kind, "max/median token (median)": float(np.median([r for r, _ in v])),
             "max/median token (max)": float(max(r for r, _ in v)),
             "largest is the first token": float(np.mean([f for _, f in v]))} for kind, v in stats.items()]


def export_onnx(model) -> Path:
    import torch

    path = ONNX_DIR / "smollm2-last.onnx"
    if path.exists():
        return path
    ONNX_DIR.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name("tmp-" + path.name)
    t = time.perf_counter()
    torch.onnx.export(LastLogits(model), (torch.randint(0, 1000, (1, 40)),), str(tmp), input_names=["input_ids"],
                      output_names=["logits"], dynamo=True, external_data=False, opset_version=18,
                      dynamic_shapes={"input_ids": {1: torch.export.Dim("seq", min=2, max=2048)}})
    tmp.replace(path)
    print(f"# exported {path} in {time.perf_counter() - t:.0f} s")
    return path


def head_nodes(path: Path, vocab: int) -> list[str]:
    """Names of the MatMul/Gemm nodes whose weight has the vocabulary dimension (the LM head)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    shapes = {init.name: tuple(init.dims) for init in model.graph.initializer}
    consts = {n.output[0]: n.input[0] for n in model.graph.node if n.op_type == "Transpose" and n.input[0] in shapes}
    names = []
    for node in model.graph.node:
        if node.op_type in ("MatMul", "Gemm"):
            for inp in node.input:
                if vocab in shapes.get(inp, shapes.get(consts.get(inp, ""), ())):
                    names.append(node.name)
    return names


def quantize_ort(src: Path, vocab: int, kind: str) -> Path:
    dst = ONNX_DIR / f"smollm2-last-{kind}.onnx"
    if dst.exists():
        return dst
    exclude = head_nodes(src, vocab)
    print(f"# {kind}: LM head nodes kept in float32: {exclude}")
    tmp = dst.with_name("tmp-" + dst.name)
    t = time.perf_counter()
    if kind == "int8":
        from onnxruntime.quantization import QuantType, quantize_dynamic

        quantize_dynamic(str(src), str(tmp), per_channel=True, reduce_range=False, weight_type=QuantType.QInt8,
                         op_types_to_quantize=["MatMul"], nodes_to_exclude=exclude)
    else:
        import onnx
        from onnxruntime.quantization.matmul_nbits_quantizer import (
            MatMulNBitsQuantizer,
            RTNWeightOnlyQuantConfig,
        )

        config = RTNWeightOnlyQuantConfig()
        try:
            quant = MatMulNBitsQuantizer(onnx.load(str(src)), block_size=32, is_symmetric=True, accuracy_level=4,
                                         nodes_to_exclude=exclude, bits=int(kind[-1]))
        except TypeError:  # older signature: bits via the algorithm config
            quant = MatMulNBitsQuantizer(onnx.load(str(src)), block_size=32, is_symmetric=True,
                                         accuracy_level=4, nodes_to_exclude=exclude, algo_config=config)
        quant.process()
        quant.model.save_model_to_file(str(tmp), use_external_data_format=False)
    tmp.replace(dst)
    print(f"# quantized {dst} in {time.perf_counter() - t:.0f} s")
    return dst


def ort_runner(path: Path):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])

    def run(ids: list[int]) -> np.ndarray:
        return session.run(None, {"input_ids": np.asarray([ids], dtype=np.int64)})[0][0]
    return run


def ov_int8(src: Path, vocab: int) -> Path:
    """The ONNX model in OpenVINO's format with int8 per-channel weights (``nncf.compress_weights``, INT8_SYM)
    on every MatMul but the LM head's."""
    import nncf
    import openvino as ov

    dst = ONNX_DIR / "smollm2-last-ov-int8.xml"
    if dst.exists():
        return dst
    model = ov.Core().read_model(str(src))
    head = [op.get_friendly_name() for op in model.get_ops() if op.get_type_name() == "MatMul"
            and any(vocab in tuple(op.input(i).get_partial_shape().get_min_shape()) for i in range(2))]
    print(f"# ov-int8: LM head kept in float32: {head}")
    model = nncf.compress_weights(model, mode=nncf.CompressWeightsMode.INT8_SYM,
                                  ignored_scope=nncf.IgnoredScope(names=head) if head else None)
    ov.save_model(model, str(dst), compress_to_fp16=False)
    return dst


def ov_runner(path: Path, extra: dict | None = None):
    import openvino as ov

    core = ov.Core()
    compiled = core.compile_model(str(path), "CPU", {"INFERENCE_NUM_THREADS": 1, "NUM_STREAMS": 1,
                                                     "INFERENCE_PRECISION_HINT": "f32", **(extra or {})})
    request = compiled.create_infer_request()

    def run(ids: list[int]) -> np.ndarray:
        return np.asarray(request.infer({0: np.asarray([ids], dtype=np.int64)})[0])[0]
    return run


def make(name: str, model, vocab: int, calibration: list[list[int]]):
    if name == "torch-f32":
        return torch_runner(model)
    if name == "torch-int8":
        return torch_runner(torch_int8(model))
    if name == "torch-int8-sq":
        return torch_runner(torch_int8(smooth(model, calibration)))
    src = export_onnx(model)
    if name == "ort-f32":
        return ort_runner(src)
    if name == "ort-int8":
        return ort_runner(quantize_ort(src, vocab, "int8"))
    if name in ("ort-nbits8", "ort-nbits4"):
        return ort_runner(quantize_ort(src, vocab, name[4:]))
    if name == "ov-f32":
        return ov_runner(src)
    if name == "ov-int8":
        return ov_runner(ov_int8(src, vocab), {"DYNAMIC_QUANTIZATION_GROUP_SIZE": 32})
    raise SystemExit(f"unknown variant {name!r}; expected some of {ALL}")


def int8_gemm_rate(size: int = 2048, repeats: int = 3) -> float:
    """Best int8 GEMM rate here: a torch dynamic int8 Linear (per-channel weights), ``size``² by ``size``."""
    import torch
    from torch.ao.nn.quantized.dynamic import Linear as QLinear

    float_linear = torch.nn.Linear(size, size, bias=False)
    float_linear.qconfig = torch.ao.quantization.per_channel_dynamic_qconfig
    q = QLinear.from_float(float_linear)
    x = torch.randn(size, size)
    best = float("inf")
    for _ in range(repeats + 1):
        t = time.perf_counter()
        q(x)
        best = min(best, time.perf_counter() - t)
    return 2.0 * size**3 / best


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=60, help="prompts (the first of runs/engines/sst2-prompts.json)")
    p.add_argument("--variants", default=",".join(ALL))
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--block", type=int, default=10)
    p.add_argument("--pydeps", default=str(ROOT / "runs" / "pydeps"), help="extra package folder (appended)")
    p.add_argument("--json")
    args = p.parse_args(argv)
    if args.pydeps and Path(args.pydeps).is_dir():
        sys.path.append(args.pydeps)
    import torch

    torch.set_num_threads(1)
    print_environment("cpu")
    from _hardware import lm_forward_flops, measure_matmul_flops

    saved_path = RUNS / "sst2-prompts.json"
    if not saved_path.exists():
        raise SystemExit(f"{saved_path} not found: run benchmarks/bench_engines.py agree --dataset sst2 first")
    saved = json.loads(saved_path.read_text())
    prompts = saved["prompts"][: args.n]
    if any(len(ids) != 1 for ids in saved["label_ids"]):
        raise SystemExit(f"expected one-token labels, got {saved['label_ids']}")
    labels = [ids[0] for ids in saved["label_ids"]]
    gold = np.asarray(saved["gold"][: args.n])
    model = load_hf()
    cfg = model.config
    n_params = sum(t.numel() for t in model.parameters())
    n_emb = model.get_input_embeddings().weight.numel()
    lengths = [len(ids) for ids in prompts]
    flops = lm_forward_flops(n_params, n_emb, cfg.num_hidden_layers, cfg.hidden_size, lengths, len(prompts))
    ceiling = measure_matmul_flops(2048)
    int8_rate = int8_gemm_rate()
    if args.n > len(saved["prompts"]) - 8:
        raise SystemExit(f"--n {args.n}: at most {len(saved['prompts']) - 8} (the last 8 prompts calibrate)")
    calibration = saved["prompts"][-8:]
    print_table(outliers(model, prompts[:8]), "Input activations of the decoder's Linears (8 prompts, 30 layers)")
    print(f"# {len(prompts)} prompts, {sum(lengths)} tokens ({np.mean(lengths):.0f} mean), "
          f"{flops / sum(lengths) / 1e9:.3f} GFLOP/token as executed; float32 ceiling {ceiling.flops / 1e9:.1f} "
          f"GFLOP/s ({ceiling.source}); int8 GEMM {int8_rate / 1e9:.1f} GOP/s (torch dynamic Linear)")

    names = args.variants.split(",")
    runners, logp = {}, {}
    for name in names:
        t = time.perf_counter()
        runners[name] = make(name, model, cfg.vocab_size, calibration)
        print(f"# {name}: ready in {time.perf_counter() - t:.0f} s, load {load_average()}", flush=True)
        logp[name] = np.zeros((len(prompts), len(labels)))
    seconds = {name: [0.0] * args.rounds for name in names}
    blocks: dict[str, list[float]] = {name: [] for name in names}
    for r in range(args.rounds):
        if r:
            again = measure_matmul_flops(2048)
            ceiling = again if again.flops > ceiling.flops else ceiling
        for b, start in enumerate(range(0, len(prompts), args.block)):
            order = names[b % len(names):] + names[: b % len(names)]
            for name in order:
                t = time.perf_counter()
                for i in range(start, min(start + args.block, len(prompts))):
                    row = np.asarray(runners[name](prompts[i]), dtype=np.float64)
                    row = row - (row.max() + np.log(np.exp(row - row.max()).sum()))
                    logp[name][i] = row[labels]
                seconds[name][r] += time.perf_counter() - t
                blocks[name].append(time.perf_counter() - t)
        print(f"# round {r + 1}: " + ", ".join(f"{n} {seconds[n][r]:.1f} s" for n in names)
              + f"; load {load_average()}", flush=True)

    def probs(lp):
        z = np.exp(lp - lp.max(1, keepdims=True))
        return z / z.sum(1, keepdims=True)

    ref = probs(logp[names[0]])
    hf_path = RUNS / "sst2-hf.npz"
    if hf_path.exists():
        with np.load(hf_path) as f:
            hf = f["logp"][: len(prompts)]
        if not np.isnan(hf).any():
            tv = 0.5 * np.abs(probs(hf) - ref).sum(1)
            print(f"# {names[0]} vs TransformersLM.score_continuations (bench_engines): mean TV {tv.mean():.2e}, "
                  f"max {tv.max():.2e}")
    tokens = sum(lengths)
    base = min(seconds[names[0]])
    rows = []
    for name in names:
        tv = 0.5 * np.abs(probs(logp[name]) - ref).sum(1)
        best = min(seconds[name])
        ratio = median([b0 / b for b0, b in zip(blocks[names[0]], blocks[name])])
        rows.append({"variant": name, "min s": best, "median s": median(seconds[name]),
                     "tokens/s (best)": tokens / best, "speed-up vs " + names[0]: base / best,
                     "speed-up (median of blocks)": ratio,
                     "GFLOP/s": flops / best / 1e9, "share of f32 ceiling": flops / best / ceiling.flops,
                     "mean TV": float(tv.mean()), "max TV": float(tv.max()),
                     "argmax = f32": f"{int((probs(logp[name]).argmax(1) == ref.argmax(1)).sum())}/{len(tv)}",
                     "accuracy": float((logp[name].argmax(1) == gold).mean())})
    print_table(rows)
    print(f"# float32 ceiling (best measured during the run) {ceiling.flops / 1e9:.1f} GFLOP/s; load {load_average()}")
    save_json(args.json, {"rows": rows, "seconds": seconds, "blocks": blocks, "tokens": tokens, "flops": flops,
                          "ceiling_flops": ceiling.flops, "int8_gemm_ops": int8_rate, "load": load_average()})


if __name__ == "__main__":
    main()
