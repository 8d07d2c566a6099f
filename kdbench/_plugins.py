"""Plugin host: loads entry points one by one, validates them, builds the typed registries."""

from __future__ import annotations

import difflib
import fnmatch
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from functools import cached_property
from importlib import metadata
from typing import Any, Generic, TypeVar, final

import pluggy

from kdbench import hookspecs
from kdbench.errors import DuplicateNameError, PluginError, UnknownNameError
from kdbench.executors import ExecutorSpec
from kdbench.specs import DatasetSpec, DistillerSpec, ModelSpec, PrunerSpec, SuiteSpec, TeacherSpec
from kdbench.stream import LoaderSpec

__all__ = ["DISABLE_ENV", "ENTRY_POINT_GROUP", "PluginHost", "PluginInfo", "Registry", "create_plugin_host"]

ENTRY_POINT_GROUP = "kdbench"
#: The distribution of kdbench's own plugins: on a name clash they keep the name.
PROJECT_DISTRIBUTION = "kdbench"
DISABLE_ENV = "KDBENCH_DISABLE_PLUGINS"

#: registry kind → (registration hook, spec type)
REGISTRY_KINDS: dict[str, tuple[str, type]] = {
    "models": ("kdbench_register_models", ModelSpec),
    "distillers": ("kdbench_register_distillers", DistillerSpec),
    "datasets": ("kdbench_register_datasets", DatasetSpec),
    "teachers": ("kdbench_register_teachers", TeacherSpec),
    "pruners": ("kdbench_register_pruners", PrunerSpec),
    "suites": ("kdbench_register_suites", SuiteSpec),
    "executors": ("kdbench_register_executors", ExecutorSpec),
    "loaders": ("kdbench_register_loaders", LoaderSpec),
}
#: The hooks through which plugins observe runs (called by the engine and runner via ``PluginHost.notify``).
LIFECYCLE_HOOKS = ("kdbench_run_start", "kdbench_epoch_end", "kdbench_run_end")

T = TypeVar("T")


@final
@dataclass(slots=True)
class PluginInfo:
    """One plugin as loaded: where it came from, whether it works, what it registered."""

    name: str
    distribution: str
    version: str
    status: str
    error: str = ""
    registers: dict[str, list[str]] = field(default_factory=dict)
    observes: list[str] = field(default_factory=list)
    """Lifecycle hooks the plugin implements (loggers, trackers), e.g. ``["kdbench_epoch_end"]``."""


class Registry(Generic[T]):
    """Specs of one kind by name; refuses duplicates and suggests close names."""

    def __init__(self, kind: str, unavailable: Iterable[str] = ()) -> None:
        self.kind = kind
        self._specs: dict[str, tuple[T, str]] = {}
        self.unavailable = tuple(unavailable)
        """Plugins disabled or broken in this process: an unknown name may belong to one of them."""

    def add(self, spec: T, plugin: str) -> None:
        """Register ``spec`` under its name for ``plugin``."""
        name = spec.name  # type: ignore[attr-defined]
        if name in self._specs:
            other = self._specs[name][1]
            raise DuplicateNameError(
                f"{self.kind[:-1]} {name!r} is registered by both plugin {other!r} and plugin {plugin!r}; "
                f"disable one with -p no:{plugin}"
            )
        self._specs[name] = (spec, plugin)

    def get(self, name: str) -> T:
        """Return the spec called ``name`` or raise :class:`UnknownNameError`."""
        try:
            return self._specs[name][0]
        except KeyError:
            raise UnknownNameError(self._unknown_message(name)) from None

    def owner(self, name: str) -> str:
        """Return the name of the plugin that registered ``name``."""
        self.get(name)
        return self._specs[name][1]

    def names(self, pattern: str | None = None) -> list[str]:
        """Return the registered names, sorted, optionally filtered by a glob pattern."""
        names = sorted(self._specs)
        return [n for n in names if fnmatch.fnmatchcase(n, pattern)] if pattern else names

    def _unknown_message(self, name: str) -> str:
        message = f"unknown {self.kind[:-1]} {name!r}"
        if name in self.unavailable:
            return f"{message}: plugin {name!r} is disabled or failed to load (see `kdbench plugins`)"
        close = difflib.get_close_matches(name, list(self._specs), n=3)
        if close:
            message = f"{message}; did you mean {', '.join(map(repr, close))}?"
        else:
            message = f"{message}; see `kdbench list {self.kind}`"
        if self.unavailable:
            message += f" (not loaded here: plugin(s) {', '.join(self.unavailable)})"
        return message

    def __contains__(self, name: object) -> bool:
        return name in self._specs

    def __iter__(self) -> Iterator[T]:
        return (self._specs[n][0] for n in self.names())

    def __len__(self) -> int:
        return len(self._specs)


