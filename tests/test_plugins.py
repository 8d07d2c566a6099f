"""Plugin discovery, isolation of broken plugins, duplicate names, disabling, lifecycle hooks."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import make_distribution

import kdbench
from kdbench.errors import DuplicateNameError, PluginError, UnknownNameError

GOOD_PLUGIN = """
    import functools

    from kdbench import DistillerSpec, hookimpl
    from kdbench_plugins.distillers.kd import KD

    @hookimpl
    def kdbench_register_distillers():
        # A variant of a method: its own defaults bound to the builder (spec.defaults are read from it).
        return [DistillerSpec(name="kd_fake", builder=functools.partial(KD, temperature=2.0),
                              description="a third-party KD", citation="fake 2026")]
"""


def test_first_party_plugins_are_entry_points(host: kdbench.PluginHost) -> None:
    names = {p.name for p in host.plugins}
    assert {"kd", "vanilla", "digits", "cifar", "cifar_resnet", "builtin_suites"} <= names
    assert all(p.status == "loaded" for p in host.plugins), [p for p in host.plugins if p.status != "loaded"]
    assert host.distillers.owner("kd") == "kd"
    assert all(p.distribution == "kdbench" for p in host.plugins if p.name in ("kd", "vanilla"))


def test_third_party_distribution_is_discovered(fake_site: Path) -> None:
    make_distribution(
        fake_site, "kdbench-fake", "1.2.3", {"kd_fake": "kdbench_fake_good"}, {"kdbench_fake_good": GOOD_PLUGIN}
    )
    host = kdbench.create_plugin_host(strict=True)
    info = next(p for p in host.plugins if p.name == "kd_fake")
    assert (info.distribution, info.version, info.status) == ("kdbench-fake", "1.2.3", "loaded")
    assert host.distillers.get("kd_fake").defaults["temperature"] == 2.0
    assert info.registers == {"distillers": ["kd_fake"]}
    assert "kd_fake" in kdbench.list_distillers(host=host)


def test_broken_distribution_is_reported_by_name_and_skipped(fake_site: Path) -> None:
    make_distribution(
        fake_site,
        "kdbench-broken",
        "0.1",
        {"broken": "kdbench_fake_broken"},
        {"kdbench_fake_broken": "import nope_x\n"},
    )
    host = kdbench.create_plugin_host()
    assert any("'broken'" in line and "nope_x" in line for line in host.problems)
    assert "kd" in host.distillers  # the others still load
    with pytest.raises(PluginError, match="'broken'.*kdbench-broken.*nope_x"):
        kdbench.create_plugin_host(strict=True)


def test_misspelled_hook_is_a_contract_violation(fake_site: Path) -> None:
    source = """
        from kdbench import hookimpl

        @hookimpl
        def kdbench_register_distiller():
            return []
    """
    make_distribution(fake_site, "kdbench-typo", "0.1", {"typo": "kdbench_fake_typo"}, {"kdbench_fake_typo": source})
    host = kdbench.create_plugin_host()
    assert any("'typo'" in line and "kdbench_register_distiller" in line for line in host.problems)
    assert "typo" not in host.pm.list_name_plugin()[0] if host.pm.list_name_plugin() else True
    assert host.pm.get_plugin("typo") is None


def test_wrong_hook_arguments_are_rejected(fake_site: Path) -> None:
    source = """
        from kdbench import hookimpl

        @hookimpl
        def kdbench_epoch_end(run, epoch, extra):
            pass
    """
    make_distribution(fake_site, "kdbench-args", "0.1", {"args": "kdbench_fake_args"}, {"kdbench_fake_args": source})
    with pytest.raises(PluginError, match="'args'.*hook contract"):
        kdbench.create_plugin_host(strict=True)


def test_registration_that_raises_or_returns_garbage_is_named(fake_site: Path) -> None:
    raising = """
        from kdbench import hookimpl

        @hookimpl
        def kdbench_register_models():
            raise RuntimeError("boom in models")
    """
    garbage = """
        from kdbench import hookimpl

        @hookimpl
        def kdbench_register_datasets():
            return ["not a spec"]
    """
    make_distribution(
        fake_site,
        "kdbench-bad",
        "0.1",
        {"raiser": "kdbench_fake_raiser", "garbage": "kdbench_fake_garbage"},
        {"kdbench_fake_raiser": raising, "kdbench_fake_garbage": garbage},
    )
    host = kdbench.create_plugin_host()
    assert "resnet20" in host.models and "digits" in host.datasets
    problems = "\n".join(host.problems)
    assert "'raiser'" in problems and "boom in models" in problems
    assert "'garbage'" in problems and "DatasetSpec" in problems
    with pytest.raises(PluginError, match="boom in models"):
        kdbench.create_plugin_host(strict=True).models  # noqa: B018


def test_a_plugin_reusing_a_name_fails_and_names_both_plugins(fake_site: Path) -> None:
    clash = GOOD_PLUGIN.replace('"kd_fake"', '"kd"')
    make_distribution(fake_site, "kdbench-clash", "0.1", {"clash": "kdbench_fake_clash"}, {"kdbench_fake_clash": clash})
    host = kdbench.create_plugin_host()
    # The built-in keeps its name; the newcomer is reported (and `kdbench plugins` etc. still work).
    assert host.distillers.owner("kd") == "kd" and "vanilla" in host.distillers
    info = next(p for p in host.plugins if p.name == "clash")
    assert info.status == "failed" and info.error == "registers distiller 'kd' although plugin 'kd' registers it"
    with pytest.raises(DuplicateNameError, match="plugin 'clash' registers distiller 'kd' although plugin 'kd'"):
        kdbench.create_plugin_host(strict=True).distillers  # noqa: B018
    # Disabling either side resolves it.
    assert kdbench.create_plugin_host(disabled=["clash"]).distillers.owner("kd") == "kd"
    assert kdbench.create_plugin_host(disabled=["kd"]).distillers.owner("kd") == "clash"


def test_disable_by_flag_and_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    host = kdbench.create_plugin_host(disabled=["kd"])
    assert "kd" not in host.distillers and "vanilla" in host.distillers
    assert next(p for p in host.plugins if p.name == "kd").status == "disabled"
    with pytest.raises(UnknownNameError, match="unknown distiller 'kd': plugin 'kd' is disabled"):
        host.distillers.get("kd")  # not "did you mean 'rkd'": the user disabled it
    with pytest.raises(UnknownNameError, match=r"\(not loaded here: plugin\(s\) kd\)"):
        host.distillers.get("kdd")
    monkeypatch.setenv("KDBENCH_DISABLE_PLUGINS", "vanilla, kd")
    host = kdbench.create_plugin_host()
    assert {"vanilla", "kd"}.isdisjoint(host.distillers.names()) and "dkd" in host.distillers


def test_disabling_an_unknown_plugin_is_an_error() -> None:
    with pytest.raises(UnknownNameError, match="'kdd'.*did you mean 'kd'"):
        kdbench.create_plugin_host(disabled=["kdd"])


def test_unknown_name_suggests_close_matches(host: kdbench.PluginHost) -> None:
    with pytest.raises(UnknownNameError, match="unknown model 'resnet2O'; did you mean .*'resnet20'"):
        host.models.get("resnet2O")


def test_lifecycle_hooks_reach_plugins_and_failures_name_them() -> None:
    calls: list[tuple[str, object]] = []

    class Logger:
        @kdbench.hookimpl
        def kdbench_run_start(self, run):
            calls.append(("start", run))

        @kdbench.hookimpl
        def kdbench_epoch_end(self, epoch):  # a subset of the spec's arguments is allowed
            calls.append(("epoch", epoch))

    class Broken:
        @kdbench.hookimpl
        def kdbench_run_end(self, run, result):
            raise ValueError("disk full")

    host = kdbench.create_plugin_host(entry_points=False, plugins=[("logger", Logger()), ("broken_logger", Broken())])
    host.notify("kdbench_run_start", run="r1")
    host.notify("kdbench_epoch_end", run="r1", epoch=3)
    assert calls == [("start", "r1"), ("epoch", 3)]
    with pytest.raises(PluginError, match="'broken_logger' raised in kdbench_run_end: ValueError: disk full"):
        host.notify("kdbench_run_end", run="r1", result=None)


def test_public_api_is_small_and_complete() -> None:
    assert "hookimpl" in kdbench.__all__ and "create_model" in kdbench.__all__
    for name in kdbench.__all__:
        assert hasattr(kdbench, name), name
    model = kdbench.create_model("resnet8", num_classes=10)
    assert model(__import__("torch").zeros(1, 3, 32, 32)).shape == (1, 10)
    assert "resnet8" in kdbench.list_models("resnet*")


def test_two_plugins_with_one_name_are_refused() -> None:
    with pytest.raises(PluginError, match="two plugins are named 'kd': one from kdbench, one from"):
        kdbench.create_plugin_host(plugins=[("kd", object())])


TWICE_PLUGIN = """
    from kdbench import DistillerSpec, hookimpl
    from kdbench_plugins.distillers.kd import KD

    @hookimpl
    def kdbench_register_distillers():
        spec = DistillerSpec(name="kd_fake", builder=KD, description="a third-party KD", citation="fake 2026")
        return [spec, spec]
"""


def test_a_plugin_registering_one_name_twice_fails(fake_site: Path) -> None:
    make_distribution(
        fake_site, "kdbench-twice", "0.1", {"twice": "kdbench_fake_twice"}, {"kdbench_fake_twice": TWICE_PLUGIN}
    )
    host = kdbench.create_plugin_host()
    assert "kd_fake" not in host.distillers  # registrations are collected on first use
    info = next(p for p in host.plugins if p.name == "twice")
    assert (info.status, info.error) == ("failed", "registers distiller 'kd_fake' twice")
    assert "kd_fake" not in host.distillers and "kd" in host.distillers


def test_a_spec_with_an_unknown_family_fails_its_plugin(fake_site: Path) -> None:
    source = GOOD_PLUGIN.replace("DistillerSpec(", 'DistillerSpec(family="logits", ', 1)
    make_distribution(fake_site, "kdbench-fam", "0.1", {"fam": "kdbench_fake_fam"}, {"kdbench_fake_fam": source})
    host = kdbench.create_plugin_host()
    assert "kd_fake" not in host.distillers  # registrations are collected on first use
    info = next(p for p in host.plugins if p.name == "fam")
    assert info.status == "failed" and "family must be one of baseline, logit, feature, got 'logits'" in info.error
