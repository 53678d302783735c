"""ragicl.integrations.lm_eval through lm-eval's own code: its task loading from YAML with ragicl's
``--include_path`` folder (``TASKS_DIR``), the real MiniLM embedder, the SmolLM2 tokenizer, and an evaluation
with lm-eval's ``hf`` model class on SmolLM2. The data are rows of ../shared/datasets/sst2; nothing is
downloaded. (The ``lm_eval run`` command of docs/guide/integrations/lm_eval.md loads the same YAML the same way; it
is not run here because it indexes lm-eval's ~15,000 built-in tasks first.)
"""

from __future__ import annotations

import importlib.util
import json
import os
import site
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("lm_eval")

from lm_eval.api.samplers import SAMPLER_REGISTRY, ContextSampler
from lm_eval.tasks import TaskManager

from ragicl import BudgetError, ExampleIndex, Retriever, read_dataset
from ragicl.integrations.lm_eval import (
    TASKS_DIR,
    RagiclSampler,
    RetrievalTask,
    make_sampler,
    register_sampler,
)

pytestmark = pytest.mark.slow
N_TRAIN, N_TEST, SHOTS, BUDGET = 200, 12, 8, 120


def _head(path: Path, n: int) -> list[dict]:
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for _, line in zip(range(n), fh)]


@pytest.fixture(scope="module")
def sst2_dir(tmp_path_factory, sst2_train_path, sst2_test_path) -> Path:
    """A data_dir for the shipped task: train.jsonl (200 rows) and test.jsonl (12 rows) of SST-2."""
    folder = tmp_path_factory.mktemp("sst2")
    for name, src, n in (("train", sst2_train_path, N_TRAIN), ("test", sst2_test_path, N_TEST)):
        (folder / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in _head(src, n)))
    return folder


def load(name: str, include: Path = TASKS_DIR, **metadata):
    """lm-eval's own task loading: the YAML files under ``include`` (what --include_path does)."""
    manager = TaskManager(include_path=str(include), include_defaults=False, metadata=metadata)
    return manager.load([name])["tasks"][name]


@pytest.fixture(scope="module")
def budget_task(sst2_dir, smollm_path):
    return load("ragicl_sst2", data_dir=str(sst2_dir), pretrained=smollm_path,
                ragicl={"max_prompt_tokens": BUDGET})


def test_the_shipped_task_retrieves_from_the_training_split_under_the_exact_budget(budget_task, sst2_dir,
                                                                                   smollm_tokenizer):
    task = budget_task
    assert isinstance(task, RetrievalTask) and isinstance(task.sampler, RagiclSampler)
    train = {r["text"]: r["label"] for r in _head(sst2_dir / "train.jsonl", N_TRAIN)}
    assert [d["text"] for d in task.sampler.fewshot_docs()] == list(train)  # the pool: the training split
    kept = []
    for doc in task.test_docs():
        context = task.fewshot_context(doc, SHOTS)
        blocks = context.split("\n\n")
        assert blocks[-1] == f"Review: {doc['text']}\nSentiment:"
        shots = [b.removeprefix("Review: ").rsplit("\nSentiment: ", 1) for b in blocks[:-1]]
        assert all(train[text] == label for text, label in shots)  # training rows, with their labels
        assert doc["text"] not in train
        # exact: the model's tokenizer on the text lm-eval sends, within the budget...
        n_tokens = len(smollm_tokenizer(context)["input_ids"])
        assert n_tokens == task.count_tokens(context) and n_tokens <= BUDGET
        # ...holding the most relevant demonstrations (most relevant last), and one more would not fit
        retrieved = task.sampler.sample(SHOTS, eval_doc=doc)
        found = Retriever(k=SHOTS).retrieve(task.sampler.index, [doc["text"]])[0]
        assert retrieved == [task.sampler.fewshot_docs()[p] for p in found.positions][::-1]
        m = len(shots)
        assert [s[0] for s in shots] == [d["text"] for d in retrieved[SHOTS - m:]]
        if m < SHOTS:
            assert task.count_tokens(task._render(doc, retrieved[SHOTS - m - 1:], {})) > BUDGET
        kept.append(m)
    assert 0 < min(kept) < SHOTS  # the budget cut some contexts and left demonstrations in all


