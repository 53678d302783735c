"""EPR-style learned retriever (issue 39 §2): candidate demonstrations scored by how much each raises the LM's
probability of the gold label, a bi-encoder fine-tuned contrastively on those scores, saved crash-safely and
used as an index's embedder. Fast tests: a fake LM and a tiny random sentence-transformer; real test: SmolLM2
scores real SST-2 demonstrations and MiniLM is fine-tuned on them."""

from __future__ import annotations

import json

import numpy as np
import pytest
from _selection_fakes import FakeLM, tiny_sentence_transformer

pytest.importorskip("sentence_transformers")

from ragicl._exceptions import DataError
from ragicl.data import from_records, read_dataset
from ragicl.index.core import ExampleIndex
from ragicl.index.embed import get_embedder
from ragicl.prompt.pack import Packer
from ragicl.prompt.retrieve import Retriever
from ragicl.prompt.template import PromptTemplate
from ragicl.training.epr import RECORD, score_demonstrations, train_epr, triples

POS = ["a joy to watch", "funny and warm", "a superb cast", "moving and sharp", "great fun", "lovely film"]
NEG = ["a dull mess", "far too long", "lifeless acting", "a tedious plot", "awful film", "boring and flat"]


@pytest.fixture(scope="module")
def fake_setup(smollm_tokenizer):
    rows = [{"text": t, "label": "positive"} for t in POS] + [{"text": t, "label": "negative"} for t in NEG]
    data = from_records(rows)
    index = ExampleIndex.build(data, embedder="hash-64", device="cpu")
    packer = Packer(smollm_tokenizer, PromptTemplate(), max_prompt_tokens=64).fit(index.examples)
    return data, index, packer, FakeLM(smollm_tokenizer)


def test_scores_are_the_gold_log_probability_after_each_one_shot_prompt(fake_setup):
    data, index, packer, lm = fake_setup
    queries = list(data)[:4] + list(data)[6:10]
    s = score_demonstrations(lm, packer, index, queries, n_candidates=5)
    assert s.candidates.shape == (8, 5) and (s.candidates >= 0).all()
    answers = [packer.answer_ids(label) for label in packer.labels_]
    for i, q in enumerate(queries):
        assert q.id not in {index.examples[p].id for p in s.candidates[i]}  # never the query itself
        for j, p in enumerate(s.candidates[i]):
            prompt = packer.pack(q, [int(p)], max_examples=1)
            z = lm.score_continuations([prompt.token_ids], answers)[0].astype(np.float64)
            logp = z - np.log(np.exp(z - z.max()).sum()) - z.max()
            assert s.scores[i, j] == pytest.approx(logp[packer.labels_.index(q.label)], abs=1e-9)
        same = [index.examples[p].label == q.label for p in s.candidates[i]]
        if any(same) and not all(same):  # the fake LM rewards a demonstration with the gold label
            assert s.scores[i][same].min() > s.scores[i][~np.asarray(same)].max()
    np.testing.assert_allclose(s.gains, s.scores - s.zero_shot[:, None])
    trip = triples(s, index, queries)
    assert trip and all(index.examples[index.position_of(q.id)].label for q in queries)
    for (qt, pos, neg), q in zip(trip, queries):
        by_text = {ex.text(): ex.label for ex in index.examples}
        assert by_text[pos] == q.label != by_text[neg]


def test_bad_inputs(fake_setup, tmp_path):
    data, index, packer, lm = fake_setup
    unlabeled = from_records([{"text": "x"}], label_field=None).examples[0]
    with pytest.raises(DataError, match="labeled Examples"):
        score_demonstrations(lm, packer, index, [unlabeled])
    with pytest.raises(ValueError, match="n_candidates"):
        score_demonstrations(lm, packer, index, list(data)[:1], n_candidates=0)
    s = score_demonstrations(lm, packer, index, list(data)[:2], n_candidates=1)
    with pytest.raises(DataError, match="nothing to learn"):
        train_epr(s, index, list(data)[:2], tmp_path / "m", base="hash-8")
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "mine.txt").write_text("keep")
    with pytest.raises(FileExistsError, match="not an empty folder"):
        train_epr(s, index, list(data)[:2], tmp_path / "taken")
    assert (tmp_path / "taken" / "mine.txt").read_text() == "keep"
    with pytest.raises(ValueError, match="lr must be"):
        train_epr(s, index, list(data)[:2], tmp_path / "m", lr=0)


def test_training_a_tiny_bi_encoder_lowers_the_loss_and_saves_an_embedder(fake_setup, tmp_path):
    data, index, packer, lm = fake_setup
    queries = list(data)
    s = score_demonstrations(lm, packer, index, queries, n_candidates=6)
    base = tiny_sentence_transformer(tmp_path / "base")
    result = train_epr(s, index, queries, tmp_path / "epr", base=base, epochs=8, batch_size=4, lr=5e-3)
    assert result.triples == len(triples(s, index, queries)) > 0
    assert result.epoch_losses[-1] < result.epoch_losses[0]
    record = json.loads((tmp_path / "epr" / RECORD).read_text())
    assert record["triples"] == result.triples
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]
    emb = get_embedder(result.path, device="cpu")
    trained = ExampleIndex.build(data, embedder=emb, device="cpu")
    assert trained.dimension == 32 and Retriever(k=3).retrieve(trained, [queries[0]])[0].positions


# ------------------------------------------------------------------------------------ real
def test_real_smollm2_scores_and_minilm_fine_tuning_on_sst2(sst2_train_path, smollm_lm, minilm, tmp_path):
    train = read_dataset(sst2_train_path, name="sst2").sample(40, seed=11)
    index = ExampleIndex.build(train, embedder=minilm, device="cpu")
    packer = Packer(smollm_lm.tokenizer, PromptTemplate(), max_prompt_tokens=128,
                    context_length=smollm_lm.context_length).fit(index.examples)
    queries = list(train)[:4]
    s = score_demonstrations(smollm_lm, packer, index, queries, n_candidates=3)
    assert np.isfinite(s.scores[s.candidates >= 0]).all() and (s.scores[s.candidates >= 0] <= 0).all()
    assert np.isfinite(s.zero_shot).all()
    # one score checked against the LM directly
    prompt = packer.pack(queries[0], [int(s.candidates[0, 0])], max_examples=1)
    z = smollm_lm.score_continuations([prompt.token_ids], [packer.answer_ids(lab) for lab in packer.labels_])[0]
    z = z.astype(np.float64)
    logp = z - z.max() - np.log(np.exp(z - z.max()).sum())
    assert s.scores[0, 0] == pytest.approx(logp[packer.labels_.index(queries[0].label)], abs=1e-4)
    trip = triples(s, index, queries)
    if not trip:
        pytest.skip("SmolLM2 scored every candidate alike on these queries; nothing to train on")
    model = minilm.load()

    def margins():
        q, p, n = (model.encode([t[c] for t in trip], normalize_embeddings=True) for c in range(3))
        return ((q * p).sum(1) - (q * n).sum(1)).mean()

    before = margins()
    result = train_epr(s, index, queries, tmp_path / "epr-minilm", base=_copy(model), epochs=3, batch_size=4,
                       lr=1e-4)
    trained = get_embedder(result.path, device="cpu").load()
    q, p, n = (trained.encode([t[c] for t in trip], normalize_embeddings=True) for c in range(3))
    after = ((q * p).sum(1) - (q * n).sum(1)).mean()
    assert after > before  # the positives moved closer to their queries than the hard negatives
    assert ExampleIndex.build(train, embedder=result.path, device="cpu").dimension == 384


def _copy(model):
    import copy

    return copy.deepcopy(model)
