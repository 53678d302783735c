"""The self-contained HTML report (ragicl.evaluation.html_report), checked without a browser: its structure
(parsed with html.parser, every SVG parsed as XML), what it shows against the numbers compare() computed,
escaping of hostile strings, the cases without a reference / with 150 labels / from JSON, the Markdown
variant, and the file modes of every report writer under two umasks. tests/test_html_report_browser.py
opens the same pages in a real headless Chromium."""

from __future__ import annotations

import html.parser
import json
import os
import xml.etree.ElementTree as ET

import numpy as np
import pytest
from _html_fixtures import synthetic_report, trec_fixture

from ragicl.evaluation.compare import Report
from ragicl.evaluation.curves import Curve
from ragicl.evaluation.html_report import (
    render_html,
    report_format,
    write_html_report,
    write_markdown_report,
    write_report_file,
)
from ragicl.evaluation.predictions import Predictions, save_predictions
from ragicl.evaluation.report import write_report
from ragicl.evaluation.stats import Interval

HOSTILE = ("<script>window.__pwned=1</script>", '"><img src=x onerror="window.__pwned=2">', "a&amp;b", "plain")


class Page(html.parser.HTMLParser):
    """Every start tag with its attributes, the text, and the raw ``<svg>…</svg>`` sources."""

    def __init__(self, text: str) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict]] = []
        self.text: list[str] = []
        self.feed(text)
        self.svgs = [text[i: text.index("</svg>", i) + 6] for i in _find_all(text, "<svg")]

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)

    def count(self, tag: str, **attrs) -> int:
        return sum(1 for t, a in self.tags if t == tag and all(a.get(k) == v for k, v in attrs.items()))

    def ids(self) -> set[str]:
        return {a["id"] for _, a in self.tags if "id" in a}


def _find_all(text: str, needle: str) -> list[int]:
    out, i = [], text.find(needle)
    while i >= 0:
        out.append(i)
        i = text.find(needle, i + 1)
    return out


def _iv(e: float) -> Interval:
    return Interval(e, max(e - 0.05, 0), e + 0.05, 0.95, "percentile-bootstrap")


def _curves() -> list[Curve]:
    k = Curve((0.0, 4.0, 16.0), (_iv(0.5), _iv(0.35), _iv(0.3)), (_iv(0.5), _iv(0.7), _iv(0.75)), {"knob": "k",
              "xlabel": "shots k"})
    data = Curve((0.25, 0.5, 1.0), (_iv(0.4), _iv(0.33), _iv(0.3)), (_iv(0.6), _iv(0.7), _iv(0.72)),
                 {"knob": "data_fraction", "n_index": [250, 500, 1000]})
    return [k, data]


TUNE = {"params": {"k": 8, "knn_k": 32, "knn_weight": 0.7, "knn_temperature": None}, "dev_accuracy": 0.82,
        "dev_log_loss": 0.61, "baselines": {"retrieved-8": 0.74, "kNN vote k=32": 0.78}, "n_dev": 150,
        "reason": "best dev accuracy 0.820 on 150 held-out training examples",
        "trials": [{"params": {"k": 8, "knn_k": k, "knn_weight": w, "knn_temperature": None},
                    "accuracy": 0.6 + w / 4 + k / 1000, "log_loss": 1 - w / 3} for k in (8, 32) for w in
                   (0.1, 0.3, 0.5, 0.7, 0.69)]}


def _assert_safe(page: Page, raw: str) -> None:
    """No script, no element from the data, no event handler, nothing loaded from outside the file."""
    assert page.count("script") == 0 and page.count("img") == 0 and page.count("iframe") == 0
    for _, attrs in page.tags:
        assert not any(k.startswith("on") for k in attrs), attrs
        assert not any(k in ("src", "href", "xlink:href") for k in attrs), attrs
    assert "http://" not in raw and "https://" not in raw and "url(" not in raw and "@import" not in raw
    for svg in page.svgs:
        ET.fromstring(svg)  # well-formed XML


