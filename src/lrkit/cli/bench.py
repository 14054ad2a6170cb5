"""``lrkit bench``: which learning-rate strategy, at which rate, trains this model best.

With no arguments it runs the quick suite on the built-in workloads into ``out/bench.sqlite``
and writes the report to ``out/bench/``. Runs already in the store are skipped, so the same
command resumes an interrupted sweep. Progress goes to stderr (a bar on a terminal, and one line
per finished run); the table of best rates goes to stdout.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import TYPE_CHECKING, Any, TextIO

from lrkit.cli import UsageError

if TYPE_CHECKING:
    from lrkit.bench.runner import RunEvent
    from lrkit.bench.sweep import SweepResult

__all__ = ["register", "run"]


def register(subparsers: Any) -> None:
    """Add the ``bench`` subcommand."""
    parser = subparsers.add_parser(
        "bench",
        help="sweep learning-rate strategies over workloads and report the best rates",
        description=(
            "Train every workload with every strategy at every learning rate of a grid and\n"
            "every seed, in parallel. Each run is stored as it finishes, so re-running the\n"
            "command skips stored runs; the grid grows past its edge while the best rate sits\n"
            "there; then the report is written."
        ),
        epilog=(
            "examples:\n"
            "  lrkit bench                      # the quick suite on the built-in workloads\n"
            "  lrkit bench --suite full --workers 16\n"
            "  lrkit bench --workload mypkg.mymod:make_workload \\\n"
            '      --strategies "adamw(schedule=\'cosine\')" "prodigy()" --lrs 1e-3 1e-2 1e-1'
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--suite",
        choices=("quick", "full", "all"),
        default="quick",
        help="what to run (default: quick)",
    )
    parser.add_argument(
        "--workload",
        dest="workloads",
        nargs="+",
        metavar="NAME",
        help="built-in workload names or module:function (replaces the suite's workloads)",
    )
    parser.add_argument(
        "--strategies", nargs="+", metavar="SPEC", help="strategy specs (quote each one)"
    )
    parser.add_argument(
        "--lrs", nargs="+", type=float, metavar="LR", help="learning-rate grid of rate strategies"
    )
    parser.add_argument(
        "--factors",
        nargs="+",
        type=float,
        metavar="F",
        help="factor grid of learning-rate-free strategies (default: 1.0)",
    )
    parser.add_argument("--seeds", nargs="+", type=int, metavar="SEED", help="e.g. --seeds 0 1 2")
    parser.add_argument(
        "--steps", type=int, metavar="N", help="updates per run (default: the suite's budget)"
    )
    parser.add_argument(
        "--max-extend",
        type=int,
        metavar="N",
        help="rates added at most past each edge of the grid (0: never grow it)",
    )
    parser.add_argument(
        "--workers", type=int, metavar="N", help="runs at once (default: the CPU cores)"
    )
    parser.add_argument(
        "--backend", choices=("local", "ray"), default="local", help="where runs execute"
    )
    parser.add_argument(
        "--ray-address",
        metavar="ADDR",
        help="Ray cluster with --backend ray (default: start a local one)",
    )
    parser.add_argument(
        "--store", default=None, metavar="PATH", help="results store (default: out/bench.sqlite)"
    )
    parser.add_argument(
        "--out", default=None, metavar="DIR", help="report folder (default: out/bench)"
    )
    parser.add_argument("--no-report", action="store_true", help="do not write the report")
    parser.add_argument(
        "--retry-failed", action="store_true", help="run again the runs stored as failed"
    )
    parser.add_argument(
        "--quiet", action="store_true", help="no progress, no line per run (errors still show)"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Build the suite from the options, run it, print the best rates."""
    from lrkit.bench.sweep import DEFAULT_OUT, DEFAULT_STORE, SUITES, run_bench

    if args.ray_address is not None and args.backend != "ray":
        raise UsageError("--ray-address needs --backend ray")
    changes: dict[str, Any] = {}
    for option, field in (
        ("workloads", "workloads"),
        ("strategies", "strategies"),
        ("lrs", "lrs"),
        ("factors", "factors"),
        ("seeds", "seeds"),
        ("steps", "steps"),
        ("max_extend", "max_extend"),
    ):
        value = getattr(args, option)
        if value is not None:
            changes[field] = value
    suite = SUITES[args.suite].replace(**changes)
    if os.getcwd() not in sys.path:  # a user workload module in the working folder
        sys.path.insert(0, os.getcwd())
    progress = None if args.quiet else _Progress(sys.stderr)
    try:
        result = run_bench(
            suite,
            store=args.store or DEFAULT_STORE,
            out=None if args.no_report else (args.out or DEFAULT_OUT),
            backend=args.backend,
            workers=args.workers,
            ray_address=args.ray_address,
            retry_failed=args.retry_failed,
            on_result=None if progress is None else progress.result,
            on_stage=None if progress is None else progress.stage,
        )
    except ImportError as exc:
        raise UsageError(str(exc)) from None
    finally:
        if progress is not None:
            progress.close()
    print(format_table(result.sweep))
    runs = sum(s.executed for s in result.sweep.stages)
    skipped = sum(s.skipped for s in result.sweep.stages)
    print(f"\nstore: {result.store} ({runs} runs executed, {skipped} already stored)")
    if result.report is not None:
        print(f"report: {result.report}")
    elif result.note is not None:
        print(result.note)
    return 0


