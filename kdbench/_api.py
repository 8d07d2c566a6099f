"""The timm-style public functions, served by one lazily built default plugin host (``create_model``: weights)."""

from __future__ import annotations

from functools import lru_cache

from kdbench._plugins import PluginHost, create_plugin_host
from kdbench.specs import DatasetSpec, DistillerSpec, SuiteSpec

__all__ = [
    "default_host",
    "get_dataset",
    "get_distiller",
    "get_suite",
    "list_datasets",
    "list_distillers",
    "list_models",
    "list_suites",
]


@lru_cache(maxsize=1)
def default_host() -> PluginHost:
    """Return the host built from installed plugins (honouring ``KDBENCH_DISABLE_PLUGINS``)."""
    return create_plugin_host()


def _host(host: PluginHost | None) -> PluginHost:
    return host if host is not None else default_host()


def list_models(pattern: str | None = None, *, host: PluginHost | None = None) -> list[str]:
    """Return registered model names, optionally filtered by a glob pattern."""
    return _host(host).models.names(pattern)


def list_distillers(pattern: str | None = None, *, host: PluginHost | None = None) -> list[str]:
    """Return registered distiller names, optionally filtered by a glob pattern."""
    return _host(host).distillers.names(pattern)


def get_distiller(name: str, *, host: PluginHost | None = None) -> DistillerSpec:
    """Return the spec of distiller ``name``."""
    return _host(host).distillers.get(name)


def list_datasets(pattern: str | None = None, *, host: PluginHost | None = None) -> list[str]:
    """Return registered dataset names, optionally filtered by a glob pattern."""
    return _host(host).datasets.names(pattern)


def get_dataset(name: str, *, host: PluginHost | None = None) -> DatasetSpec:
    """Return the spec of dataset ``name``."""
    return _host(host).datasets.get(name)


def list_suites(pattern: str | None = None, *, host: PluginHost | None = None) -> list[str]:
    """Return registered suite names, optionally filtered by a glob pattern."""
    return _host(host).suites.names(pattern)


def get_suite(name: str, *, host: PluginHost | None = None) -> SuiteSpec:
    """Return the spec of suite ``name``."""
    return _host(host).suites.get(name)
