"""Cohorts: runs of one teacher, seed, dataset and recipe trained in lockstep, one teacher pass per step.

The engine draws each epoch's order and views from (seed, epoch) alone (:func:`~kdbench.engine.draw_epoch`),
so every run of one pair and seed sees the same batches. A cohort draws them once, runs the
frozen teacher once per step for the union of the signals its members read (or reads its
logits from a teacher table), then lets each member do its own student forward, loss and
update — one member at a time, so no two members' activations are held at once.

Each member's numbers equal its solo run's: it sees only the signals it asked for, its
methods draw from their own copy of the epoch generator's state, the global RNG is swapped
per member (as if it ran alone), and it checkpoints, resumes and finishes in its own run
directory. A member that raises or diverges leaves the cohort; the others go on. A member
must train on the engine's batches as they are (no views of its own, no phases):
:func:`lockstep_refusal` says why one cannot.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from kdbench.distiller import Distiller, Progress
from kdbench.engine import (
    LoaderClock,
    Observer,
    RunState,
    Silent,
    add_terms,
    end_epoch,
    finish_run,
    forward_signals,
    resume_state,
)
from kdbench.errors import KdbenchError
from kdbench.features import FeatureCapture, Signals, restrict_signals
from kdbench.records import RunInfo, RunResult

__all__ = ["CohortMember", "lockstep_refusal", "train_cohort", "train_cohort_epoch"]


def lockstep_refusal(distiller: Distiller) -> str:
    """Return why a method cannot train in a cohort (its own views, phases), or ``""`` when it can."""
    if type(distiller).prepare_batch is not Distiller.prepare_batch:
        return f"{type(distiller).__name__} makes its own views (prepare_batch)"
    if distiller.phases():
        return f"{type(distiller).__name__} has phases before its main training"
    return ""


def _rng_state(device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
    cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    return torch.get_rng_state(), cuda


def _set_rng_state(state: tuple[torch.Tensor, torch.Tensor | None], device: torch.device) -> None:
    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state(state[1], device)


@dataclass(eq=False)
class CohortMember:
    """One run of a cohort: its info, engine state and final extras, with the global RNG as it was built.

    Build each member's state right after seeding the global RNG for it (as for a solo run);
    the member keeps the RNG state that followed, and gets it back before each of its steps.
    """

    info: RunInfo
    state: RunState
    final_extras: Mapping[str, Any] | None = None
    rng: tuple[torch.Tensor, torch.Tensor | None] = field(init=False)
    seconds: float = field(default=0.0, init=False)

    def __post_init__(self) -> None:
        self.rng = _rng_state(self.state.options.device)

    def swap_in(self) -> None:
        """Make the global RNG this member's."""
        _set_rng_state(self.rng, self.state.options.device)

    def swap_out(self) -> None:
        """Keep where this member left the global RNG."""
        self.rng = _rng_state(self.state.options.device)


def _check_shared(members: Sequence[CohortMember]) -> None:
    """Refuse members that do not share teacher, seed, recipe, data and device, or cannot train in lockstep."""
    first = members[0].state
    for member in members:
        state = member.state
        shared = (
            state.teacher is first.teacher
            and state.seed == first.seed
            and state.recipe == first.recipe
            and state.dataset == first.dataset
            and state.source is first.source
            and state.options == first.options
            and state.teacher_table is first.teacher_table
        )
        if not shared:
            raise KdbenchError(
                f"run {member.info.run_id} cannot join the cohort of {members[0].info.run_id}: teacher, seed, "
                "recipe, data, options and teacher table must be the same objects"
            )
        refusal = lockstep_refusal(state.distiller)
        if refusal:
            raise KdbenchError(f"run {member.info.run_id} cannot train in a cohort: {refusal}")