class PluginHost:
    """A plugin manager with its load report and typed registries (build it with :func:`create_plugin_host`)."""

    def __init__(self, pm: pluggy.PluginManager, plugins: list[PluginInfo], strict: bool) -> None:
        self.pm = pm
        self.plugins = plugins
        self.strict = strict

    @property
    def problems(self) -> list[str]:
        """Return one line per plugin that was skipped because it is broken."""
        return [f"plugin {p.name!r} skipped: {p.error}" for p in self.plugins if p.status == "failed"]

    def _info(self, name: str) -> PluginInfo:
        for info in self.plugins:
            if info.name == name:
                return info
        info = PluginInfo(name=name, distribution="(registered in code)", version="", status="loaded")
        self.plugins.append(info)
        return info

    def _fail(self, plugin: str, message: str) -> None:
        if self.strict:
            raise PluginError(f"plugin {plugin!r} {message}")
        info = self._info(plugin)
        info.status, info.error = "failed", message
        self.pm.unregister(name=plugin)

    @cached_property
    def _registries(self) -> dict[str, Registry[Any]]:
        collected: dict[str, list[tuple[str, Any]]] = {kind: [] for kind in REGISTRY_KINDS}
        for kind, (hook_name, spec_type) in REGISTRY_KINDS.items():
            for impl in reversed(getattr(self.pm.hook, hook_name).get_hookimpls()):
                specs = self._collect(impl, hook_name, spec_type)
                collected[kind].extend((impl.plugin_name, spec) for spec in specs)
        self._refuse_clashes(collected)
        failed = {p.name for p in self.plugins if p.status == "failed"}
        unavailable = sorted(p.name for p in self.plugins if p.status in ("failed", "disabled"))
        registries: dict[str, Registry[Any]] = {}
        for kind, entries in collected.items():
            registry: Registry[Any] = Registry(kind, unavailable)
            for plugin, spec in entries:
                if plugin not in failed:
                    registry.add(spec, plugin)
                    self._info(plugin).registers.setdefault(kind, []).append(spec.name)
            registries[kind] = registry
        return registries

    def _refuse_clashes(self, collected: dict[str, list[tuple[str, Any]]]) -> None:
        """Fail each plugin registering a name another plugin (or itself) already registered.

        kdbench's own plugins are taken first, then the others in load order: a third-party
        plugin reusing a built-in name is the one reported (``kdbench plugins`` still lists all).
        """
        first_party = {p.name for p in self.plugins if p.distribution == PROJECT_DISTRIBUTION}
        for kind, entries in collected.items():
            owners: dict[str, str] = {}
            for plugin, spec in sorted(entries, key=lambda entry: entry[0] not in first_party):
                if spec.name not in owners:
                    owners[spec.name] = plugin
                    continue
                owner = owners[spec.name]
                where = "twice" if owner == plugin else f"although plugin {owner!r} registers it"
                message = f"registers {kind[:-1]} {spec.name!r} {where}"
                if self.strict:
                    raise DuplicateNameError(f"plugin {plugin!r} {message}; disable one with -p no:{plugin}")
                self._fail(plugin, message)

    def _collect(self, impl: pluggy.HookImpl, hook_name: str, spec_type: type) -> list[Any]:
        try:
            specs = impl.function()
        except Exception as exc:  # a plugin's own bug, reported by name
            self._fail(impl.plugin_name, f"raised in {hook_name}: {type(exc).__name__}: {exc}")
            return []
        if specs is None:
            return []
        if not isinstance(specs, (list, tuple)):
            self._fail(impl.plugin_name, f"{hook_name} must return a list of {spec_type.__name__}, got {specs!r:.80}")
            return []
        wrong = [s for s in specs if not isinstance(s, spec_type)]
        if wrong:
            self._fail(
                impl.plugin_name, f"{hook_name} must return a list of {spec_type.__name__}; it holds {wrong[0]!r:.80}"
            )
            return []
        return list(specs)

    @property
    def models(self) -> Registry[ModelSpec]:
        """Return the model registry."""
        return self._registries["models"]

    @property
    def distillers(self) -> Registry[DistillerSpec]:
        """Return the distiller registry."""
        return self._registries["distillers"]

    @property
    def datasets(self) -> Registry[DatasetSpec]:
        """Return the dataset registry."""
        return self._registries["datasets"]

    @property
    def teachers(self) -> Registry[TeacherSpec]:
        """Return the teacher-checkpoint registry."""
        return self._registries["teachers"]

    @property
    def pruners(self) -> Registry[PrunerSpec]:
        """Return the pruner registry."""
        return self._registries["pruners"]

    @property
    def suites(self) -> Registry[SuiteSpec]:
        """Return the suite registry."""
        return self._registries["suites"]

    @property
    def executors(self) -> Registry[ExecutorSpec]:
        """Return the executor registry."""
        return self._registries["executors"]

    @property
    def loaders(self) -> Registry[LoaderSpec]:
        """Return the loader registry (streaming datasets)."""
        return self._registries["loaders"]

    def registry(self, kind: str) -> Registry[Any]:
        """Return the registry of ``kind`` (models, distillers, datasets, teachers, pruners, suites, executors…)."""
        if kind not in self._registries:
            raise UnknownNameError(f"unknown registry {kind!r}; known: {', '.join(REGISTRY_KINDS)}")
        return self._registries[kind]

    def notify(self, hook_name: str, **kwargs: Any) -> None:
        """Call a lifecycle hook on every plugin; a plugin that raises is named in a PluginError."""
        for impl in reversed(getattr(self.pm.hook, hook_name).get_hookimpls()):
            try:
                impl.function(*(kwargs[arg] for arg in impl.argnames))
            except Exception as exc:
                raise PluginError(
                    f"plugin {impl.plugin_name!r} raised in {hook_name}: {type(exc).__name__}: {exc}"
                ) from exc