def test_a_document_that_alone_exceeds_the_budget_is_a_budget_error(sst2_dir, smollm_path):
    task = load("ragicl_sst2", data_dir=str(sst2_dir), pretrained=smollm_path, ragicl={"max_prompt_tokens": 3})
    with pytest.raises(BudgetError, match="alone needs .* max_prompt_tokens is 3") as err:
        task.fewshot_context(task.test_docs()[0], SHOTS)
    assert err.value.budget == 3 and err.value.needed > 3


@pytest.mark.parametrize("ragicl, error, match", [
    ({"max_prompt_tokens": 0}, ValueError, "positive integer"),
    ({"k": 4}, ValueError, "unknown settings"),
    ({"selection": "nearest"}, ValueError, "unknown selection"),
    ({"index": "no/such/index"}, FileNotFoundError, "does not exist"),
])
def test_bad_settings_are_clear_errors_when_the_task_loads(sst2_dir, smollm_path, ragicl, error, match):
    with pytest.raises(error, match=match):
        load("ragicl_sst2", data_dir=str(sst2_dir), pretrained=smollm_path, ragicl=ragicl)


def test_a_budget_without_a_known_tokenizer_and_a_missing_data_dir_are_clear_errors(sst2_dir):
    with pytest.raises(ValueError, match="needs the model's tokenizer"):
        load("ragicl_sst2", data_dir=str(sst2_dir))  # no pretrained= in the metadata
    with pytest.raises(Exception, match="data_dir"):
        load("ragicl_sst2", pretrained="unused")


def test_a_saved_ragicl_index_as_the_pool(sst2_dir, sst2_train_path, minilm, smollm_path, tmp_path):
    train = read_dataset(sst2_train_path).sample(100, seed=3)
    folder = ExampleIndex.build(train, embedder=minilm).save(tmp_path / "idx")
    task = load("ragicl_sst2", data_dir=str(sst2_dir), pretrained=smollm_path,
                ragicl={"index": str(folder), "selection": "balanced"})
    texts = {ex.inputs["text"]: ex.label for ex in train}
    shots = task.sampler.sample(4, eval_doc=task.test_docs()[0])
    assert len(shots) == 4 and all(set(s) == {"text", "label"} and texts[s["text"]] == s["label"] for s in shots)
    assert sorted(s["label"] for s in shots) == ["negative", "negative", "positive", "positive"]  # balanced


SAMPLER_ONLY = """\
task: sst2_sampler_only
custom_dataset: !function ragicl.integrations.lm_eval.jsonl_splits
test_split: test
fewshot_split: {split}
output_type: multiple_choice
doc_to_text: "Review: {{{{text}}}}\\nSentiment:"
doc_to_target: label
doc_to_choice: ["negative", "positive"]
fewshot_config:
  sampler: !function ragicl.integrations.lm_eval.RagiclSampler
num_fewshot: 2
metadata:
  version: 1.0
"""


def test_the_sampler_alone_sees_the_document_only_when_the_fewshot_split_is_the_test_split(sst2_dir, tmp_path):
    (tmp_path / "task.yaml").write_text(SAMPLER_ONLY.format(split="test"))
    task = load("sst2_sampler_only", include=tmp_path, data_dir=str(sst2_dir))
    doc = task.test_docs()[0]
    blocks = task.fewshot_context(doc, 2).split("\n\n")
    assert len(blocks) == 3 and all(doc["text"] not in b for b in blocks[:-1])
    (tmp_path / "task.yaml").write_text(SAMPLER_ONLY.format(split="train"))
    task = load("sst2_sampler_only", include=tmp_path, data_dir=str(sst2_dir))
    with pytest.raises(ValueError, match="RetrievalTask"):
        task.fewshot_context(task.test_docs()[0], 2)


FRESH = """\
import sys
from lm_eval.tasks import TaskManager
assert not any(m == "ragicl" or m.startswith("ragicl.") for m in sys.modules), "ragicl imported early"
manager = TaskManager(include_path=sys.argv[1], include_defaults=False,
                      metadata={"data_dir": sys.argv[2], "pretrained": sys.argv[3]})
task = manager.load(["ragicl_sst2"])["tasks"]["ragicl_sst2"]
print(type(task).__name__, type(task.sampler).__name__, task.config.metadata["ragicl"]["max_prompt_tokens"])
"""


