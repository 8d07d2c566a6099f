"""The distiller contract, checked for every registered distiller (timm-style: a new method is tested on arrival).

The checks are :func:`kdbench.testing.check_distiller`, the very function third-party authors call. On the
kit's tiny CIFAR-shaped models (tiny_teacher → tiny_student, different widths; a method that refuses them
with a KdbenchError, as FSP does, on equal widths) and through the real engine it checks the spec
(description, citation, family, JSON defaults), the method's own parts (no student/teacher submodules,
training-only parameters reported, valid signals, strict state_dict round trip), its phases (they train
their parameters, BN frozen in eval phases), a main epoch (finite named scalar terms, every student
parameter and the method's own reached, the teacher unchanged, in eval mode and without gradient),
determinism, that no unregistered tensor is trained, that the loss falls on a fixed batch, and exact resume
from a checkpoint.
"""

from __future__ import annotations

import pytest

import kdbench
from kdbench.errors import KdbenchError
from kdbench.testing import _PAIRS, _DistillerBench, check_distiller

DISTILLERS = kdbench.list_distillers()


@pytest.mark.parametrize("name", DISTILLERS)
def test_distiller_contract(host: kdbench.PluginHost, name: str) -> None:
    check_distiller(name, host=host)


def test_every_distiller_is_checked() -> None:
    assert {"vanilla", "kd", "fitnet", "crd", "sskd", "fsp"} <= set(DISTILLERS)


@pytest.mark.parametrize("name", ["fsp", "kdsvd"])
def test_channel_matching_methods_refuse_different_widths_and_run_on_equal_ones(
    host: kdbench.PluginHost, name: str
) -> None:
    # FSP and KD-SVD compare channels one to one: the different-width pair is refused with a reason, so the
    # contract runs them on the equal-width pair (and a method refusing that too would fail it).
    bench = _DistillerBench(host.distillers.get(name), {}, steps=1)
    with pytest.raises(KdbenchError, match="channel"):
        bench.state(_PAIRS[0])
    assert bench.pair() == _PAIRS[1]
