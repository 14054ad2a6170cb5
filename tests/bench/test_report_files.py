import hashlib
import os
import re
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from lrkit.bench.config import RunConfig, RunResult
from lrkit.bench.report import PAGE, build_report, write_report
from lrkit.bench.report.analysis import analyze
from lrkit.bench.report.plots import PALETTE, strategy_colors
from lrkit.bench.store import Store
from lrkit.errors import StateError

pytest.importorskip("matplotlib")

ADAMW = "adamw(schedule='cosine', warmup=0.05)"
SGD = "sgd(momentum=0.9)"
PRODIGY = "prodigy()"
PNG = b"\x89PNG\r\n\x1a\n"


def _result(accs, *, status="ok", metric="accuracy", wall=1.0, error=None):
    curve = [
        {"step": 10.0 * (i + 1), "train_loss": 2.0 / (i + 1), "lr": 0.1, metric: a}
        for i, a in enumerate(accs)
    ]
    final = {"train_loss": 2.0 / len(accs), metric: accs[-1]} if status == "ok" else {}
    return RunResult(status, final, curve, wall, 10 * len(accs), error)


def _store(path, runs):
    with Store(path) as store:
        for (workload, strategy, lr, seed), result in runs:
            store.add(RunConfig(workload, strategy, lr, seed=seed, steps=30), result)
    return str(path)


def _typical(path):
    """digits_mlp: a U over rates, a diverged top rate, a failed run, Prodigy at 3 factors."""
    runs = []
    for seed in (0, 1):
        for lr, accs in (
            (0.001, [0.3, 0.5, 0.6]),
            (0.01, [0.6, 0.8, 0.9]),
            (0.1, [0.7, 0.85, 0.95]),
        ):
            runs.append((("digits_mlp", ADAMW, lr, seed), _result([a - 0.02 * seed for a in accs])))
            runs.append((("digits_mlp", SGD, lr, seed), _result([a - 0.1 for a in accs])))
        runs.append(
            (("digits_mlp", ADAMW, 1.0, seed), _result([0.2], status="diverged", error="nan"))
        )
        runs.extend(
            (("digits_mlp", PRODIGY, f, seed), _result([0.5, 0.8, 0.9 - f / 10]))
            for f in (0.3, 1.0, 3.0)
        )
    runs.append(
        (("digits_mlp", SGD, 1.0, 0), _result([], status="failed", error="RuntimeError: x"))
    )
    # logreg: lower is better, spans decades (log axes), one strategy only
    curves = {0.01: [0.5, 0.1, 0.05], 0.1: [0.2, 0.01, 0.001], 1.0: [0.3, 0.2, 0.1]}
    runs.extend(
        (("logreg", SGD, lr, 0), _result(c, metric="suboptimality")) for lr, c in curves.items()
    )
    return _store(path, runs)


@pytest.fixture(scope="module")
def typical(tmp_path_factory):
    """The typical store, written once for the tests that only read it."""
    return _typical(tmp_path_factory.mktemp("typical") / "bench.sqlite")


@pytest.fixture(scope="module")
def page(typical, tmp_path_factory):
    """The typical store's report folder."""
    out = tmp_path_factory.mktemp("report")
    assert write_report(typical, out) == str(out / PAGE)  # the call lrkit bench makes
    return out


def _pngs(folder):
    return sorted(f for f in os.listdir(folder) if f.endswith(".png"))


def test_write_report_writes_pngs_and_a_page_that_embeds_them(page):
    out = page
    assert _pngs(out) == [
        "digits_mlp-30-curves.png",
        "digits_mlp-30-sensitivity.png",
        "logreg-30-curves.png",
        "logreg-30-sensitivity.png",
    ]
    for name in _pngs(out):
        data = (out / name).read_bytes()
        assert data.startswith(PNG)
        assert len(data) > 10_000
    text = (out / PAGE).read_text(encoding="utf-8")
    assert text.count('<img src="data:image/png;base64,') == 4
    assert 'href="digits_mlp-30-sensitivity.png"' in text
    assert "digits_mlp — accuracy (higher is better) · 30 updates per run" in text
    assert "logreg — suboptimality (lower is better) · 30 updates per run" in text
    # the best-tuned table: adamw at 0.1, mean of 0.95 and 0.93, 7 runs, 2 diverged
    assert re.search(r"adamw\(schedule=&#x27;cosine&#x27;.*?<td>0\.94 ± 0\.014</td>", text)
    assert "every run failed" not in text
    assert "min–max" in text
    # the overview: adamw and prodigy ran on digits_mlp only, sgd is the only one on logreg
    assert text.count('<td class="note">not run</td>') == 2
    assert "<td><b>0.001 <span class='note'>#1</span></b></td>" in text


