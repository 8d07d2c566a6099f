"""Accuracy-vs-cost plots: PNG and SVG, byte-stable, the data digest in their metadata, no leaked matplotlib state."""

from __future__ import annotations

import random
import sys
from dataclasses import replace
from pathlib import Path

import matplotlib
import pytest

from kdbench.plots import (
    AccuracyPlot,
    PlotPoint,
    read_plot_digest,
    render_plot,
    stale_plot_files,
    write_plots,
)


def _plot(kind: str = "macs", kd_top1: float = 72.5) -> AccuracyPlot:
    points = (
        PlotPoint("teacher", "teacher", "resnet56", 125.8, 72.34, 1),
        PlotPoint("student (vanilla)", "student", "resnet20", 40.8, 69.06, 3),
        PlotPoint("kd", "method", "resnet20", 40.8, kd_top1, 3),
        PlotPoint("dkd", "method", "resnet20", 40.8, 71.97, 3),
    )
    return AccuracyPlot(kind, f"demo-accuracy-vs-{kind}", f"demo: top-1 vs {kind}", kind, "top-1 (%)", points)


def test_render_gives_png_and_svg_with_identical_bytes_and_the_digest_inside(tmp_path: Path) -> None:
    plot = _plot()
    first = render_plot(plot)
    assert sorted(first) == ["png", "svg"]
    assert first["png"].startswith(b"\x89PNG\r\n\x1a\n") and b"<svg" in first["svg"]
    assert render_plot(plot) == first
    # Nothing that changes from one render to the next: no date, no software version.
    assert b"<dc:date>" not in first["svg"] and b"Software" not in first["png"]
    for suffix, data in first.items():
        path = tmp_path / f"plot.{suffix}"
        path.write_bytes(data)
        assert read_plot_digest(path) == plot.digest
    (tmp_path / "plain.svg").write_text("<svg/>", encoding="utf-8")
    assert read_plot_digest(tmp_path / "plain.svg") is None


def test_digest_follows_the_data_not_the_point_order() -> None:
    plot = _plot()
    shuffled = list(plot.points)
    random.Random(3).shuffle(shuffled)
    assert replace(plot, points=tuple(shuffled)).digest == plot.digest
    assert render_plot(replace(plot, points=tuple(shuffled))) == render_plot(plot)
    assert _plot(kd_top1=72.51).digest != plot.digest
    assert replace(plot, xlabel="other").digest != plot.digest


def _settings() -> dict:
    # dict's own accessors: rcParams["backend"] would import pyplot to resolve the backend.
    return {key: dict.__getitem__(matplotlib.rcParams, key) for key in dict.keys(matplotlib.rcParams)}


def test_rendering_uses_no_pyplot_and_leaves_matplotlib_settings_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    expected = render_plot(_plot())
    monkeypatch.delitem(sys.modules, "matplotlib.pyplot", raising=False)
    before = _settings()
    with matplotlib.rc_context({"font.size": 30, "svg.hashsalt": None, "lines.markersize": 2}):
        assert render_plot(_plot()) == expected  # the caller's settings do not change the files
        assert matplotlib.rcParams["font.size"] == 30
    assert _settings() == before
    assert "matplotlib.pyplot" not in sys.modules


def test_a_plot_without_points_is_refused() -> None:
    with pytest.raises(ValueError, match="no points"):
        render_plot(replace(_plot(), points=()))


def test_stale_files_are_found_and_only_they_are_rewritten(tmp_path: Path) -> None:
    macs, latency = _plot("macs"), _plot("latency")
    names = [f"demo-accuracy-vs-{kind}.{suffix}" for kind in ("macs", "latency") for suffix in ("png", "svg")]
    assert [p.name for p, why in stale_plot_files("demo", [macs, latency], tmp_path)] == names
    assert {why for _, why in stale_plot_files("demo", [macs, latency], tmp_path)} == {"missing"}
    assert sorted(p.name for p in write_plots("demo", [macs, latency], tmp_path)) == sorted(names)
    assert stale_plot_files("demo", [macs, latency], tmp_path) == []
    assert write_plots("demo", [macs, latency], tmp_path) == []  # up to date: nothing rewritten

    changed = _plot("macs", kd_top1=60.0)
    svg = tmp_path / "demo-accuracy-vs-macs.svg"
    assert stale_plot_files("demo", [changed, latency], tmp_path) == [
        (tmp_path / "demo-accuracy-vs-macs.png", "drawn from other data"),
        (svg, "drawn from other data"),
    ]
    (tmp_path / "demo-accuracy-vs-latency.png").unlink()
    assert [p.name for p in write_plots("demo", [changed, latency], tmp_path)] == [
        "demo-accuracy-vs-macs.png",
        "demo-accuracy-vs-macs.svg",
        "demo-accuracy-vs-latency.png",
    ]
    assert read_plot_digest(svg) == changed.digest

    # No latency plot any more (e.g. no batch-1 timing stored): its files are stale, then removed.
    stale = stale_plot_files("demo", [changed], tmp_path)
    assert {p.name for p, _ in stale} == {"demo-accuracy-vs-latency.png", "demo-accuracy-vs-latency.svg"}
    write_plots("demo", [changed], tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo-accuracy-vs-macs.png", "demo-accuracy-vs-macs.svg"]