def test_full_report_shows_what_compare_measured(tmp_path):
    report, test = synthetic_report(6, 200)
    gold = [ex.label for ex in test.examples]
    path = write_html_report(report, tmp_path / "out" / "report.html", tune=TUNE, curves=_curves(), gold=gold,
                             command="ragicl eval --report report.html")
    raw = path.read_text(encoding="utf-8")
    page = Page(raw)
    _assert_safe(page, raw)
    assert raw.startswith("<!DOCTYPE html>") and "Content-Security-Policy" in raw
    assert {"results", "figures", "confusion", "tuning", "curves", "notes", "fig-accuracy", "fig-tv",
            "fig-gap-closed", "fig-tune"} <= page.ids()
    text = " ".join(page.text)
    for s in report.systems:  # one table row per system, with its interval as printed by the plain table
        assert s.name in text and f"{s.accuracy.estimate:.3f}" in text
    assert page.count("tr", **{"class": "best"}) == 1 and page.count("tr", **{"class": "reference"}) == 1
    by = {s.name: s.accuracy.estimate for s in report.systems}
    share = (by["ragicl best"] - by["zero-shot"]) / (by["fine-tuned"] - by["zero-shot"])
    assert f"{share:.3f}" in raw  # the gap-closed bar's value label
    gaps = {g.system: g for g in report.gaps}
    assert f"{1 - gaps['ragicl best'].tv.estimate / gaps['zero-shot'].tv.estimate:.3f}" in raw
    agree = round(gaps["ragicl best"].agreement * report.n)
    assert f"{agree} of {report.n} queries agree" in text  # the confusion's diagonal = compare's agreement
    assert "Best 10 of 10 settings tried" in text and page.count("tr", **{"class": "chosen"}) == 1
    assert len(page.svgs) == 3 + 1 + 2 * 2  # accuracy, TV, gap closed; tuning; two panels per curve
    assert "synthetic systems" in text and "ragicl eval --report report.html" in text


def test_reference_training_line():
    report, _ = synthetic_report(3, 30)
    training = {"steps": 150, "examples_seen": 1200, "dev_accuracy": None, "converged": False, "note": "short"}
    raw = render_html(Report(report.dataset, report.n, report.labels, report.systems, report.gaps, report.reference,
                             report.notes, training))
    assert "fine-tuned training: 150 steps, 1200 examples seen, not converged (see the notes)" in raw
    assert "(reference, not converged)" in raw and "None" not in raw


def test_gap_closed_intervals_contain_the_estimate():
    from ragicl.evaluation._html_data import distributions, gap_closed

    report, test = synthetic_report(6, 300)
    probs, gold, notes = distributions(report, gold=[ex.label for ex in test.examples])
    assert notes == [] and set(probs) == {s.name for s in report.systems}
    rows, note = gap_closed(report, probs, gold, n_boot=400)
    assert note is None and [r.system for r in rows] == ["retrieved-8", "kNN vote k=32", "ragicl best"]
    for r in rows:
        for s in (r.accuracy, r.tv):
            assert s.low is not None and s.low <= s.estimate <= s.high
    best = rows[-1]
    assert best.accuracy.high - best.accuracy.low < 1.0  # 300 queries: an informative interval


def test_hostile_strings_are_text_never_markup(tmp_path):
    labels = HOSTILE
    report, test = synthetic_report(labels=labels, n=120)
    report = Report(f"<b>{HOSTILE[0]}", report.n, report.labels, report.systems, report.gaps, report.reference,
                    (*report.notes, f"note {HOSTILE[1]} <iframe src=x>"), report.reference_training)
    raw = render_html(report, gold=[ex.label for ex in test.examples], title=HOSTILE[0], tune={
        "params": {HOSTILE[1]: HOSTILE[0]}, "reason": HOSTILE[0], "trials": [{"params": {"x": HOSTILE[0]}}]},
        curves={HOSTILE[0]: _curves()[0]})
    page = Page(raw)
    _assert_safe(page, raw)
    assert page.count("b") == 0
    text = "".join(page.text)
    for s in HOSTILE:  # shown as written (html.parser un-escapes the text)
        assert s in text
    assert "<script>" not in raw