def test_the_page_loads_nothing_from_elsewhere(page):
    text = (page / PAGE).read_text(encoding="utf-8")
    assert "default-src 'none'" in text
    assert "<script" not in text.lower()
    assert "<link" not in text.lower()
    assert "http://" not in text
    assert "https://" not in text
    assert all(
        src.startswith("data:image/png;base64,") for src in re.findall(r'src="([^"]*)"', text)
    )


def test_every_string_from_the_store_is_escaped(tmp_path):
    workload = '<script>alert("w")</script> $x'
    strategy = "<img src=x onerror=alert(1)>"
    metric = "<b>acc</b>$"
    path = tmp_path / "a<b>.sqlite"
    runs = [
        ((workload, strategy, 0.1, 0), _result([0.5, 0.7], metric=metric)),
        ((workload, strategy, 1.0, 0), _result([0.5], status="failed", error="</details><i>e</i>")),
    ]
    store = _store(path, runs)
    conn = sqlite3.connect(store)
    conn.execute("UPDATE meta SET value = '<u>9</u>' WHERE name = 'lrkit_version'")
    conn.commit()
    conn.close()
    out = tmp_path / "out"
    written = build_report(store, out)
    text = Path(written.page).read_text(encoding="utf-8")
    for raw in (workload, strategy, metric, "</details><i>e</i>", "<u>9</u>", "a<b>.sqlite"):
        assert raw not in text
    assert "&lt;script&gt;alert(&quot;w&quot;)&lt;/script&gt; $x" in text
    assert "&lt;img src=x onerror=alert(1)&gt;" in text
    assert "&lt;b&gt;acc&lt;/b&gt;$" in text
    assert "&lt;/details&gt;&lt;i&gt;e&lt;/i&gt;" in text
    assert "lrkit &lt;u&gt;9&lt;/u&gt;" in text
    assert "a&lt;b&gt;.sqlite" in text
    # the figure files are named safely, inside the report folder
    assert len(written.figures) == 2
    for name in written.figures:
        assert os.path.dirname(name) == str(out)
        assert re.fullmatch(
            r"[A-Za-z0-9_.-]+-[0-9a-f]{6}-30-(sensitivity|curves)\.png", os.path.basename(name)
        )


def test_a_workload_name_cannot_write_outside_the_report_folder(tmp_path):
    store = _store(tmp_path / "s.sqlite", [(("../../x/evil:make", SGD, 0.1, 0), _result([0.5]))])
    out = tmp_path / "deep" / "out"
    written = build_report(store, out)
    after = os.listdir(tmp_path)
    after.remove("deep")
    _sidecars_only(tmp_path, ["s.sqlite"], after, "s.sqlite")
    assert sorted(os.listdir(out)) == sorted(
        [PAGE, *(os.path.basename(f) for f in written.figures)]
    )


def _sidecars_only(folder, before, after, store):
    """Reading a WAL database leaves SQLite's empty -wal and its -shm index beside it."""
    new = set(after) - set(before)
    assert new <= {f"{store}-wal", f"{store}-shm"}
    if f"{store}-wal" in new:
        assert (folder / f"{store}-wal").stat().st_size == 0


