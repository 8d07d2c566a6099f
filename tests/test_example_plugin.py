"""The example third-party plugin (plugins/examples/kdbench-dist), installed offline into a temporary environment.

Installed there, it must show up everywhere a user looks — ``kdbench plugins``,
``kdbench list``, a suite run, the leaderboard — and nowhere in the environment
the tests run in, where it is not installed.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest
from _plugin_env import PluginEnv, copy_source, make_plugin_env

from kdbench._plugins import PluginHost
from kdbench.results import ResultsStore

EXAMPLE = Path(__file__).resolve().parents[1] / "plugins" / "examples" / "kdbench-dist"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def dist_env(tmp_path_factory: pytest.TempPathFactory) -> PluginEnv:
    root = tmp_path_factory.mktemp("kdbench-dist")
    env = make_plugin_env(root / "env")
    env.install(copy_source(EXAMPLE, root / "source"))
    return env


def _ok(result) -> str:
    assert result.returncode == 0, result.stdout + result.stderr
    assert "warning" not in result.stderr, result.stderr  # no plugin failed to load
    return result.stdout


def _row(text: str, first_cell: str) -> str:
    rows = [line for line in text.splitlines() if re.match(rf"\|?\s*{re.escape(first_cell)}\s", line)]
    assert len(rows) == 1, f"expected one row for {first_cell!r} in:\n{text}"
    return rows[0]


def test_not_installed_in_the_test_environment(host: PluginHost) -> None:
    assert importlib.util.find_spec("kdbench_dist") is None
    assert "dist" not in {info.name for info in host.plugins}
    assert "dist" not in host.distillers
    assert "dist-smoke" not in host.suites


_SEPARATOR = "=" * 20 + " next command " + "=" * 20


def _commands(env: PluginEnv, *commands: list[str]) -> list[str]:
    """Return the output of each ``kdbench`` command line, all run by one process of ``env`` (one torch import)."""
    script = "from kdbench.cli import main\n" + "".join(
        f"assert main({command!r}) == 0\nprint({_SEPARATOR!r}, flush=True)\n" for command in commands
    )
    return _ok(env.run("-c", script)).split(_SEPARATOR + "\n")[:-1]


def test_listed_by_plugins_and_list_commands(dist_env: PluginEnv) -> None:
    plugins, distillers, suites, disabled = _commands(
        dist_env,
        ["plugins"],
        ["list", "distillers"],
        ["list", "suites", "dist-*"],
        ["list", "distillers", "-p", "no:dist"],
    )
    plugin = _row(plugins, "dist")
    assert re.search(r"kdbench-dist 0\.1\.0\s+loaded\s+distillers: dist; suites: dist-smoke", plugin), plugin
    distiller = _row(distillers, "dist")
    assert "logit" in distiller and "beta=2.0, gamma=2.0, tau=4.0, ce_weight=1.0" in distiller
    assert "arXiv:2205.10536" in distiller
    assert "vanilla, kd, dist" in _row(suites, "dist-smoke")
    assert re.search(r"^kd\s", disabled, re.MULTILINE) and not re.search(r"^dist\s", disabled, re.MULTILINE)


def test_suite_run_and_leaderboard(dist_env: PluginEnv, tmp_path: Path) -> None:
    results = tmp_path / "results.sqlite"
    store_args = ("--results", str(results))
    run = dist_env.kdbench(
        "run", "--suite", "dist-smoke", "--epochs", "1", "--seeds", "0", "-k", "dist", *store_args,
        "--work-dir", str(tmp_path / "runs"), "--teacher-root", str(tmp_path / "teachers"),
        "--latency-batch-sizes", "1", "--no-progress",
    )  # fmt: skip
    assert "suite dist-smoke: 2 finished, 0 diverged, 0 failed" in _ok(run)
    with ResultsStore(results) as store:
        (record,) = [r for r in store.records() if r["config"]["distiller"] == "dist"]
    assert record["status"] == "finished" and record["suite"] == "dist-smoke"
    assert record["config"]["params"] == {"beta": 2.0, "gamma": 2.0, "tau": 4.0, "ce_weight": 1.0}
    assert set(record["curve"][0]["losses"]) == {"ce", "inter", "intra"}
    assert record["versions"]["plugins"]["dist"] == "0.1.0"

    # The registered suite's leaderboard lists DIST among the logit-based methods; the 1-epoch runs
    # above are not the suite's own (30 epochs, 3 seeds), so its cells are shown as missing.
    out = tmp_path / "boards"
    _ok(dist_env.kdbench("leaderboard", "--suite", "dist-smoke", "--out", str(out), *store_args))
    board = (out / "dist-smoke.md").read_text(encoding="utf-8")
    assert _row(board[board.index("*Logit-based*") :], "| dist").split("|")[2].strip() == "—"
    assert re.search(r"\| student \| digits_cnn_l→digits_cnn_s \| dist +\| 0, 1, 2 \| not run yet", board)
    # The same suite at the ad-hoc recipe plans exactly the runs made above: DIST's result is rendered.
    adhoc = (EXAMPLE / "src" / "kdbench_dist" / "dist-smoke.toml").read_text(encoding="utf-8")
    adhoc = adhoc.replace('name = "dist-smoke"', 'name = "dist-adhoc"').replace("seeds = [0, 1, 2]", "seeds = [0]")
    (tmp_path / "dist-adhoc.toml").write_text(adhoc.replace("epochs = 30", "epochs = 1"), encoding="utf-8")
    _ok(dist_env.kdbench("leaderboard", "--suite", str(tmp_path / "dist-adhoc.toml"), "--out", str(out), *store_args))
    board = (out / "dist-adhoc.md").read_text(encoding="utf-8")
    cell = _row(board[board.index("*Logit-based*") :], "| dist").split("|")[2]
    assert f"{record['best_top1']:.2f}" in cell, board


def test_plugin_own_tests_pass_once_installed(dist_env: PluginEnv, tmp_path: Path) -> None:
    source = copy_source(EXAMPLE, tmp_path / "source")
    result = dist_env.run("-m", "pytest", "-q", "-p", "no:cacheprovider", "tests", cwd=source)
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(r"\b\d+ passed\b", result.stdout) and "skipped" not in result.stdout
