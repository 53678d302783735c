"""Runs fused top-k cases under Triton's interpreter, in its own process (see tests/test_fused_topk.py).

``TRITON_INTERPRET=1`` must be in the environment before triton is first imported (Triton decorates its own
library at import), so the kernel runs here, not in the pytest process. Usage:
``python _fused_topk_worker.py cases.json inputs.npz outputs.npz``.
"""

from __future__ import annotations

import json
import os
import sys


def main(cases_path: str, inputs_path: str, outputs_path: str) -> None:
    # imported here, after __main__ set TRITON_INTERPRET: pytest's --doctest-modules imports this file too,
    # and must not switch its own process to the interpreter
    import numpy as np
    import torch

    from ragicl.index import _fused_topk as ft
    from ragicl.index.torch_search import TorchExactSearch

    with open(cases_path, encoding="utf-8") as f:
        cases = json.load(f)
    data = np.load(inputs_path)
    out: dict[str, np.ndarray] = {}
    real = ft.fused_topk
    for case in cases:
        name = case["name"]
        q, db = data[f"{name}/q"], data[f"{name}/db"]
        calls: list[str] = []
        if case["mode"] == "kernel":
            tq, tdb = torch.from_numpy(q), torch.from_numpy(db)
            out[f"{name}/runs"] = np.array(ft.kernel_runs_on(tq))
            s, p = real(tq, tdb, case["k"], slabs=case.get("slabs"))
            s, p = s.numpy(), p.numpy()
        elif case["mode"] == "reference":
            s, p = ft.reference_topk(torch.from_numpy(q), torch.from_numpy(db), case["k"], chunk_size=128)
            s, p = s.numpy(), p.numpy()
        else:  # "search": TorchExactSearch(topk="fused"), recording what reached the kernel
            def spy(*args, calls=calls, **kwargs):
                calls.append(str(args[0].dtype).removeprefix("torch."))
                return real(*args, **kwargs)

            ft.fused_topk = spy
            try:
                search = TorchExactSearch(db, device="cpu", dtype=case["dtype"], topk="fused")
                s, p = search.search(q, k=case["k"])
            finally:
                ft.fused_topk = real
        out[f"{name}/s"], out[f"{name}/p"] = s, p
        out[f"{name}/calls"] = np.array(calls, dtype=str)
    np.savez(outputs_path, **out)


if __name__ == "__main__":
    os.environ["TRITON_INTERPRET"] = "1"  # before triton is first imported
    main(*sys.argv[1:4])