def test_the_store_is_not_modified(tmp_path):
    store = _store(tmp_path / "bench.sqlite", [(("digits_mlp", SGD, 0.1, 0), _result([0.5]))])
    before = hashlib.sha256(Path(store).read_bytes()).hexdigest()
    listing = os.listdir(tmp_path)
    mtime = os.stat(store).st_mtime_ns
    write_report(store, tmp_path / "r")
    assert hashlib.sha256(Path(store).read_bytes()).hexdigest() == before
    assert os.stat(store).st_mtime_ns == mtime
    after = os.listdir(tmp_path)
    assert "r" in after
    after.remove("r")
    _sidecars_only(tmp_path, listing, after, "bench.sqlite")


def test_an_empty_store_gives_a_page_that_says_so_and_no_figure(tmp_path):
    Store(tmp_path / "empty.sqlite").close()
    written = build_report(tmp_path / "empty.sqlite", tmp_path / "out")
    assert written.runs == 0
    assert written.figures == ()
    text = Path(written.page).read_text(encoding="utf-8")
    assert "holds no runs: there is nothing to report yet" in text
    assert _pngs(tmp_path / "out") == []


def test_a_store_with_only_failed_runs_has_tables_and_errors_but_no_figure(tmp_path):
    store = _store(
        tmp_path / "s.sqlite",
        [
            (("digits_mlp", SGD, lr, 0), _result([], status="failed", error=f"E{lr}"))
            for lr in (0.1, 1.0)
        ],
    )
    written = build_report(store, tmp_path / "out")
    assert written.figures == ()
    text = Path(written.page).read_text(encoding="utf-8")
    assert "every run failed" in text
    assert "No figure: no run of this workload ended ok" in text
    assert "<details open>" in text
    assert "E0.1" in text
    assert "E1.0" in text


@pytest.mark.parametrize(
    "runs",
    [
        pytest.param([(("digits_mlp", SGD, 0.1, 0), _result([0.5, 0.6]))], id="one-run"),
        pytest.param(
            [(("digits_mlp", PRODIGY, 1.0, s), _result([0.5, 0.6 + s / 100])) for s in (0, 1)],
            id="lr-free-only",
        ),
        pytest.param(
            [(("digits_mlp", SGD, lr, 0), _result([0.5, 0.9 - lr])) for lr in (0.1, 0.12)],
            id="rates-within-a-decade",
        ),
        pytest.param(
            [(("digits_mlp", SGD, 0.1, 0), _result([0.5]))]
            + [(("digits_mlp", ADAMW, 0.1, s), _result([0.4], status="diverged")) for s in (0, 1)],
            id="a-strategy-that-always-diverged",
        ),
        pytest.param(
            [(("logreg", SGD, 0.1, 0), _result([0.5, 0.5, 0.5], metric="suboptimality"))],
            id="flat-curve",
        ),
    ],
)
def test_edge_cases_still_draw_both_figures(tmp_path, runs):
    written = build_report(_store(tmp_path / "s.sqlite", runs), tmp_path / "out", dpi=40)
    assert [os.path.basename(f).rsplit("-", 1)[1] for f in written.figures] == [
        "sensitivity.png",
        "curves.png",
    ]
    for name in written.figures:
        assert Path(name).read_bytes().startswith(PNG)


@pytest.fixture(scope="module")
def figures(typical):
    """The digits section of the typical store, its colors and its two figures."""
    from lrkit.bench.report import plots
    from lrkit.bench.report.analysis import read_store

    runs, _ = read_store(typical)
    report = analyze(runs)
    colors = strategy_colors(report.strategies)
    digits = report.sections[0]
    return digits, colors, plots.plot_sensitivity(digits, colors), plots.plot_curves(digits, colors)


def test_strategy_colors_are_fixed_by_sorted_name_and_cycle_after_the_palette():
    colors = strategy_colors(["sgd()", "adamw()", "sgd()"])
    assert colors == {"adamw()": PALETTE[0], "sgd()": PALETTE[1]}
    many = strategy_colors([f"s{i:02d}" for i in range(len(PALETTE) + 1)])
    assert many["s00"] == many[f"s{len(PALETTE):02d}"] == PALETTE[0]


def _lines(fig):
    return [line for ax in fig.axes for line in ax.get_lines()]