def test_without_reference_no_tv_and_confusion_against_gold(tmp_path):
    report, test = synthetic_report(4, 100, reference=False)
    raw = render_html(report, gold=[ex.label for ex in test.examples])
    page = Page(raw)
    _assert_safe(page, raw)
    assert "fig-accuracy" in page.ids() and not {"fig-tv", "fig-gap-closed"} & page.ids()
    assert "TV to" not in raw and "no fine-tuned reference" in raw
    assert "Per label: ragicl best vs gold" in raw
    no_gold = Page(render_html(report))  # no reference and no gold: nothing to compare with
    assert "no reference and no gold labels" in " ".join(no_gold.text)
    assert no_gold.count("table", **{"class": "confusion"}) == 0


def test_many_labels_keep_the_confusion_readable():
    report, test = synthetic_report(150, 1000)
    raw = render_html(report, gold=[ex.label for ex in test.examples])
    page = Page(raw)
    _assert_safe(page, raw)
    start = raw.index("<table class=confusion")
    confusion = Page(raw[start: raw.index("</table>", start)])
    assert confusion.count("tr") == 1 + 12 + 1  # header, 12 labels, "other"
    assert "150 labels: shown are the 12 in the most disagreements" in raw
    per_label = raw[raw.index("Per label, against the gold labels"):]
    assert Page(per_label[: per_label.index("</table>")]).count("tr") == 1 + 15
    assert len(raw) < 300_000


def test_focus_labels_keep_the_top_disagreements_inside():
    from ragicl.evaluation._html_data import focus_labels, top_pairs

    rng = np.random.default_rng(3)
    m = rng.integers(0, 3, (40, 40))
    m[5, 17] = m[30, 2] = 50
    shown = focus_labels(m, 12)
    assert len(shown) == 12 and {5, 17, 30, 2} <= set(shown) and shown == sorted(shown)
    assert top_pairs(m, 2) == [(5, 17, 50), (30, 2, 50)]
    assert focus_labels(m[:5, :5], 12) == list(range(5))


def test_from_json_needs_predictions_for_per_query_parts(tmp_path):
    report, test = synthetic_report(6, 150)
    back = Report.from_json(json.loads(json.dumps(report.to_json())))
    bare = render_html(back)
    assert "were not given" in bare and "<table class=confusion" not in bare
    preds = Predictions.for_test(test)
    for s in report.systems:
        preds = preds.with_system(s.name, s.probs, s.seconds)
    full = render_html(back, predictions=preds)
    assert "<table class=confusion" in full and "Per label, against the gold labels" in full
    assert full.count("class=whisker") == render_html(report, gold=preds.gold).count("class=whisker")
    wrong = Predictions.for_test(test.sample(20, seed=1))
    assert "are not this report's" in " ".join(Page(render_html(back, predictions=wrong)).text)


def test_tune_result_with_missing_keys_and_real_object():
    from ragicl.estimators.tune import Trial, TuneResult

    odd = ({}, {"params": {"k": 4}}, {"trials": [{"params": {"k": 2}}, {"accuracy": 0.5}]},
           {"params": "k=4", "trials": {"a": 1}, "skipped": 3, "baselines": [1], "dev_accuracy": "high"},
           {"trials": [{"accuracy": "<b>bold</b>", "log_loss": None, "params": ["k"]}]})
    for partial in odd:  # a result from another version of the tuner: what is there is shown, nothing breaks
        raw = render_html(synthetic_report(3, 30)[0], tune=partial)
        assert 'id="tuning"' in raw and Page(raw).count("b") == 0
    res = TuneResult({"k": 8, "knn_k": 8}, 0.8, 0.5, {"retrieved-8": 0.7}, 100, 12.0,
                     (Trial({"k": 8, "knn_k": 8}, 0.8, 0.5, 1.0), Trial({"k": 8, "knn_k": 32}, 0.75, 0.6, 1.0)))
    page = Page(render_html(synthetic_report(3, 30)[0], tune=res))
    assert page.count("tr", **{"class": "chosen"}) == 1 and "fig-tune" in page.ids()
    with pytest.raises(TypeError, match="TuneResult or its to_json"):
        render_html(synthetic_report(3, 30)[0], tune=[1, 2])


