"""Markdown/JSON report writing, the Gap exceedance fields, and a report from a real compare()."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ragicl.evaluation.compare import DEFAULT_EPSILONS, gap
from ragicl.evaluation.report import (
    curve_markdown,
    machine_info,
    markdown_table,
    report_markdown,
    write_report,
)
from ragicl.evaluation.stats import Interval, clopper_pearson


def _iv(e: float) -> Interval:
    return Interval(e, e - 0.1, e + 0.1, 0.95, "percentile-bootstrap")


def test_markdown_table_escapes_pipes():
    t = markdown_table(["a", "b"], [["x|y", 2]])
    assert t.splitlines() == ["| a | b |", "|---|---|", "| x\\|y | 2 |"]


def test_gap_exceedance_matches_hand_count():
    rng = np.random.default_rng(0)
    p = rng.dirichlet([1, 1, 1], size=50)
    q = rng.dirichlet([1, 1, 1], size=50)
    g = gap(p, q, n_boot=100)
    tv = 0.5 * np.abs(p - q).sum(1)
    assert set(g.exceed) == set(DEFAULT_EPSILONS)
    for eps, iv in g.exceed.items():
        k = int((tv > eps).sum())
        assert iv == clopper_pearson(k, 50)
    assert g.to_json()["exceed"]["0.1"]["estimate"] == pytest.approx((tv > 0.1).mean())
    custom = gap(p, q, n_boot=10, epsilons=(0.5,))
    assert list(custom.exceed) == [0.5]


def test_curve_markdown_and_write_report(tmp_path):
    from ragicl.evaluation.curves import Curve

    c = Curve((1 / 4, 1.0), (_iv(0.3), _iv(0.2)), (_iv(0.7), _iv(0.8)),
              {"knob": "data_fraction", "xlabel": "fraction", "n_index": [25, 100]})
    md = curve_markdown(c)
    assert "| 1/4 | 25 | 0.300 [0.200, 0.400] | 0.700 [0.600, 0.800] |" in md
    png = tmp_path / "img.png"
    png.write_bytes(b"\x89PNG\r\n\x1a\nfake")
    out, js = write_report(tmp_path / "rep", title="T", sections=[("S", md)], images={"cap": png},
                           results={"curve": c.to_json()}, command="run me", machine={"cores": 2})
    text = out.read_text()
    assert text.startswith("# T") and "run me" in text and "## S" in text and "![img](" in text
    data = json.loads(js.read_text())
    assert data["curve"]["meta"]["n_index"] == [25, 100] and data["machine"] == {"cores": 2}
    out2, _ = write_report(tmp_path / "rep2", title="T", sections=[], images={"cap": png}, embed_images=True)
    assert "data:image/png;base64," in out2.read_text()


def test_machine_info_has_cores():
    info = machine_info()
    assert info["cores"] >= 1 and "python" in info


@pytest.mark.slow
def test_report_markdown_from_real_compare(smollm_lm, sst2_train_path):
    from ragicl import ExampleIndex, ICLClassifier, PromptTemplate, compare, read_dataset
    from ragicl.index.embed import HashEmbedder

    data = read_dataset(sst2_train_path).subset(range(30))
    index = ExampleIndex.build(data.subset(range(24)), embedder=HashEmbedder(32), device="cpu")
    tpl = PromptTemplate.for_dataset("sst2")
    systems = {"k2": ICLClassifier(smollm_lm, tpl, k=2, max_prompt_tokens=200).fit(index),
               "zero": ICLClassifier(smollm_lm, tpl, k=0, max_prompt_tokens=200).fit(index)}
    report = compare(data.subset(range(24, 30)), systems, reference="zero", n_boot=50)
    md = report_markdown(report)
    rows = md.splitlines()
    assert len(rows) == 4 and "share TV>0.1" in rows[0]
    g = report.gaps[0]
    assert str(g.tv) in md and str(g.exceed[0.1]) in md and "(reference)" in rows[3]


@pytest.mark.slow
def test_report_flags_a_real_fast_reference(smollm_lm, sst2_train_path, tmp_path):
    """End to end: a fast (fixed-step) fine-tuned checkpoint used as the reference is flagged in the table,
    the Markdown and the JSON; the reference's meta is read from the folder the classifier loads."""
    from ragicl import ICLClassifier, PromptTemplate, compare, read_dataset
    from ragicl.training.finetune import finetune

    data = read_dataset(sst2_train_path).subset(range(12))
    tpl = PromptTemplate.for_dataset("sst2")
    zero = ICLClassifier(smollm_lm, tpl, k=0, max_prompt_tokens=200).fit(data.subset(range(8)))
    prompts = [list(p.token_ids) for p in zero.prompts(list(data.examples[:4]))]
    finetune(smollm_lm, prompts, [data.labels.index(e.label) for e in data.examples[:4]], zero.label_ids_,
             mode="value", steps=1, batch_size=4, out=tmp_path / "ft", show_progress=False)
    ft = ICLClassifier(str(tmp_path / "ft"), tpl, k=0, max_prompt_tokens=200).fit(data.subset(range(8)))
    report = compare(data.subset(range(8, 12)), {"zero": zero, "fine-tuned": ft}, n_boot=50)
    flag = "reference 'fine-tuned' not converged: fast reference, 1 steps x 4, 4 examples seen"
    assert flag in report.table() and flag in report_markdown(report)
    assert report.to_json()["reference_training"]["fast"] is True