def test_diverged_and_failed_rates_are_drawn_at_the_bad_edge(figures):
    from matplotlib.colors import to_hex

    _, colors, sensitivity, _ = figures
    crosses = [line for line in _lines(sensitivity) if line.get_marker() == "x"]
    squares = [line for line in _lines(sensitivity) if line.get_marker() == "s"]
    assert [(list(c.get_xdata()), to_hex(c.get_color())) for c in crosses] == [
        ([1.0], colors[ADAMW])
    ]
    assert [(list(s.get_xdata()), to_hex(s.get_markeredgecolor())) for s in squares] == [
        ([1.0], colors[SGD])
    ]
    # accuracy: higher is better, so the bad edge is the bottom of the axes (axes fraction)
    assert all(0.0 < line.get_ydata()[0] < 0.1 for line in crosses + squares)


def test_learning_rate_free_strategies_get_their_own_factor_panel(figures):
    sensitivity = figures[2]
    rate_ax, factor_ax = sensitivity.axes
    assert factor_ax.get_title() == "learning-rate-free"
    assert [t.get_text() for t in factor_ax.get_xticklabels()] == ["0.3", "1", "3"]
    factor_lines = [line for line in factor_ax.get_lines() if line.get_marker() == "o"]
    assert [list(line.get_xdata()) for line in factor_lines] == [[0.3, 1.0, 3.0]]
    assert factor_lines[0].get_linestyle() == "--"
    assert rate_ax.get_xscale() == "log"


def test_each_strategy_has_the_same_color_in_every_figure(figures):
    from matplotlib.colors import to_hex

    section, colors, sensitivity, curves = figures
    for fig in (sensitivity, curves):
        drawn = {to_hex(line.get_color()) for line in _lines(fig)}
        assert {colors[s.strategy] for s in section.strategies} <= drawn
    assert len(set(colors.values())) == len(colors)


def test_the_sensitivity_line_is_the_mean_over_seeds_with_a_star_at_the_best_rate(figures):
    from matplotlib.colors import to_hex

    _, colors, sensitivity, _ = figures
    adamw = [
        line
        for line in sensitivity.axes[0].get_lines()
        if to_hex(line.get_color()) == colors[ADAMW] and line.get_marker() in ("o", "*")
    ]
    means, star = adamw
    assert list(means.get_xdata()) == [0.001, 0.01, 0.1]
    assert list(means.get_ydata()) == pytest.approx([0.59, 0.89, 0.94])
    assert (list(star.get_xdata()), list(star.get_ydata())) == ([0.1], [pytest.approx(0.94)])


def test_figure_titles_name_the_workload_and_metric(figures):
    _, _, sensitivity, curves = figures
    assert sensitivity.get_suptitle() == (
        "digits_mlp: final accuracy vs learning rate, 30 updates per run"
    )
    assert curves.get_suptitle() == "digits_mlp: each strategy at its best rate, 30 updates per run"
    assert sensitivity.axes[0].get_ylabel() == "final accuracy (higher is better)"
    assert curves.axes[0].get_xlabel() == "step (updates applied)"


def test_the_log_metric_axis_is_used_when_values_span_decades(typical):
    from lrkit.bench.report import plots
    from lrkit.bench.report.analysis import read_store

    runs, _ = read_store(typical)
    report = analyze(runs)
    logreg = report.sections[1]
    colors = strategy_colors(report.strategies)
    assert plots.plot_sensitivity(logreg, colors).axes[0].get_yscale() == "log"
    assert plots.plot_curves(logreg, colors).axes[0].get_yscale() == "log"
    digits = report.sections[0]
    assert plots.plot_sensitivity(digits, colors).axes[0].get_yscale() == "linear"


def test_figures_refuse_sections_without_data(tmp_path):
    from lrkit.bench.report import plots

    runs = [(("digits_mlp", SGD, 0.1, 0), _result([], status="failed"))]
    from lrkit.bench.report.analysis import read_store

    stored, _ = read_store(_store(tmp_path / "s.sqlite", runs))
    (section,) = analyze(stored).sections
    with pytest.raises(ValueError, match="no run that ended ok"):
        plots.plot_sensitivity(section, {SGD: "#000000"})
    with pytest.raises(ValueError, match="no best rate with a curve"):
        plots.plot_curves(section, {SGD: "#000000"})


