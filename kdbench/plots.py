"""Accuracy-vs-cost plots of a leaderboard: PNG and SVG, byte-stable, with a digest of their data inside.

Each plot carries ``kdbench-plot-data sha256:<digest>`` in its metadata (SVG
``dc:description``, PNG ``Description`` text chunk): the digest of exactly the
data it draws. ``kdbench leaderboard --check`` compares that digest with the
data rendered now, so the check does not depend on the matplotlib version's
exact bytes. Figures are built on ``matplotlib.figure.Figure`` with the Agg
canvas, never through pyplot, and matplotlib's settings are only changed inside
a style context, so nothing leaks into the caller's matplotlib state.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kdbench.files import atomic_write_bytes

__all__ = [
    "FORMATS",
    "PLOT_KINDS",
    "AccuracyPlot",
    "PlotPoint",
    "plot_stem",
    "read_plot_digest",
    "render_plot",
    "stale_plot_files",
    "write_plots",
]

#: Bump when the look of the plots changes, so that ``--check`` reports committed plots as stale.
PLOT_FORMAT = 1
PLOT_KINDS = ("macs", "latency")
FORMATS = ("png", "svg")
DIGEST_MARKER = "kdbench-plot-data sha256:"
_DIGEST_PATTERN = re.compile(rb"kdbench-plot-data sha256:([0-9a-f]{64})")
_STYLE = {
    "svg.hashsalt": "kdbench",  # ids of clip paths and glyphs: fixed instead of random
    "svg.fonttype": "path",
    "font.family": "DejaVu Sans",  # shipped with matplotlib: same glyphs on every machine
    "font.size": 9,
    "axes.grid": True,
    "grid.alpha": 0.3,
}
_METHOD_COLORS = (
    "#1f77b4",
    "#ff7f0e",
    "#2ca02c",
    "#d62728",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#17becf",
    "#bcbd22",
    "#7f7f7f",
)
_METHOD_MARKERS = ("o", "^", "D", "v", "P", "X", "<", ">", "h", "p")
_ROLE_ORDER = {"teacher": 0, "student": 1, "method": 2}


@dataclass(frozen=True, slots=True)
class PlotPoint:
    """One drawn point: its legend entry, role (teacher, student or method), annotation and coordinates."""

    series: str
    role: str
    arch: str
    x: float
    top1: float
    n: int


@dataclass(frozen=True, slots=True)
class AccuracyPlot:
    """Top-1 against one cost (``kind``: macs or latency) for one suite, written as ``<stem>.png`` and ``.svg``."""

    kind: str
    stem: str
    title: str
    xlabel: str
    ylabel: str
    points: tuple[PlotPoint, ...]

    @property
    def digest(self) -> str:
        """Return the SHA-256 of the plotted data, labels and plot format (what ``--check`` compares)."""
        points = sorted(_point_key(p) for p in self.points)
        data = [PLOT_FORMAT, self.kind, self.stem, self.title, self.xlabel, self.ylabel, points]
        canonical = json.dumps(data, ensure_ascii=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()


def _point_key(point: PlotPoint) -> tuple[Any, ...]:
    return (_ROLE_ORDER.get(point.role, 3), point.series, point.arch, point.x, point.top1, point.n, point.role)


def plot_stem(suite: str, kind: str) -> str:
    """Return the file name without suffix of a suite's plot: ``<suite>-accuracy-vs-<kind>``."""
    return f"{suite}-accuracy-vs-{kind}"