def format_table(sweep: SweepResult) -> str:
    """One row per (workload, strategy): the best rate, its score and the runs behind it."""
    header = ["workload", "strategy", "best lr", "metric", "ok/div/fail", "note"]
    rows = []
    for g in sweep.groups:
        ok = sum(p.ok for p in g.points)
        div = sum(p.diverged for p in g.points)
        fail = sum(p.failed for p in g.points)
        notes = []
        if g.at_edge:
            notes.append("best at the grid's edge")
        if g.added:
            notes.append("grid grown: " + ", ".join(f"{lr:g}" for lr in g.added))
        direction = "max" if g.group.higher_is_better else "min"
        if g.best is None or g.best.score is None:
            best, score = "-", f"{g.group.metric} ({direction}): -"
        else:
            kind = "x" if g.group.lr_is_factor else ""
            best = f"{kind}{g.best.lr:g}"
            score = f"{g.group.metric} ({direction}): {g.best.score:.4g}"
        rows.append(
            [
                g.group.workload,
                g.group.strategy,
                best,
                score,
                f"{ok}/{div}/{fail}",
                "; ".join(notes),
            ]
        )
    widths = [
        max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)
    ]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    return "\n".join(lines)


class _Progress:
    """A bar on a terminal (runs done, ETA) and a line per finished run, on ``stream``."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.tty = stream.isatty()
        self.bar_shown = False
        self.stage_index = 0

    def stage(self, index: int, count: int) -> None:
        self.stage_index = index
        what = "the grid" if index == 0 else "rates past the grid's edge"
        self._line(f"stage {index}: {count} runs ({what}); stored ones are skipped")

    def result(self, event: RunEvent) -> None:
        r = event.result
        c = event.config
        lr = "default" if c.lr is None else f"{c.lr:g}"
        if r.status == "ok":
            detail = " ".join(f"{k}={v:.4g}" for k, v in r.final.items() if k != "train_loss")
        else:
            detail = (r.error or "").splitlines()[0] if r.error else ""
        eta = _eta(event)
        head = f"[{event.done}/{event.total}{'' if self.tty else f' eta {eta}'}]"
        self._line(
            f"{head} {r.status:<8} {c.workload} {c.strategy} lr={lr} seed={c.seed} "
            f"{r.wall_time:.1f}s {detail}".rstrip()
        )
        if self.tty:
            self._bar(event.done, event.total, eta)

    def _line(self, text: str) -> None:
        if self.bar_shown:
            self.stream.write("\r\x1b[K")
            self.bar_shown = False
        self.stream.write(text + "\n")
        self.stream.flush()

    def _bar(self, done: int, total: int, eta: str) -> None:
        width = 30
        filled = round(width * done / total) if total else width
        bar = "#" * filled + "-" * (width - filled)
        self.stream.write(f"\r[{bar}] {done}/{total} runs, stage {self.stage_index}, ETA {eta}")
        self.stream.flush()
        self.bar_shown = True

    def close(self) -> None:
        if self.bar_shown:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
            self.bar_shown = False


def _eta(event: RunEvent) -> str:
    if event.done >= event.total:
        return "0s"
    seconds = event.elapsed / event.done * (event.total - event.done)
    return _duration(seconds)


def _duration(seconds: float) -> str:
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"