# -- refusals -----------------------------------------------------------------------------------


def test_a_missing_store_is_refused_and_nothing_is_created(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        write_report(tmp_path / "none.sqlite", tmp_path / "out")
    assert os.listdir(tmp_path) == []


def test_a_store_of_another_format_version_is_refused(tmp_path):
    store = _typical(tmp_path / "s.sqlite")
    conn = sqlite3.connect(store)
    conn.execute("UPDATE meta SET value = '99' WHERE name = 'format_version'")
    conn.commit()
    conn.close()
    with pytest.raises(StateError, match="format version 99"):
        write_report(store, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_an_unwritable_report_folder_is_refused_before_anything_is_written(tmp_path, typical):
    store = typical
    (tmp_path / "file").write_text("x")
    with pytest.raises(OSError, match=r"report folder .*file.* is a file, not a folder"):
        write_report(store, tmp_path / "file")
    with pytest.raises(OSError, match=r"report folder .*sub.* is not writable"):
        write_report(store, tmp_path / "file" / "sub")
    assert (tmp_path / "file").read_text() == "x"
    assert os.listdir(tmp_path) == ["file"]


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"dpi": 0}, ValueError, "dpi must be an int >= 1, got 0"),
        ({"tolerance": 1.5}, ValueError, r"tolerance must be in \[0, 1\)"),
        ({"targets": {"digits_mlp": "x"}}, TypeError, "targets"),
    ],
)
def test_bad_arguments_are_refused_by_name(tmp_path, typical, kwargs, error, match):
    store = typical
    with pytest.raises(error, match=match):
        write_report(store, tmp_path / "out", **kwargs)
    with pytest.raises(TypeError, match="out must be a str or path-like, got int"):
        write_report(store, 3)


def test_lrkit_bench_writes_the_report_after_its_sweep(tmp_path):
    from lrkit.bench.sweep import Suite, run_bench

    suite = Suite("t", ("logreg",), ("sgd()",), lrs=(0.01, 0.1), seeds=(0,), steps=20, max_extend=0)
    result = run_bench(
        suite,
        store=tmp_path / "b.sqlite",
        out=tmp_path / "out",
        executor=_fake_train,
        backend="inline",
    )
    assert result.report == str(tmp_path / "out" / PAGE)
    assert "logreg — suboptimality (lower is better) · 20 updates per run" in Path(
        result.report
    ).read_text(encoding="utf-8")


def _fake_train(config):
    value = abs(config.lr - 0.05)
    return _result([1.0, value], metric="suboptimality")


def test_importing_the_report_loads_no_matplotlib():
    code = "import sys, lrkit.bench.report; print('matplotlib' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_learning_rate_free_strategies_at_one_factor_are_dodged_apart(tmp_path):
    from lrkit.bench.report import plots
    from lrkit.bench.report.analysis import read_store

    runs = [(("digits_mlp", SGD, 0.1, seed), _result([0.5, 0.9])) for seed in (0, 1)] + [
        (("digits_mlp", spec, 1.0, seed), _result([0.5, acc]))
        for spec, acc in (("prodigy()", 0.95), ("dog()", 0.96))
        for seed in (0, 1)
    ]
    report = analyze(read_store(_store(tmp_path / "s.sqlite", runs))[0])
    section = report.sections[0]
    fig = plots.plot_sensitivity(section, strategy_colors(report.strategies))
    factor_ax = fig.axes[1]
    xs = sorted(line.get_xdata()[0] for line in factor_ax.get_lines() if line.get_marker() == "o")
    assert xs == pytest.approx([plots._DODGE**-0.5, plots._DODGE**0.5])  # around 1, apart
    assert [t.get_text() for t in factor_ax.get_xticklabels()] == ["1"]  # ticks stay true
    assert len(factor_ax.collections) >= 2  # each single point shows its seeds' range