def _series_styles(points: Sequence[PlotPoint]) -> dict[str, dict[str, Any]]:
    styles: dict[str, dict[str, Any]] = {}
    for point in points:
        if point.role == "teacher":
            styles[point.series] = {"marker": "*", "s": 170, "color": "black", "zorder": 4}
        elif point.role == "student":
            styles[point.series] = {"marker": "s", "s": 55, "facecolors": "white", "edgecolors": "dimgray"}
    methods = sorted({p.series for p in points if p.role == "method"})
    for index, name in enumerate(methods):
        color = _METHOD_COLORS[index % len(_METHOD_COLORS)]
        marker = _METHOD_MARKERS[(index // len(_METHOD_COLORS)) % len(_METHOD_MARKERS)]
        styles[name] = {"marker": marker, "s": 40, "color": color, "zorder": 3}
    return styles


def _draw(plot: AccuracyPlot) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    figure = Figure(figsize=(8, 5), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    points = sorted(plot.points, key=_point_key)
    styles = _series_styles(points)
    for series in dict.fromkeys(p.series for p in points):
        chosen = [p for p in points if p.series == series]
        axes.scatter([p.x for p in chosen], [p.top1 for p in chosen], label=series, **styles[series])
    best: dict[str, PlotPoint] = {}
    for point in points:  # one annotation per architecture, at its highest point
        if point.arch not in best or point.top1 > best[point.arch].top1:
            best[point.arch] = point
    for arch, point in sorted(best.items()):
        axes.annotate(arch, (point.x, point.top1), xytext=(5, 5), textcoords="offset points", fontsize=7)
    xs = [p.x for p in points]
    if min(xs) > 0 and max(xs) / min(xs) >= 10:
        axes.set_xscale("log")
        axes.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        axes.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
        axes.xaxis.set_minor_formatter(NullFormatter())
    axes.set_title(plot.title)
    axes.set_xlabel(plot.xlabel)
    axes.set_ylabel(plot.ylabel)
    axes.margins(x=0.12, y=0.12)
    axes.legend(loc="center left", bbox_to_anchor=(1.02, 0.5), fontsize=8, frameon=False)
    return figure


def render_plot(plot: AccuracyPlot) -> dict[str, bytes]:
    """Return the plot as ``{"png": bytes, "svg": bytes}``; the same plot gives the same bytes."""
    import matplotlib
    import matplotlib.style

    if not plot.points:
        raise ValueError(f"plot {plot.stem} has no points")
    description = f"{DIGEST_MARKER}{plot.digest}"
    metadata = {
        "png": {"Software": None, "Title": plot.title, "Description": description},
        "svg": {"Date": None, "Creator": "kdbench", "Title": plot.title, "Description": description},
    }
    rendered = {}
    with matplotlib.style.context(["default", _STYLE]):
        figure = _draw(plot)
        for suffix in FORMATS:
            buffer = io.BytesIO()
            figure.savefig(buffer, format=suffix, dpi=120, metadata=metadata[suffix])
            rendered[suffix] = buffer.getvalue()
    return rendered


def read_plot_digest(path: Path) -> str | None:
    """Return the data digest stored in a plot file's metadata, or None when it has none."""
    match = _DIGEST_PATTERN.search(path.read_bytes())
    return match.group(1).decode() if match else None


def _expected(suite: str, plots: Iterable[AccuracyPlot]) -> dict[Path, str | None]:
    """Return every plot file name of ``suite`` → the digest it must carry (None: it must not exist)."""
    by_kind = {plot.kind: plot for plot in plots}
    expected: dict[Path, str | None] = {}
    for kind in PLOT_KINDS:
        plot = by_kind.get(kind)
        for suffix in FORMATS:
            expected[Path(f"{plot_stem(suite, kind)}.{suffix}")] = plot.digest if plot else None
    return expected


def stale_plot_files(suite: str, plots: Sequence[AccuracyPlot], directory: Path) -> list[tuple[Path, str]]:
    """Return (path, why) for each plot file of ``suite`` in ``directory`` that does not show ``plots``."""
    stale = []
    for name, digest in _expected(suite, plots).items():
        path = directory / name
        if digest is None:
            if path.exists():
                stale.append((path, "no such plot any more (no profiled results to draw)"))
        elif not path.exists():
            stale.append((path, "missing"))
        elif read_plot_digest(path) != digest:
            stale.append((path, "drawn from other data"))
    return stale


def write_plots(suite: str, plots: Sequence[AccuracyPlot], directory: Path) -> list[Path]:
    """Write the plot files of ``suite`` that are stale, remove obsolete ones; return the paths touched.

    A file whose stored digest already matches is left alone, so re-rendering
    unchanged results never rewrites a committed image.
    """
    by_stem = {plot.stem: plot for plot in plots}
    rendered: dict[str, dict[str, bytes]] = {}
    touched = []
    for path, _why in stale_plot_files(suite, plots, directory):
        touched.append(path)
        if path.stem not in by_stem:
            path.unlink()
            continue
        if path.stem not in rendered:
            rendered[path.stem] = render_plot(by_stem[path.stem])
        atomic_write_bytes(path, rendered[path.stem][path.suffix[1:]])
    return touched