def disabled_from_env() -> list[str]:
    """Return plugin names listed (comma- or space-separated) in ``KDBENCH_DISABLE_PLUGINS``."""
    raw = os.environ.get(DISABLE_ENV, "")
    return [name for name in raw.replace(",", " ").split() if name]


def _entry_points() -> list[metadata.EntryPoint]:
    seen: dict[str, metadata.EntryPoint] = {}
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        seen.setdefault(ep.name, ep)
    return [seen[name] for name in sorted(seen)]


def _register(pm: pluggy.PluginManager, plugin: object, name: str) -> None:
    pm.register(plugin, name=name)
    try:
        pm.check_pending()
    except pluggy.PluginValidationError:
        pm.unregister(name=name)
        raise


def _lifecycle_hooks(pm: pluggy.PluginManager, plugin: object) -> list[str]:
    return sorted(caller.name for caller in pm.get_hookcallers(plugin) or () if caller.name in LIFECYCLE_HOOKS)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, pluggy.PluginValidationError):
        return f"violates the hook contract: {exc}"
    return f"failed to load: {type(exc).__name__}: {exc}"


def create_plugin_host(
    *,
    disabled: Iterable[str] = (),
    strict: bool = False,
    entry_points: bool = True,
    plugins: Iterable[tuple[str, object]] = (),
) -> PluginHost:
    """Build a plugin host from installed entry points plus ``plugins`` given as (name, object).

    ``disabled`` names plugins not to load (an unknown name is an error), and
    so does ``KDBENCH_DISABLE_PLUGINS`` (unknown names there are ignored). With ``strict`` a broken plugin is fatal;
    otherwise it is reported in :attr:`PluginHost.problems` and skipped.
    """
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    blocked = set(disabled)
    infos: list[PluginInfo] = []
    candidates: list[tuple[str, str, str, Any]] = []
    if entry_points:
        for ep in _entry_points():
            dist = ep.dist
            candidates.append((ep.name, dist.name if dist else "?", dist.version if dist else "", ep))
    candidates.extend((name, "(registered in code)", "", obj) for name, obj in plugins)
    sources: dict[str, str] = {}
    for name, dist, *_ in candidates:
        if name in sources:
            raise PluginError(f"two plugins are named {name!r}: one from {sources[name]}, one from {dist}")
        sources[name] = dist
    unknown = blocked - {name for name, *_ in candidates}
    # Names from the environment may refer to plugins installed elsewhere: no error for those.
    blocked |= set(disabled_from_env())
    if unknown:
        known = [name for name, *_ in candidates]
        hints = {n: difflib.get_close_matches(n, known, n=1) for n in sorted(unknown)}
        detail = "; ".join(f"{n!r}" + (f" (did you mean {h[0]!r}?)" if h else "") for n, h in hints.items())
        raise UnknownNameError(f"cannot disable unknown plugin {detail}; see `kdbench plugins`")
    for name, dist, version, target in candidates:
        info = PluginInfo(name=name, distribution=dist, version=version, status="loaded")
        infos.append(info)
        if name in blocked:
            info.status = "disabled"
            continue
        try:
            plugin = target.load() if isinstance(target, metadata.EntryPoint) else target
            _register(pm, plugin, name)
            info.observes = _lifecycle_hooks(pm, plugin)
        except Exception as exc:
            if strict:
                raise PluginError(f"plugin {name!r} ({dist}) {_describe(exc)}") from exc
            info.status, info.error = "failed", _describe(exc)
    return PluginHost(pm, infos, strict)
