"""The tooling that runs the benchmarks on a lent GPU, checked on the CPU (CI has no GPU):

* ``scripts/gpu/cublas12_shim.c``: the ``libcublas.so.12`` stand-in that lets faiss-gpu (built for CUDA 12)
  run on an image with cuBLAS 13 only. Built with the same script the device uses, against a fake
  ``libcublas.so.13`` whose functions return their arguments, so a lost or shifted argument (the long
  ``cublasGemmStridedBatchedEx`` passes some on the stack) shows;
* ``benchmarks/bench_gpu_search.py`` on the CPU at a small size: its certified torch search equals the exact
  float32 result and its two-stage group-max prototype equals the one-shot top-k.
"""

from __future__ import annotations

import ctypes
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

FAKE_CUBLAS13 = r"""
int cublasCreate_v2(void **h) { *h = (void *)0x1234; return 0; }
int cublasDestroy_v2(void *h) { return h == (void *)0x1234 ? 0 : 1; }
int cublasSetStream_v2(void *h, void *s) { return (int)(long)s; }
int cublasSetMathMode(void *h, int m) { return 100 + m; }
int cublasGetMathMode(void *h, int *m) { *m = 7; return 0; }
int cublasSgemmEx(void *h, int ta, int tb, int m, int n, int k, const float *al, const void *A, int at,
                  int lda, const void *B, int bt, int ldb, const float *be, void *C, int ct, int ldc) {
  return ldc * 1000 + ct * 10 + (int)*al;
}
int cublasGemmEx(void *h, int ta, int tb, int m, int n, int k, const void *al, const void *A, int at, int lda,
                 const void *B, int bt, int ldb, const void *be, void *C, int ct, int ldc, int comp, int algo) {
  return algo * 100 + comp;
}
int cublasGemmStridedBatchedEx(void *h, int ta, int tb, int m, int n, int k, const void *al, const void *A,
                               int at, int lda, long long sa, const void *B, int bt, int ldb, long long sb,
                               const void *be, void *C, int ct, int ldc, long long sc, int count, int comp,
                               int algo) {
  return (int)(sa + sb * 10 + sc * 100 + count * 1000 + comp * 10000 + algo * 100000);
}
"""


@pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc to build the shim")
def test_cublas12_shim_forwards_every_argument(tmp_path, monkeypatch):
    subprocess.run(["bash", str(ROOT / "scripts" / "gpu" / "build_shim.sh"), str(tmp_path)], check=True)
    (tmp_path / "fake.c").write_text(FAKE_CUBLAS13)
    fake = tmp_path / "libcublas.so.13"
    subprocess.run(["gcc", "-shared", "-fPIC", "-o", str(fake), str(tmp_path / "fake.c")], check=True)
    monkeypatch.setenv("RAGICL_CUBLAS13", str(fake))
    shim = ctypes.CDLL(str(tmp_path / "libcublas.so.12"))

    handle = ctypes.c_void_p()
    assert shim.cublasCreate_v2(ctypes.byref(handle)) == 0 and handle.value == 0x1234
    assert shim.cublasDestroy_v2(handle) == 0
    assert shim.cublasSetStream_v2(handle, ctypes.c_void_p(42)) == 42
    assert shim.cublasSetMathMode(handle, 3) == 103
    mode = ctypes.c_int()
    assert shim.cublasGetMathMode(handle, ctypes.byref(mode)) == 0 and mode.value == 7
    alpha = ctypes.c_float(5.0)
    assert shim.cublasSgemmEx(handle, 0, 0, 1, 2, 3, ctypes.byref(alpha), None, 4, 5, None, 6, 7,
                              ctypes.byref(alpha), None, 8, 9) == 9085
    assert shim.cublasGemmEx(handle, 0, 0, 1, 2, 3, None, None, 4, 5, None, 6, 7, None, None, 8, 9, 68,
                             99) == 9968
    ll = ctypes.c_longlong
    got = shim.cublasGemmStridedBatchedEx(handle, 0, 0, 1, 2, 3, None, None, 4, 5, ll(1), None, 7, 8, ll(2),
                                          None, None, 10, 11, ll(3), 4, 5, 6)
    assert got == 1 + 20 + 300 + 4000 + 50000 + 600000


@pytest.mark.skipif(shutil.which("gcc") is None or shutil.which("readelf") is None,
                    reason="needs gcc and readelf")
def test_cublas12_shim_exports_the_cuda12_symbol_version(tmp_path):
    """faiss-gpu's references are versioned ``@libcublas.so.12``: the shim must define exactly that."""
    subprocess.run(["bash", str(ROOT / "scripts" / "gpu" / "build_shim.sh"), str(tmp_path)], check=True)
    syms = subprocess.run(["readelf", "--dyn-syms", "-W", str(tmp_path / "libcublas.so.12")], check=True,
                          capture_output=True, text=True).stdout
    for name in ("cublasCreate_v2", "cublasGemmEx", "cublasGemmStridedBatchedEx", "cublasSgemmEx"):
        assert f"{name}@@libcublas.so.12" in syms
    soname = subprocess.run(["readelf", "-d", str(tmp_path / "libcublasLt.so.12")], check=True,
                            capture_output=True, text=True).stdout
    assert "[libcublasLt.so.12]" in soname


def test_bench_gpu_search_runs_on_cpu(tmp_path):
    out = tmp_path / "search.json"
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_gpu_search.py"), "--device", "cpu", "--n", "3000",
                    "--queries", "20", "--repeat", "1", "--chunks", "1024", "--no-faiss", "--json", str(out)],
                   check=True, capture_output=True, text=True, cwd=ROOT)
    rows = {r["method"]: r for r in json.loads(out.read_text())["rows"]}
    certified = rows["TorchExactSearch bf16 + certified re-rank, chunk 1,024"]
    assert certified["recall vs fp32"] == 1.0  # the re-rank is certified exact
    raw = rows["TorchExactSearch bf16, no re-rank (approximate)"]["recall vs fp32"]
    two_stage = rows["prototype group-max top-k (group 64), chunk 1,024"]["recall vs fp32"]
    assert abs(two_stage - raw) <= 0.02  # same bf16 scores; only ties may differ
    # the fused top-k rows (torch equivalent of the Triton kernel on a CPU): certified and float32 exact
    assert rows["TorchExactSearch bf16 + certified re-rank, fused top-k"]["recall vs fp32"] == 1.0
    assert rows["TorchExactSearch float32, fused top-k"]["recall vs fp32"] == 1.0
    assert rows["fused top-k kernel alone, bf16 candidates (approximate)"]["recall vs fp32"] > 0
    assert all(r["ms"] > 0 for r in rows.values())
