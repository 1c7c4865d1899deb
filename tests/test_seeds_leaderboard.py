"""One sweep through lmms-eval with every method and two seeds, then its reports.

The trained toy LMM runs zero-shot, ICL, and on one budget MTV, random heads, all heads and
function vectors (short head search), each built with seeds 0 and 1. The figures of the reports (mean and
standard deviation over seeds, paired differences) are recomputed here from lmms-eval's
sample files; the leaderboard of two models is checked in every format, the HTML page by
parsing it (and in a headless browser when one is installed).
"""

from __future__ import annotations

import base64
import csv
import io
import json
import shutil
import statistics
import subprocess
from contextlib import redirect_stderr, redirect_stdout
from html.parser import HTMLParser
from pathlib import Path

import pytest

from mtv_eval.cli import main
from mtv_eval.reporting.plots import METHOD_STYLE, plot_collection
from mtv_eval.reporting.results import collect
from mtv_eval.reporting.stats import paired_difference

TASK = "toy_single_colour"
FAST = "search_steps=8,search_samples=4,search_examples=8,fv_heads=3"
METHODS = ("mtv", "random", "all", "fv")
SEEDS = (0, 1)
LIMIT = 24
LAYERS, HEADS = 6, 8  # the toy LMM's decoder


def _run(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("seeds") / "run"
    code, stdout, stderr = _run(
        [
            "sweep",
            "--model",
            "hf_mtv",
            "--model-args",
            f"pretrained=mtv-eval/toy,{FAST}",
            "--tasks",
            TASK,
            "--mtv-budgets",
            "2x4",
            "--methods",
            ",".join(METHODS),
            "--seeds",
            ",".join(map(str, SEEDS)),
            "--limit",
            str(LIMIT),
            "--batch-size",
            "24",
            "--out",
            str(out),
        ]
    )
    assert code == 0, stdout + stderr
    assert f"{3 + len(METHODS) * len(SEEDS)} done, 0 skipped, 0 failed" in stdout  # zero, icl-1, icl-2
    return out


def _samples(cell: Path) -> list[float]:
    rows = [json.loads(line) for line in next(cell.glob(f"*/*_samples_{TASK}.jsonl")).read_text().splitlines()]
    return [float(r["vqa_accuracy"]) for r in sorted(rows, key=lambda r: r["doc_id"])]


def _record(cell: Path) -> dict:
    return json.loads((cell / "logs" / f"mtv_{TASK}.json").read_text())


def test_every_method_is_built_once_per_seed_on_the_same_budget(run_dir: Path) -> None:
    for kind in METHODS:
        for seed in SEEDS:
            cell = run_dir / TASK / f"{kind}-2x4@seed{seed}"
            manifest = json.loads((cell / "cell.json").read_text())
            assert manifest["status"] == "done" and manifest["replicate_seed"] == seed
            assert manifest["method"] == f"{kind}-2x4" and f"seed={seed}" in manifest["model_args"]
            record = _record(cell)
            assert record["method"] == kind and record["config"]["extract"] == {
                "shots": 2,
                "iterations": 4,
                "batch_size": 8,
                "seed": seed,
            }
    for seed in SEEDS:
        mtv, rand = _record(run_dir / TASK / f"mtv-2x4@seed{seed}"), _record(run_dir / TASK / f"random-2x4@seed{seed}")
        assert rand["selected_heads"] == mtv["selected_heads"]
        assert _record(run_dir / TASK / f"all-2x4@seed{seed}")["selected_heads"] == LAYERS * HEADS
        assert _record(run_dir / TASK / f"fv-2x4@seed{seed}")["selected_heads"] == 3
    from mtv_eval.methods.artifact import MTV

    fv = MTV.load(_record(run_dir / TASK / "fv-2x4@seed0")["path"])
    assert fv.metadata["method"] == "fv" and fv.metadata["fv_layer"] == LAYERS // 3
    # the seed reaches the build: two seeds, two different MTVs
    assert (
        _record(run_dir / TASK / "mtv-2x4@seed0")["content_hash"]
        != _record(run_dir / TASK / "mtv-2x4@seed1")["content_hash"]
    )
    # zero-shot and ICL run once, with the sweep's seed
    assert (run_dir / TASK / "zero" / "cell.json").is_file() and not list((run_dir / TASK).glob("zero@seed*"))


def test_reports_give_mean_and_sd_over_seeds_and_paired_differences(run_dir: Path) -> None:
    code, text, _ = _run(["compare", str(run_dir), "--format", "json", "--pair", "mtv-2x4,fv-2x4"])
    assert code == 0
    document = json.loads(text)
    assert document["version"] == 2
    icl = _samples(run_dir / TASK / "icl-2")
    (context,) = [r for r in document["context"] if r["limit_source"] == "model"]
    entries = {m["method"]: m for m in context["mtv"]}
    assert set(entries) == {f"{k}-2x4" for k in METHODS}
    best = context["best_icl"]
    best_scores = _samples(run_dir / TASK / best)
    for kind in METHODS:
        per_seed = [_samples(run_dir / TASK / f"{kind}-2x4@seed{s}") for s in SEEDS]
        accuracies = [sum(s) / len(s) for s in per_seed]
        entry = entries[f"{kind}-2x4"]
        assert entry["seeds"] == 2 and entry["kind"] == kind
        assert entry["accuracy"] == pytest.approx(statistics.mean(accuracies))
        assert entry["accuracy_std"] == pytest.approx(statistics.stdev(accuracies))
        diff = entry["vs_best_icl"]
        per_item = [sum(v) / len(v) for v in zip(*per_seed)]
        assert diff["difference"] == pytest.approx(sum(per_item) / LIMIT - sum(best_scores) / LIMIT)
        assert diff["low"] <= diff["difference"] + 1e-12 <= diff["high"] + 2e-12 and diff["items"] == LIMIT
    asked = [c for c in document["comparisons"] if c["why"] == "asked for"]
    assert [(c["a"], c["b"]) for c in asked] == [("mtv-2x4", "fv-2x4")]
    expected = paired_difference(
        [dict(enumerate(_samples(run_dir / TASK / f"mtv-2x4@seed{s}"))) for s in SEEDS],
        [dict(enumerate(_samples(run_dir / TASK / f"fv-2x4@seed{s}"))) for s in SEEDS],
    )
    assert asked[0]["paired"]["difference"] == pytest.approx(expected.difference)
    assert len(icl) == LIMIT

    code, table, _ = _run(["compare", str(run_dir)])
    rows = [line for line in table.splitlines() if line.startswith("|") and "mtv-2x4" in line.split("|")[3]]
    per_seed = [_samples(run_dir / TASK / f"mtv-2x4@seed{s}") for s in SEEDS]
    accuracies = [sum(s) / len(s) for s in per_seed]
    assert any(
        f"{100 * statistics.mean(accuracies):.1f} ± {100 * statistics.stdev(accuracies):.1f} (2 seeds)" in row
        for row in rows
    )
    assert "Paired differences" in table and "mtv-2x4 (2 seeds) vs " in table
    mtv_vs_icl = entries["mtv-2x4"]["vs_best_icl"]
    assert mtv_vs_icl["high"] > mtv_vs_icl["low"] and mtv_vs_icl["test"] == "bootstrap over seeds and items"

    code, report, _ = _run(["check", "--baseline", str(run_dir), "--current", str(run_dir), "--tolerance", "1se"])
    assert code == 0, report
    from mtv_eval.data.taskspec import spec_for_task

    version = spec_for_task(TASK).version
    assert "ok toy/model" not in report and f"{TASK} v{version} mtv-2x4 (2 seeds): baseline" in report


def test_plot_gives_each_method_its_colour_and_draws_the_seed_spread(run_dir: Path, tmp_path: Path) -> None:
    drawn = plot_collection(collect([run_dir]), tmp_path / "plot.png")
    left = drawn["axes"][0]
    lines = {line["label"].split(" ", 1)[1]: line for line in left["lines"]}
    for kind in ("icl", *METHODS):
        colour, name = METHOD_STYLE[kind]
        assert lines[name]["color"] == colour
    assert len({METHOD_STYLE[k][0] for k in ("zero", "icl", *METHODS)}) == 6  # one colour per method
    spreads = {s["label"].split(" ", 1)[1]: s for s in left["spreads"]}
    assert set(spreads) == {METHOD_STYLE[k][1] for k in METHODS}
    cells = [c for c in collect([run_dir]).cells if c.method == "mtv-2x4"]
    mean, sd = statistics.mean(c.accuracy for c in cells), statistics.stdev(c.accuracy for c in cells)
    assert spreads["MTV"]["low"] == pytest.approx([100 * (mean - sd)])
    assert spreads["MTV"]["high"] == pytest.approx([100 * (mean + sd)])
    assert left["legend_title"].startswith("ICL: K shots in the prompt")
    assert {"MTV", "random heads", "all heads", "FV", "ICL", "zero-shot"} <= {
        t.split(" ", 1)[1] for t in left["legend"]
    }


class _Page(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tables: list[list[list[str]]] = []
        self.images: list[str] = []
        self.external: list[str] = []
        self.scripts = 0
        self._cell: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self._cell = []
        elif tag == "img":
            self.images.append(attrs.get("src", ""))
        elif tag == "script":
            self.scripts += 1
        for name in ("src", "href"):
            value = attrs.get(name) or ""
            if value and not value.startswith("data:"):
                self.external.append(value)

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self.tables[-1][-1].append("".join(self._cell).strip())
            self._cell = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


@pytest.fixture(scope="module")
def two_models(run_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """The run, and a copy whose results name another model (a second leaderboard row)."""
    other = tmp_path_factory.mktemp("other") / "run"
    shutil.copytree(run_dir, other)
    for results in other.rglob("*_results.json"):
        data = json.loads(results.read_text())
        data["model_name"] = "org/other-model"
        results.write_text(json.dumps(data))
    return [run_dir, other]


def test_leaderboard_has_one_row_per_model_in_every_format(two_models: list[Path], tmp_path: Path) -> None:
    code, text, _ = _run(["compare", *map(str, two_models), "--leaderboard", "--format", "json"])
    assert code == 0
    board = json.loads(text)
    assert board["format"] == "mtv-eval-leaderboard" and board["tasks"] == [TASK]
    assert [r["model"] for r in board["rows"]] == ["mtv-eval/toy", "org/other-model"]
    collection = collect([two_models[0]])
    for row in board["rows"]:
        entry = row["tasks"][TASK]
        zero = next(c for c in collection.cells if c.method == "zero")
        assert entry["zero"] == pytest.approx(zero.accuracy)
        assert entry["method"] == "mtv-2x4" and entry["seeds"] == 2
        mtv = [c.accuracy for c in collection.cells if c.method == "mtv-2x4"]
        assert entry["accuracy"] == pytest.approx(statistics.mean(mtv))
        assert entry["accuracy_std"] == pytest.approx(statistics.stdev(mtv))
        gain = entry["gain"]
        best = next(c for c in collection.cells if c.method == entry["best_icl"])
        assert gain["difference"] == pytest.approx(statistics.mean(mtv) - best.accuracy)
        assert gain["low"] <= gain["difference"] <= gain["high"]

    code, text, _ = _run(["compare", *map(str, two_models), "--leaderboard", "--format", "csv"])
    rows = list(csv.DictReader(io.StringIO(text)))
    assert len(rows) == 2 and float(rows[0][f"{TASK}:accuracy"]) == pytest.approx(
        board["rows"][0]["tasks"][TASK]["accuracy"]
    )
    code, text, _ = _run(["compare", *map(str, two_models), "--leaderboard"])
    body = [line for line in text.splitlines() if line.startswith("|") and "---" not in line]
    assert len(body) == 3 and f"{TASK} gain [95% CI]" in body[0]
    assert "org/other-model" in body[1] + body[2] and "(mtv-2x4, 2 seeds)" in text


def test_leaderboard_html_is_one_self_contained_page(two_models: list[Path], tmp_path: Path) -> None:
    page = tmp_path / "board.html"
    code, _, err = _run(["compare", *map(str, two_models), "--leaderboard", "--format", "html", "--output", str(page)])
    assert code == 0 and f"wrote {page}" in err
    parser = _Page()
    parser.feed(page.read_text())
    assert parser.scripts == 0 and parser.external == []  # nothing to fetch
    board = parser.tables[0]
    assert board[0][0] == "model" and f"{TASK} gain [95% CI]" in board[0]
    names = sorted(row[0] for row in board[1:])
    assert len(board) == 3 and "org/other-model" in names  # header + one row per model
    assert len(parser.tables) >= 3  # leaderboard, main table, context limits, ...
    (image,) = parser.images
    assert image.startswith("data:image/png;base64,")
    png = base64.b64decode(image.split(",", 1)[1])
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    from PIL import Image

    with Image.open(io.BytesIO(png)) as decoded:
        assert decoded.size[0] >= 600
    browser = next(
        (shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None
    )
    if browser:  # also load it in a real browser when one is installed (.ci/run installs chromium)
        _check_in_browser(browser, page, tmp_path)


def _check_in_browser(browser: str, page: Path, tmp_path: Path) -> None:
    """Headless chromium parses the page (its DOM holds the rows) and paints it: the screenshot
    holds the plot's coloured lines, which only a decoded inline PNG can put there (the page's own
    text and borders are grey)."""
    flags = [
        "--headless",
        "--disable-gpu",
        "--no-sandbox",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
    ]

    def run(*args: str) -> str:
        done = subprocess.run([browser, *flags, *args, page.as_uri()], capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, f"{browser} {' '.join(args)} failed: {done.stderr[-2000:]}"
        return done.stdout

    dom = run("--dump-dom")
    assert "org/other-model" in dom and "data:image/png;base64," in dom
    shot = tmp_path / "board.png"
    run(f"--screenshot={shot}", "--window-size=1600,4000")
    import numpy as np
    from PIL import Image

    with Image.open(shot) as rendered:
        rgb = np.asarray(rendered.convert("RGB")).astype(int)
    coloured = int((rgb.max(axis=-1) - rgb.min(axis=-1) > 80).sum())
    assert coloured > 100, f"the browser painted {coloured} coloured pixels: the plot did not render"