class _Epoch:
    """One epoch of a cohort: each training member's captures, optimiser, generator and loss sums."""

    def __init__(self, members: list[CohortMember], position: int) -> None:
        self.members = members
        self.position = position
        first = members[0].state
        self.segment = first.segment_at(position)[0]
        self.setups = {id(m): m.state.start_epoch_of(position) for m in members}
        self.draw = first.draw(position)
        self.generators = {id(m): self.draw.method_generator() for m in members}
        self.wanted = {id(m): m.state.distiller.signals(None)[1] for m in members}
        # Students only: the cohort's one teacher capture serves every member.
        self.captures = {id(m): m.state.student_capture(self.segment) for m in members}
        self.sums: dict[int, dict[str, torch.Tensor]] = {id(m): {} for m in members}
        self.failures: dict[int, BaseException] = {}

    def teacher_capture(self) -> FeatureCapture | None:
        """Return one capture of every teacher signal a live member reads (None: no teacher pass needed)."""
        first = self.members[0].state
        union = frozenset().union(*(self.wanted[id(m)] for m in self.members if not m.state.table_serves(self.segment)))
        if first.teacher is None or not union:
            return None
        return FeatureCapture(first.teacher.module, union)

    def close(self) -> None:
        for capture in self.captures.values():
            if capture is not None:
                capture.close()


def _teacher_pass(
    epoch: _Epoch, capture: FeatureCapture | None, batch: Any, views: Any, shared_seconds: list[float]
) -> tuple[Signals | None, Signals | None]:
    """Return (live signals, table logits) of the teacher for this batch, each computed once for the cohort."""
    tick = time.perf_counter()
    first = epoch.members[0].state
    with torch.autocast(first.options.device.type, dtype=torch.bfloat16, enabled=first.options.bf16):
        live = None
        if capture is not None:
            with torch.no_grad():
                live = forward_signals(capture, batch)
        table = None
        if first.teacher_table is not None and any(m.state.table_serves(epoch.segment) for m in epoch.members):
            table = Signals(logits=first.teacher_table.logits(batch.indices, views))
    shared_seconds[0] += time.perf_counter() - tick
    return live, table


def _versions(signals: Signals | None) -> tuple[int, ...]:
    if signals is None:
        return ()
    tensors = [signals.logits]
    for name in ("feats", "preact"):
        value = getattr(signals, name)
        if type(value) is list:  # not a signal left uncaptured (a _NotRequested)
            tensors += value
    tensors += [t for t in (signals.embedding, signals.pooled_map) if t is not None]
    return tuple(t._version for t in tensors)


def _train_epoch(epoch: _Epoch) -> tuple[dict[int, dict[str, torch.Tensor]], float]:
    """Train one epoch of every member in lockstep; return each member's mean terms and the shared seconds."""
    draw, segment = epoch.draw, epoch.segment
    first = epoch.members[0].state
    capture = epoch.teacher_capture()
    shared = [0.0]
    try:
        clock = LoaderClock()  # one loader serves every member: each reports its throughput
        for member in epoch.members:
            member.state.clock = clock
        batches = first.batches(draw)
        for step in range(draw.steps):
            tick = time.perf_counter()
            batch, views = next(batches)  # the batch's crops, flips and strong copy: made once for the cohort
            shared[0] += time.perf_counter() - tick
            live, table = _teacher_pass(epoch, capture, batch, views, shared)
            for member in [m for m in epoch.members if id(m) not in epoch.failures]:
                full = table if member.state.table_serves(segment) else live
                before = _versions(full)
                teacher = None if full is None else restrict_signals(full, epoch.wanted[id(member)])
                _member_step(epoch, member, step, batch, teacher)
                if _versions(full) != before:
                    epoch.failures.setdefault(id(member), KdbenchError(
                        f"{type(member.state.distiller).__name__} changed the teacher's signals in place; a cohort "
                        "shares them, so the method must not (train it with --cohorts off, or copy before changing)"
                    ))  # fmt: skip
                    live, table = _teacher_pass(epoch, capture, batch, views, shared)  # fresh for the others
    finally:
        if capture is not None:
            capture.close()
        epoch.close()
    by_key = {id(m): m for m in epoch.members}
    means = {key: by_key[key].state.mean_terms(sums, draw.steps) for key, sums in epoch.sums.items()}
    return means, shared[0]


