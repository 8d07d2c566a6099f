"""The smoke-methods suite: every registered distiller through the real runner, one epoch on digits."""

from __future__ import annotations

from pathlib import Path

import kdbench
from kdbench.cli import main
from kdbench.results import ResultsStore


def test_every_registered_distiller_runs_end_to_end(tmp_path: Path, capsys) -> None:
    results = tmp_path / "r.sqlite"
    args = ["run", "--suite", "smoke-methods", "--results", str(results), "--work-dir", str(tmp_path / "runs")]
    code = main([*args, "--no-progress", "--latency-batch-sizes", "1"])
    out = capsys.readouterr()
    assert code == 0, out.err
    with ResultsStore(results) as store:
        records = {r["config"]["distiller"]: r for r in store.records() if r["kind"] == "student"}
    assert set(records) == set(kdbench.list_distillers())
    for name, record in records.items():
        assert record["status"] == "finished", (name, record["error"])
        assert 0 <= record["last_top1"] <= 100
        assert record["curve"][-1]["phase"] == "main" and record["curve"][-1]["losses"], name
