"""The command line: listings, dry runs, and one-line errors for bad input."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import make_distribution

from kdbench.cli import main
from kdbench.plan import TrainRun, plan_suite


def _cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "kdbench", *args], capture_output=True, text=True, cwd=cwd, timeout=300, check=False
    )


def _one_line_error(result: subprocess.CompletedProcess, *fragments: str) -> None:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("kdbench: error:")
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_unknown_suite_is_one_line_error() -> None:
    _one_line_error(
        _cli("run", "--suite", "cifar100-similr", "--dry-run"), "unknown suite 'cifar100-similr'", "cifar100-similar"
    )


def test_unknown_plugin_is_one_line_error() -> None:
    _one_line_error(_cli("list", "models", "-p", "no:resnet_zoo"), "unknown plugin 'resnet_zoo'")
    _one_line_error(_cli("run", "--suite", "smoke", "--dry-run", "-p", "kd"), "-p takes no:NAME")


def test_malformed_suite_file_is_one_line_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "x"\ndescription = "d"\ndataset = "digits"\npairs = [{teacher = "a"}]\n', encoding="utf-8")
    _one_line_error(_cli("run", "--suite", str(bad), "--dry-run"), str(bad), "pairs[0] needs `teacher` and `student`")
    bad.write_text("name = [\n", encoding="utf-8")
    _one_line_error(_cli("run", "--suite", str(bad), "--dry-run"), "not valid TOML")


def test_suite_naming_an_unknown_method_is_one_line_error(tmp_path: Path) -> None:
    suite = tmp_path / "s.toml"
    suite.write_text(
        'name = "s"\ndescription = "d"\ndataset = "digits"\ndistillers = ["kdd"]\n'
        'pairs = [{teacher = "digits_cnn_l", student = "digits_cnn_s"}]\n',
        encoding="utf-8",
    )
    _one_line_error(_cli("run", "--suite", str(suite), "--dry-run"), "unknown distiller 'kdd'", "'kd'")


def test_suite_setting_a_parameter_a_method_does_not_take_is_refused_before_any_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    suite = tmp_path / "s.toml"
    suite.write_text(
        'name = "s"\ndescription = "d"\ndataset = "digits"\ndistillers = ["kd"]\n'
        'pairs = [{teacher = "digits_cnn_l", student = "digits_cnn_s"}]\n'
        "[distiller_params.kd]\ntemprature = 2.0\n",
        encoding="utf-8",
    )
    results = tmp_path / "r.sqlite"
    assert main(["run", "--suite", str(suite), "--dry-run", "--results", str(results)]) == 2
    error = capsys.readouterr().err
    assert "[distiller_params.kd] sets temprature, which kd does not take" in error and "temperature" in error
    assert not results.exists()


def test_missing_cifar_data_stops_at_once_naming_the_path(tmp_path: Path) -> None:
    result = _cli(
        "run",
        "--suite",
        "cifar100-similar",
        "--data-root",
        str(tmp_path / "nowhere"),
        "--results",
        str(tmp_path / "r.db"),
    )
    _one_line_error(result, str(tmp_path / "nowhere" / "cifar-100-python"), "--download")
    assert not (tmp_path / "runs").exists()


def test_dry_run_plans_every_run_without_data(host, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["run", "--suite", "cifar100-similar", "--dry-run", "--data-root", str(tmp_path / "none")])
    out = capsys.readouterr().out
    assert code == 0
    suite = host.suites.get("cifar100-similar")
    distilling = [d for d in host.distillers.names() if d != "vanilla"]
    per_pair = sum(len([d for d in distilling if d not in pair.skip]) for pair in suite.pairs)
    # 5 teachers + 6 vanilla students × 3 seeds + every (pair, method not skipped there) × 3 seeds.
    assert f"{5 + 18 + 3 * per_pair} runs, 0 already stored" in out
    assert "resnet32x4→resnet8x4" in out and "240" in out and "to run" in out
    line = next(row for row in out.splitlines() if " dkd " in row and "resnet56→resnet20" in row)
    beta_2 = {r.run_id for r in plan_suite(suite, host) if isinstance(r, TrainRun) and r.params.get("beta") == 2.0}
    assert line.split()[0] in beta_2


def test_listings_show_registries_with_citations(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["list", "distillers"]) == 0
    out = capsys.readouterr().out
    assert "Hinton" in out and "temperature=4.0" in out
    assert main(["list", "models", "resnet8*"]) == 0
    out = capsys.readouterr().out
    assert "resnet8x4" in out and "wrn_16_2" not in out
    assert main(["list", "suites"]) == 0
    assert "cifar100-similar" in capsys.readouterr().out
    assert main(["list", "datasets"]) == 0
    assert "digits" in capsys.readouterr().out


def test_plugins_command_shows_distribution_and_registrations(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plugins"]) == 0
    out = capsys.readouterr().out
    assert "kdbench 0.1.0" in out
    line = next(line for line in out.splitlines() if line.startswith("kd "))
    assert "distillers: kd" in line and "loaded" in line and "observes" not in line
    line = next(line for line in out.splitlines() if line.startswith("epoch_log "))
    assert "observes: epoch_end, run_end, run_start" in line  # a logger shows the lifecycle hooks it implements


def test_profile_prints_params_macs_and_latency(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["profile", "resnet8", "--batch-sizes", "1"]) == 0
    out = capsys.readouterr().out
    assert "83,892 params" in out and "12.7 M MACs" in out
    assert "latency batch 1" in out and "cpu" in out


TEACHER_SET = """
    from kdbench import TeacherSpec, hookimpl

    @hookimpl
    def kdbench_register_teachers():
        return [TeacherSpec(name="digits_cnn_l@lab", model="digits_cnn_l", dataset="digits", path="l/best.pth")]