def test_markdown_variant_and_suffix_dispatch(tmp_path):
    report, _ = synthetic_report(4, 60)
    md = write_report_file(report, tmp_path / "r.md", tune=TUNE, curves=_curves(), gold=["x"])
    text = md.read_text(encoding="utf-8")
    assert text.startswith("# ragicl report: synthetic") and "| ragicl best |" in text
    assert "## How ragicl best was chosen" in text and "## gap vs data fraction" in text
    assert write_report_file(report, tmp_path / "r.HTML").read_text().startswith("<!DOCTYPE html>")
    with pytest.raises(ValueError, match=r"expected \.html .* or \.md"):
        write_report_file(report, tmp_path / "r.pdf")
    assert not (tmp_path / "r.pdf").exists()
    assert [report_format(p) for p in ("a.html", "b.HTM", "c.md", "d.markdown")] == ["html", "html", "md", "md"]
    with pytest.raises(ValueError, match="has suffix '\\(none\\)'"):
        report_format("report")
    (tmp_path / "dir.html").mkdir()
    with pytest.raises(IsADirectoryError, match="is a folder"):
        write_html_report(report, tmp_path / "dir.html")


def test_a_failed_write_keeps_the_previous_report(tmp_path, monkeypatch):
    report, _ = synthetic_report(3, 30)
    path = write_html_report(report, tmp_path / "r.html", title="first")
    import ragicl._atomic as atomic

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(atomic.os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        write_html_report(report, path, title="second")
    assert "<title>first</title>" in path.read_text() and [p.name for p in tmp_path.iterdir()] == ["r.html"]


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_report_files_follow_the_umask(tmp_path, umask):
    """Every file an evaluation writes for the user gets what a plain open()/mkdir() gives."""
    report, test = synthetic_report(3, 30)
    preds = Predictions.for_test(test).with_system("zero-shot", report.systems[0].probs, 1.0)
    previous = os.umask(umask)
    try:
        out = tmp_path / "runs"
        report.to_json(out / "report.json")
        save_predictions(out / "predictions.json", preds)
        write_html_report(report, out / "report.html")
        write_markdown_report(report, out / "report.md")
        md, js = write_report(out / "experiment", title="t", sections=[], machine={})
        with open(tmp_path / "plain", "w"):
            pass
        os.mkdir(tmp_path / "plain-dir")
    finally:
        os.umask(previous)
    plain_file = (tmp_path / "plain").stat().st_mode & 0o777
    plain_dir = (tmp_path / "plain-dir").stat().st_mode & 0o777
    assert plain_file == 0o666 & ~umask and plain_dir == 0o777 & ~umask
    written = [out / "report.json", out / "predictions.json", out / "report.html", out / "report.md", md, js]
    for path in written:
        assert path.stat().st_mode & 0o777 == plain_file, path
    for folder in (out, out / "experiment"):
        assert folder.stat().st_mode & 0o777 == plain_dir, folder


def test_real_trec_report_from_its_files(tmp_path):
    """The files of a real ``ragicl eval`` on TREC (tests/fixtures/report-trec/README.md) render with every
    part, and what the page shows agrees with the saved report."""
    report, preds, tune, curve, command = trec_fixture(tmp_path)
    raw = render_html(report, predictions=preds, tune=tune, curves={"gap vs shots k": curve}, command=command)
    page = Page(raw)
    _assert_safe(page, raw)
    assert {"fig-accuracy", "fig-tv", "fig-gap-closed", "fig-tune", "curves", "notes"} <= page.ids()
    best = next(g for g in report.gaps if g.system == "ragicl best")
    assert f"{round(best.agreement * report.n)} of {report.n} queries agree" in raw
    gold = np.array([report.labels.index(g) for g in preds.gold])
    for s in report.systems:  # the saved distributions are the report's systems
        assert np.mean(preds.probs[s.name].argmax(1) == gold) == pytest.approx(s.accuracy.estimate)
    assert page.count("tr", **{"class": "chosen"}) == 1
    assert f"Best 10 of {len(tune['trials'])} settings tried" in raw
    assert "(reference, not converged)" in raw and "150 steps, 1200 examples seen, not converged" in raw
    md = write_markdown_report(report, tmp_path / "report.md", tune=tune).read_text(encoding="utf-8")
    assert md.count(report.reference_training["note"]) == 1  # the table's footnote, not again in the notes
    assert "| ragicl best | 0.805 [0.755, 0.860] |" in md
