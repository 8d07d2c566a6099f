"""Shared losses (kdbench.losses) not covered by a method's tests: spatial matching and the warm-up ramp.

``kd_loss`` is checked against a loop derivation in ``test_distillers.py`` and
``dkd_parts`` against renormalised probabilities in ``test_methods_logit.py``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kdbench import Progress
from kdbench.losses import linear_ramp, match_spatial_size


def test_match_spatial_size_pools_the_larger_map_to_the_smaller() -> None:
    small, large = torch.randn(2, 3, 4, 4), torch.randn(2, 5, 8, 8)
    student, teacher = match_spatial_size(large, small)
    assert torch.equal(student, F.adaptive_avg_pool2d(large, (4, 4))) and teacher is small
    student, teacher = match_spatial_size(small, large)
    assert student is small and torch.equal(teacher, F.adaptive_avg_pool2d(large, (4, 4)))
    assert student.shape == (2, 3, 4, 4) and teacher.shape == (2, 5, 4, 4)


def test_match_spatial_size_leaves_maps_of_equal_height_alone() -> None:
    a, b = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    student, teacher = match_spatial_size(a, b)
    assert student is a and teacher is b


def test_linear_ramp_counts_epochs_from_one_and_is_off_without_warmup() -> None:
    def at(epoch: int) -> Progress:
        return Progress(epoch=epoch, epochs=10, step=0, steps_per_epoch=1)

    assert [linear_ramp(at(e), 4) for e in range(5)] == [0.25, 0.5, 0.75, 1.0, 1.0]
    assert [linear_ramp(at(e), 4, first_epoch=0) for e in range(5)] == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert linear_ramp(at(0), 0) == 1.0