def test_the_yaml_alone_loads_in_a_fresh_interpreter_and_no_startup_hook_is_installed(sst2_dir, smollm_path,
                                                                                      tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # the installed package alone
    out = subprocess.run([sys.executable, "-c", FRESH, str(TASKS_DIR), str(sst2_dir), smollm_path], capture_output=True,
                         text=True, env=env, cwd=tmp_path, timeout=600, check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.split()[-3:] == ["RetrievalTask", "RagiclSampler", "512"]
    assert importlib.util.find_spec("_ragicl_lmeval") is None
    for folder in {*site.getsitepackages(), site.getusersitepackages()}:
        for pth in Path(folder).glob("*.pth") if Path(folder).is_dir() else []:
            assert "lmeval" not in pth.read_text(errors="replace"), pth


def test_an_evaluation_with_the_hf_model_uses_the_retrieved_contexts(sst2_dir, smollm_path, smollm_tokenizer):
    import lm_eval

    manager = TaskManager(include_path=str(TASKS_DIR), include_defaults=False,
                          metadata={"data_dir": str(sst2_dir), "pretrained": smollm_path,
                                    "ragicl": {"max_prompt_tokens": BUDGET}})
    results = lm_eval.simple_evaluate(
        model="hf", model_args=f"pretrained={smollm_path},device=cpu,dtype=float32", tasks=["ragicl_sst2"],
        task_manager=manager, limit=4, log_samples=True, batch_size=8)
    assert 0.0 <= results["results"]["ragicl_sst2"]["acc,none"] <= 1.0
    assert results["configs"]["ragicl_sst2"]["metadata"]["ragicl"] == {"max_prompt_tokens": BUDGET}
    train = {r["text"] for r in _head(sst2_dir / "train.jsonl", N_TRAIN)}
    samples = results["samples"]["ragicl_sst2"]
    assert len(samples) == 4
    for sample in samples:
        context, continuation = sample["arguments"]["gen_args_0"].values() if isinstance(
            sample["arguments"], dict) else sample["arguments"][0][:2]
        blocks = context.split("\n\n")
        assert blocks[-1] == f"Review: {sample['doc']['text']}\nSentiment:" and len(blocks) > 1
        assert all(b.removeprefix("Review: ").rsplit("\nSentiment: ", 1)[0] in train for b in blocks[:-1])
        assert len(smollm_tokenizer(context)["input_ids"]) <= BUDGET
        assert continuation in {" positive", " negative"}


# ---------------------------------------------------------------- the sampler on its own (Python API)
@pytest.fixture(scope="module")
def sst2_docs(sst2_test_path):
    data = read_dataset(sst2_test_path).sample(120, seed=1)
    return [{"text": ex.inputs["text"], "label": ex.label} for ex in data]


def test_make_sampler_takes_selection_and_warns_on_the_deprecated_strategy():
    import ragicl.integrations.lm_eval  # noqa: F401  (importing registers `sampler: ragicl`)

    assert SAMPLER_REGISTRY["ragicl"] is RagiclSampler
    cls = make_sampler(selection="balanced", name="ragicl-test-balanced")
    assert issubclass(cls, ContextSampler) and SAMPLER_REGISTRY.pop("ragicl-test-balanced") is cls
    assert cls.config["selection"] == "balanced" and RagiclSampler.config["selection"] == "topk"
    with pytest.warns(DeprecationWarning, match="selection="):
        assert make_sampler(strategy="mmr").config["selection"] == "mmr"
    with pytest.raises(ValueError, match="selection"):
        make_sampler(selection="topk", strategy="mmr")
    with pytest.raises(ValueError, match="unknown selection"):
        make_sampler(selection="nearest")
    with pytest.raises(TypeError):
        register_sampler("bad", dict)  # type: ignore[arg-type]


def test_pool_sampler_retrieves_nearest_docs_excluding_the_evaluated_one(sst2_docs, minilm):
    sampler = make_sampler(embedder=minilm)(sst2_docs, rnd=1234)
    doc = sst2_docs[7]
    shots = sampler.sample(5, eval_doc=doc)
    assert len(shots) == 5 and doc not in shots
    assert all(s in sst2_docs for s in shots)  # lm-eval docs come back unchanged
    found = Retriever(k=5).retrieve(sampler.index, [doc["text"]])[0]  # most relevant last
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
    own = {"text": train[3].inputs["text"], "label": train[3].label}  # in the pool: never its own shot
    assert own not in sampler.sample(4, eval_doc=own)