def train_cohort_epoch(
    members: Sequence[CohortMember], position: int
) -> tuple[list[dict[str, torch.Tensor] | BaseException], float]:
    """Train global epoch ``position`` of every member in lockstep, without checkpoints or tests.

    Returns each member's mean loss terms (device tensors, no host sync) or its error, and the
    seconds of the shared work (data and teacher). :func:`train_cohort` is this plus everything
    around an epoch; the benchmarks time this alone.
    """
    _check_shared(members)
    epoch = _Epoch(list(members), position)
    means, shared = _train_epoch(epoch)
    return [epoch.failures.get(id(m)) or means[id(m)] for m in members], shared


def _member_step(epoch: _Epoch, member: CohortMember, step: int, batch: Any, teacher: Signals | None) -> None:
    """Run one member's student step (its RNG swapped in); a failure takes it out of the cohort."""
    segment, epoch_index, optimizer = epoch.setups[id(member)]
    progress = Progress(epoch_index, segment.epochs, step, epoch.draw.steps, phase=segment.name)
    tick = time.perf_counter()
    member.swap_in()
    try:
        batch = replace(batch, generator=epoch.generators[id(member)])
        terms = member.state.student_step(segment, epoch.captures[id(member)], teacher, batch, progress, optimizer)
        add_terms(epoch.sums[id(member)], terms)
    except KeyboardInterrupt:
        raise
    except Exception as exc:  # one member's failure does not stop the others
        epoch.failures[id(member)] = exc
    finally:
        member.swap_out()
        member.seconds += time.perf_counter() - tick


def train_cohort(members: Sequence[CohortMember], observer: Observer | None = None) -> list[RunResult | BaseException]:
    """Train (or resume) every member to its last epoch in lockstep; return each one's result or error.

    Each member resumes from its own checkpoint; one ahead of the others (a cohort killed while
    checkpointing) sits out the epochs it has. A member's epoch seconds are its own steps and
    test pass plus an equal share of the cohort's data and teacher work. Errors other than
    KeyboardInterrupt are returned in the member's place; the others go on.
    """
    observer = observer or Silent()
    members = list(members)
    _check_shared(members)
    outcomes: dict[int, RunResult | BaseException] = {}
    for member in members:
        try:
            member.info.work_dir.mkdir(parents=True, exist_ok=True)
            resume_state(member.state, member.info.work_dir)
            observer.notify("kdbench_run_start", run=member.info)
        except KeyboardInterrupt:
            raise
        except Exception as exc:
            outcomes[id(member)] = exc
    total = members[0].state.total_epochs
    active = [m for m in members if id(m) not in outcomes]
    diverged: set[int] = set()
    for position in range(min((m.state.start_epoch for m in active), default=total), total):
        training = [m for m in active if m.state.start_epoch <= position]
        for member in training:
            member.seconds = 0.0
        epoch = _Epoch(training, position)
        means, shared = _train_epoch(epoch)
        for member in training:
            outcome = epoch.failures.get(id(member)) or _end_member_epoch(
                member, position, means[id(member)], shared / len(training), observer
            )
            if outcome == "diverged":
                diverged.add(id(member))
            elif outcome is not None:
                outcomes[id(member)] = outcome
            if outcome is not None:
                active.remove(member)
    for member in members:
        if id(member) not in outcomes:
            status = "diverged" if id(member) in diverged else "finished"
            try:
                outcomes[id(member)] = finish_run(member.info, member.state, status, member.final_extras)
            except KeyboardInterrupt:
                raise
            except Exception as exc:
                outcomes[id(member)] = exc
    return [outcomes[id(m)] for m in members]


def _end_member_epoch(
    member: CohortMember, position: int, sums: Mapping[str, torch.Tensor], shared: float, observer: Observer
) -> BaseException | str | None:
    """Close a member's epoch (test, record, checkpoint, notify); return its error, ``"diverged"``, or None."""
    try:
        record = end_epoch(member.info, member.state, position, sums, member.seconds + shared, observer)
    except KeyboardInterrupt:
        raise
    except Exception as exc:
        return exc
    return "diverged" if record is None else None
