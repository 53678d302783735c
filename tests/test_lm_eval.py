"""ragicl.integrations.lm_eval with the real lm-evaluation-harness, MiniLM and SmolLM2.

The task is defined locally (tests/fixtures/lmeval_task) over ../shared/datasets/sst2; nothing is downloaded.
"""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("lm_eval")

from lm_eval.api.samplers import SAMPLER_REGISTRY, ContextSampler, get_sampler

from ragicl import ExampleIndex, Retriever, read_dataset
from ragicl.integrations.lm_eval import RagiclSampler, make_sampler, register_sampler

pytestmark = pytest.mark.slow
TASK_DIR = Path(__file__).parent / "fixtures" / "lmeval_task"


@pytest.fixture(scope="module")
def sst2_docs(sst2_test_path):
    data = read_dataset(sst2_test_path).sample(120, seed=1)
    return [{"text": ex.inputs["text"], "label": ex.label} for ex in data]


def test_registered_under_ragicl_and_configurable():
    assert get_sampler("ragicl") is RagiclSampler
    cls = make_sampler(strategy="balanced", name="ragicl-test-balanced")
    assert issubclass(cls, ContextSampler) and SAMPLER_REGISTRY["ragicl-test-balanced"] is cls
    assert cls.config["strategy"] == "balanced" and RagiclSampler.config["strategy"] == "topk"
    with pytest.raises(ValueError, match="unknown retrieval strategy"):
        make_sampler(strategy="nearest")
    with pytest.raises(TypeError):
        register_sampler("bad", dict)  # type: ignore[arg-type]
    SAMPLER_REGISTRY.pop("ragicl-test-balanced")


def test_pool_sampler_retrieves_nearest_docs_excluding_the_evaluated_one(sst2_docs, minilm):
    cls = make_sampler(embedder=minilm)
    sampler = cls(sst2_docs, rnd=1234)
    doc = sst2_docs[7]
    shots = sampler.sample(5, eval_doc=doc)
    assert len(shots) == 5 and doc not in shots
    assert all(s in sst2_docs for s in shots)  # lm-eval docs come back unchanged
    # most relevant last: the same order a ragicl Retriever gives, reversed
    found = Retriever(k=5).retrieve(sampler.index, [doc["text"]])[0]
    assert shots == [sst2_docs[p] for p in found.positions][::-1]
    assert sampler.sample(0, eval_doc=doc) == []
    with pytest.raises(ValueError, match="fewshot_split"):
        sampler.sample(3)
    with pytest.raises(ValueError, match="non-negative"):
        sampler.sample(-1, eval_doc=doc)


def test_index_sampler_returns_training_examples_as_docs(sst2_docs, sst2_train_path, minilm):
    train = read_dataset(sst2_train_path).sample(150, seed=2)
    index = ExampleIndex.build(train, embedder=minilm)
    sampler = make_sampler(index=index)(sst2_docs, rnd=None)
    shots = sampler.sample(4, eval_doc=sst2_docs[0])
    texts = {ex.inputs["text"]: ex.label for ex in train}
    assert len(shots) == 4
    assert all(set(s) == {"text", "label"} and texts[s["text"]] == s["label"] for s in shots)
    # a test document that is also in the pool is never its own demonstration
    own = {"text": train[3].inputs["text"], "label": train[3].label}
    assert own not in sampler.sample(4, eval_doc=own)


def test_local_task_runs_end_to_end_with_retrieved_shots(smollm_path):
    import lm_eval
    from lm_eval.tasks import TaskManager

    import ragicl.integrations.lm_eval  # noqa: F401  (registers the `ragicl` sampler)

    results = lm_eval.simple_evaluate(
        model="hf", model_args=f"pretrained={smollm_path},device=cpu,dtype=float32",
        tasks=["sst2_ragicl", "sst2_ragicl_pool"], limit=8, log_samples=True, batch_size=8,
        task_manager=TaskManager(include_path=str(TASK_DIR), include_defaults=False))
    for task in ("sst2_ragicl", "sst2_ragicl_pool"):  # pool: the training index / the test split itself
        assert 0.0 <= results["results"][task]["acc,none"] <= 1.0
        check_contexts(results["samples"][task])


def check_contexts(samples: list[dict]) -> None:
    assert len(samples) == 8
    for sample in samples:
        context, continuation = sample["arguments"][0][:2]
        blocks = context.split("\n\n")
        assert len(blocks) == 5  # 4 retrieved shots + the evaluated document
        assert blocks[-1] == f"Review: {sample['doc']['text']}\nSentiment:"
        assert all(b.rsplit("\nSentiment: ", 1)[1] in {"positive", "negative"} for b in blocks[:-1])
        assert all(sample["doc"]["text"] not in b for b in blocks[:-1])
        assert continuation in {" positive", " negative"}


PLAIN_TASK = """\
task: sst2_plain_ragicl
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
fewshot_split: test
output_type: multiple_choice
doc_to_text: "Review: {{{{text}}}}\\nSentiment:"
doc_to_target: label
doc_to_choice: ["negative", "positive"]
fewshot_config:
  sampler: ragicl
num_fewshot: 2
metadata:
  version: 1.0
"""

# runs in a fresh interpreter: lm-eval's own task loading, and nothing imports ragicl
PLAIN_SCRIPT = """\
import sys
from lm_eval.tasks import TaskManager, get_task_dict
assert not any(m == "ragicl" or m.startswith("ragicl.") for m in sys.modules), "ragicl imported early"
task = get_task_dict(["sst2_plain_ragicl"], TaskManager(include_path=sys.argv[1], include_defaults=False))
task = task["sst2_plain_ragicl"]
sampler = task.sampler
doc = task.test_docs()[0]
shots = sampler.sample(2, eval_doc=doc)
print(type(sampler).__module__, type(sampler).__name__, len(shots), doc["text"] in [s["text"] for s in shots])
"""


def test_plain_yaml_resolves_the_sampler_without_importing_ragicl(tmp_path, sst2_docs):
    """`sampler: ragicl` in a YAML, lm-eval's task loading in a subprocess with no `import ragicl`."""
    import json
    import os
    import subprocess
    import sys

    data = tmp_path / "sst2.jsonl"
    data.write_text("".join(json.dumps(d) + "\n" for d in sst2_docs[:16]))
    (tmp_path / "task.yaml").write_text(PLAIN_TASK.format(data=data))
    env = {k: v for k, v in os.environ.items() if k != "RAGICL_NO_LMEVAL_HOOK"}
    env.pop("PYTHONPATH", None)  # the installed package alone, not the test's path
    out = subprocess.run([sys.executable, "-c", PLAIN_SCRIPT, str(tmp_path)], capture_output=True, text=True,
                         env=env, cwd=tmp_path, timeout=600, check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.split()[-4:] == ["ragicl.integrations.lm_eval", "RagiclSampler", "2", "False"]
