"""kdbench-dist: DIST (Huang et al., NeurIPS 2022) as a third-party kdbench plugin.

Installed, this one module is the entry point ``dist`` in group ``kdbench``; it
registers the distiller ``dist`` and the suite ``dist-smoke`` (a TOML file
shipped as package data) through the same hooks kdbench's own plugins use.
"""

from __future__ import annotations

from importlib import resources

from kdbench import DistillerSpec, SuiteSpec, hookimpl, load_suite_file

from kdbench_dist.dist import DIST, dist_relations, pearson_rows

__all__ = ["DIST", "dist_relations", "pearson_rows"]
__version__ = "0.1.0"


@hookimpl
def kdbench_register_distillers() -> list[DistillerSpec]:
    return [
        DistillerSpec(
            name="dist",
            builder=DIST,
            description="DIST: Pearson-correlation relations, inter-class (per sample) and intra-class (per class "
            "over the batch), of τ-softened probabilities instead of KL",
            citation="Huang, You, Wang, Qian & Xu, NeurIPS 2022 (arXiv:2205.10536); defaults: the paper's CIFAR-100 "
            "setting and the authors' dist_kd.py (github.com/hunto/DIST_KD)",
            family="logit",
        )
    ]


@hookimpl
def kdbench_register_suites() -> list[SuiteSpec]:
    with resources.as_file(resources.files(__name__).joinpath("dist-smoke.toml")) as path:
        return [load_suite_file(path)]
