"""DOT: Zhao, Cui, Song & Liang, "DOT: A Distillation-Oriented Trainer", ICCV 2023.

DOT changes the optimiser, not the loss: SGD keeps separate momentum buffers
for the gradients of the task (CE) loss and of the distillation loss, with
μ_task = μ − Δ and μ_kd = μ + Δ, so that the distillation gradient dominates
the update. The loss is KD's (Hinton et al.) with its usual weights.

The update follows MDistiller's ``DistillationOrientedTrainer``
(``mdistiller/engine/dot.py``, used by ``DOT.train_iter`` in
``mdistiller/engine/trainer.py``), per parameter p with CE gradient g and KD
gradient k (both set, which is the case for every parameter of a KD student):

    b_task ← μ_task·b_task + g + wd·p        p ← p − lr·b_task
    b_kd   ← μ_kd·b_kd + k                    p ← p − lr·b_kd

Weight decay goes into the task buffer only; a buffer starts as its first
gradient (as in ``torch.optim.SGD``, no dampening, no Nesterov). A parameter
with only one of the two gradients uses the mean momentum (μ_task + μ_kd)/2 on
that buffer and takes the weight decay there; on its very first KD-only step
the released code omits the weight decay, and so do we.

CIFAR defaults: MDistiller's ``configs/cifar100/dot/*.yaml`` run KD (T = 4,
CE 0.1, KD 0.9 from ``CFG.KD``) with ``TRAINER: dot`` and Δ = 0.075 (0.09 on
ImageNet) over the recipe's momentum 0.9.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
import torch.nn.functional as F

from kdbench import Batch, DistillContext, Distiller, DistillerSpec, OptimizerSettings, Progress, Signals, hookimpl
from kdbench.losses import kd_loss

__all__ = ["DOT", "DistillationOrientedTrainer"]

#: Loss terms whose gradient is the "task" gradient; every other term is distillation.
TASK_TERMS = frozenset({"ce"})


class DistillationOrientedTrainer(torch.optim.Optimizer):
    """SGD with one momentum buffer for the task gradient and one for the distillation gradient.

    Use: backward the distillation loss, :meth:`record_kd_gradients`, zero the
    gradients, backward the task loss, :meth:`step`.
    """

    def __init__(
        self,
        params: Iterable[torch.nn.Parameter],
        lr: float,
        momentum: float,
        momentum_kd: float,
        weight_decay: float = 0.0,
    ) -> None:
        if lr < 0 or momentum < 0 or momentum_kd < 0 or weight_decay < 0:
            raise ValueError("DOT needs non-negative lr, momenta and weight decay")
        defaults = {"lr": lr, "momentum": momentum, "momentum_kd": momentum_kd, "weight_decay": weight_decay}
        super().__init__(params, defaults)
        self._kd_grads: list[list[torch.Tensor | None]] | None = None

    @torch.no_grad()
    def record_kd_gradients(self) -> None:
        """Remember the current gradients as the distillation gradients of the next :meth:`step`."""
        self._kd_grads = [[p.grad for p in group["params"]] for group in self.param_groups]

    @torch.no_grad()
    def step(self, closure: None = None) -> None:  # type: ignore[override]
        """Update every parameter from its task gradient (``.grad``) and its recorded distillation gradient."""
        if closure is not None:
            raise ValueError("DistillationOrientedTrainer does not take a closure")
        kd_grads = self._kd_grads or [[None] * len(group["params"]) for group in self.param_groups]
        for group, group_kd in zip(self.param_groups, kd_grads):
            for p, kd_grad in zip(group["params"], group_kd):
                self._update(p, p.grad, kd_grad, group)
        self._kd_grads = None

    def _update(
        self, p: torch.Tensor, task_grad: torch.Tensor | None, kd_grad: torch.Tensor | None, group: dict
    ) -> None:
        lr, wd = group["lr"], group["weight_decay"]
        shared = (group["momentum"] + group["momentum_kd"]) / 2
        state = self.state[p]
        if task_grad is not None:
            momentum = group["momentum"] if kd_grad is not None else shared
            buffer = _accumulate(state, "momentum_buffer", task_grad.add(p, alpha=wd) if wd else task_grad, momentum)
            p.add_(buffer, alpha=-lr)
        if kd_grad is not None:
            if task_grad is not None or "momentum_kd_buffer" not in state:
                step, momentum = kd_grad, group["momentum_kd"]
            else:
                step, momentum = (kd_grad.add(p, alpha=wd) if wd else kd_grad), shared
            buffer = _accumulate(state, "momentum_kd_buffer", step, momentum)
            p.add_(buffer, alpha=-lr)


def _accumulate(state: dict, key: str, step: torch.Tensor, momentum: float) -> torch.Tensor:
    """Return ``state[key] ← momentum·state[key] + step``, starting the buffer at ``step``."""
    buffer = state.get(key)
    if buffer is None:
        buffer = state[key] = step.detach().clone()
    else:
        buffer.mul_(momentum).add_(step)
    return buffer


class DOT(Distiller):
    """KD's loss, minimised by the distillation-oriented trainer (separate CE and KD momenta)."""

    def __init__(
        self,
        student: torch.nn.Module,
        teacher: torch.nn.Module | None,
        context: DistillContext | None,
        temperature: float = 4.0,
        ce_weight: float = 0.1,
        kd_weight: float = 0.9,
        delta: float = 0.075,
    ):
        super().__init__()
        self.temperature = temperature
        self.ce_weight = ce_weight
        self.kd_weight = kd_weight
        self.delta = delta

    def loss_terms(
        self, student: Signals, teacher: Signals | None, batch: Batch, progress: Progress
    ) -> dict[str, torch.Tensor]:
        """Return the weighted CE and KD terms (KD's loss)."""
        assert teacher is not None
        return {
            "ce": self.ce_weight * F.cross_entropy(student.logits, batch.targets),
            "kd": self.kd_weight * kd_loss(student.logits, teacher.logits, self.temperature),
        }

    def make_optimizer(
        self, parameters: list[torch.nn.Parameter], settings: OptimizerSettings
    ) -> torch.optim.Optimizer:
        """Return DOT over the recipe's SGD settings: momenta μ ∓ Δ for the task and distillation buffers."""
        if settings.nesterov:
            raise ValueError("DOT is defined for plain momentum SGD; the recipe asks for Nesterov momentum")
        return DistillationOrientedTrainer(
            parameters,
            lr=settings.lr,
            momentum=settings.momentum - self.delta,
            momentum_kd=settings.momentum + self.delta,
            weight_decay=settings.weight_decay,
        )

    def step(self, terms: Mapping[str, torch.Tensor], optimizer: torch.optim.Optimizer) -> None:
        """Backward the distillation terms and record them, then backward the task terms and step."""
        if not isinstance(optimizer, DistillationOrientedTrainer):
            super().step(terms, optimizer)
            return
        task = [term.float() for name, term in terms.items() if name in TASK_TERMS]
        distill = [term.float() for name, term in terms.items() if name not in TASK_TERMS]
        optimizer.zero_grad(set_to_none=True)
        if distill:
            torch.stack(distill).sum().backward(retain_graph=bool(task))
        optimizer.record_kd_gradients()
        optimizer.zero_grad(set_to_none=True)
        if task:
            torch.stack(task).sum().backward()
        optimizer.step()


@hookimpl
def kdbench_register_distillers() -> list[DistillerSpec]:
    return [
        DistillerSpec(
            name="dot",
            builder=DOT,
            description="KD trained by DOT: separate momenta for CE (μ−Δ) and KD (μ+Δ) gradients",
            citation="Zhao, Cui, Song & Liang, ICCV 2023 (arXiv:2307.08436)",
            family="logit",
        )
    ]