"""


def test_teacher_set_uses_registered_checkpoints_end_to_end(fake_site: Path, tmp_path: Path, capsys) -> None:
    import torch

    import kdbench

    make_distribution(fake_site, "kdbench-lab", "1.0", {"lab": "kdbench_fake_lab"}, {"kdbench_fake_lab": TEACHER_SET})
    checkpoint = tmp_path / "teachers" / "l" / "best.pth"
    checkpoint.parent.mkdir(parents=True)
    torch.save({"model": kdbench.create_model("digits_cnn_l").state_dict()}, checkpoint)
    common = ["--results", str(tmp_path / "r.db"), "--teacher-set", "lab"]
    run = ["run", "--suite", "smoke", "-k", "kd digits_cnn_s←digits_cnn_l seed=0", "--epochs", "1", *common]
    assert main([*run, "--teacher-root", str(tmp_path / "teachers"), "--work-dir", str(tmp_path / "runs")]) == 0
    assert "2 finished" in capsys.readouterr().out  # the checkpoint's evaluation + one KD run
    with pytest.raises(SystemExit):
        main(["run", "--suite", "smoke", "--teacher-set"])
    capsys.readouterr()
    assert main(["run", "--suite", "smoke", "--dry-run", "--teacher-set", "nowhere"]) == 2
    assert "no registered teacher of set 'nowhere' fits suite 'smoke'" in capsys.readouterr().err
    boards = tmp_path / "boards"
    assert main(["leaderboard", "--suite", "smoke", *common, "--out", str(boards)]) == 0
    text = (boards / "smoke.md").read_text(encoding="utf-8")
    assert "| Teacher " in text and "(n=1)" in text.split("| Teacher ")[1].splitlines()[0]
    assert main(["leaderboard", "--check", "--out", str(boards)]) == 0


RUN_TEACHER = ["run", "--suite", "smoke", "-k", "teacher", "--results", "{tmp}/r.sqlite"]


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ([*RUN_TEACHER, "--device", "bogus"], "--device 'bogus' is not a torch device"),
        ([*RUN_TEACHER, "--work-dir", "{tmp}/a-file"], "--work-dir {tmp}/a-file is a file"),
        (["new-plugin", "my_thing", "--dir", "{tmp}/a-file"], "Not a directory: '{tmp}/a-file/kdbench-my_thing'"),
    ],
)
def test_unusable_devices_and_paths_are_one_line_errors(
    arguments: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "a-file").write_text("not a directory", encoding="utf-8")
    assert main([argument.format(tmp=tmp_path) for argument in arguments]) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("kdbench: error:")
    assert message.format(tmp=tmp_path) in lines[0]
    assert (tmp_path / "a-file").read_text(encoding="utf-8") == "not a directory"
    assert not (tmp_path / "r.sqlite").exists()


def test_an_unreadable_teacher_checkpoint_is_blamed_and_kept(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    checkpoint = tmp_path / "teacher.pt"
    checkpoint.write_bytes(b"")
    arguments = ["run", "--suite", "smoke", "-k", "kd digits_cnn_s seed=0", "--no-progress"]
    arguments += ["--teacher", f"digits_cnn_l={checkpoint}", "--results", str(tmp_path / "r.sqlite")]
    assert main([*arguments, "--work-dir", str(tmp_path / "runs")]) == 1
    error = capsys.readouterr().err
    assert f"cannot read checkpoint {checkpoint}" in error and "check the checkpoint given for digits_cnn_l" in error
    assert "delete it" not in error and checkpoint.read_bytes() == b""  # the user's file: never "delete it"


RAISING_OBSERVER = """
    from kdbench import hookimpl

    @hookimpl
    def kdbench_run_end(run, result):
        raise ConnectionError("tracker unreachable")
"""


def test_an_observer_raising_at_run_end_warns_and_the_suite_goes_on(
    fake_site: Path, tiny_suite_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    make_distribution(
        fake_site, "kdbench-obs", "0.1", {"obs": "kdbench_fake_obs"}, {"kdbench_fake_obs": RAISING_OBSERVER}
    )
    arguments = ["run", "--suite", str(tiny_suite_file), "--no-progress", "--results", str(tmp_path / "r.sqlite")]
    assert main([*arguments, "--work-dir", str(tmp_path / "runs")]) == 0
    captured = capsys.readouterr()
    assert "3 finished, 0 diverged, 0 failed" in captured.out
    warnings = [line for line in captured.err.splitlines() if "plugin 'obs' raised in kdbench_run_end" in line]
    assert len(warnings) == 3 and all("(its result is stored)" in line for line in warnings)
