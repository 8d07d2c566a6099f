"""``kdbench new-plugin NAME``: write a ready-to-install plugin package with one distiller and its test.

The package (``kdbench-NAME/``) is what a third-party author publishes: a
``pyproject.toml`` whose entry point in group ``kdbench`` makes the plugin
visible to every kdbench command once installed, a KD-style distiller to edit,
a test that calls :mod:`kdbench.testing`'s contract checks, and a README.
"""

from __future__ import annotations

import importlib.util
import keyword
import re
import textwrap
from importlib import metadata
from pathlib import Path

from kdbench._api import list_distillers
from kdbench.errors import KdbenchError

__all__ = ["check_plugin_name", "plugin_files", "write_plugin"]

_NAME = re.compile(r"[a-z][a-z0-9_]{0,39}\Z")


def check_plugin_name(name: str) -> None:
    """Raise :class:`KdbenchError` unless ``name`` can name a new plugin, its distiller and its package."""
    if not _NAME.match(name) or name.endswith("_") or "__" in name:
        raise KdbenchError(
            f"plugin name {name!r} is not valid: use lower-case letters, digits and single underscores, "
            "starting with a letter (at most 40 characters), e.g. 'my_method'"
        )
    if keyword.iskeyword(name):
        raise KdbenchError(f"plugin name {name!r} is a Python keyword; choose another")
    for entry_point in metadata.entry_points(group="kdbench"):
        if entry_point.name == name:
            dist = entry_point.dist.name if entry_point.dist else "an installed distribution"
            raise KdbenchError(f"plugin name {name!r} is already taken by {dist}; choose another")
    if importlib.util.find_spec(f"kdbench_{name}") is not None:
        raise KdbenchError(f"plugin name {name!r}: a package kdbench_{name} is already installed; choose another")
    if name in list_distillers():  # the skeleton registers a distiller called `name` too
        raise KdbenchError(f"plugin name {name!r} is already a registered distiller; choose another")


def _class_name(name: str) -> str:
    return "".join(part.capitalize() for part in name.split("_"))


def plugin_files(name: str) -> dict[str, str]:
    """Return the skeleton of plugin ``name``: relative path → file text."""
    check_plugin_name(name)
    values = {"name": name, "cls": _class_name(name), "package": f"kdbench_{name}"}
    return {
        path.format(**values): textwrap.dedent(template).lstrip("\n").format(**values)
        for path, template in _TEMPLATES.items()
    }


def write_plugin(name: str, directory: Path = Path("."), *, force: bool = False) -> Path:
    """Write the skeleton of plugin ``name`` into ``directory/kdbench-NAME`` and return that path.

    An existing non-empty target is refused unless ``force``; then the
    skeleton's files are overwritten and any other file there is left alone.
    """
    files = plugin_files(name)
    root = Path(directory) / f"kdbench-{name}"
    if root.exists() and not root.is_dir():
        raise KdbenchError(f"{root} exists and is not a directory")
    if root.is_dir() and any(root.iterdir()) and not force:
        raise KdbenchError(f"{root} already exists and is not empty; choose another --dir or pass --force")
    for relative, text in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return root


# Templates: str.format fields {name}, {cls}, {package}; literal braces are doubled.
_TEMPLATES: dict[str, str] = {}

_TEMPLATES["pyproject.toml"] = """
[build-system]
requires = ["setuptools>=64"]
build-backend = "setuptools.build_meta"

[project]
name = "kdbench-{name}"
version = "0.1.0"
description = "The {name} distillation method as a kdbench plugin"
readme = "README.md"
requires-python = ">=3.10"
dependencies = ["kdbench"]

[project.optional-dependencies]
test = ["pytest>=8"]

# This entry point is how kdbench finds the plugin: `kdbench plugins` lists it as "{name}",
# `-p no:{name}` disables it. The target is the module holding the @kdbench.hookimpl functions.
[project.entry-points.kdbench]
{name} = "{package}"

[tool.setuptools.packages.find]
where = ["src"]
"""

_TEMPLATES["src/{package}/__init__.py"] = '''
"""{name}: a knowledge-distillation method for kdbench.

Replace this paragraph with the method and its paper ("Author et al., Venue Year"). kdbench
shows the spec's description and citation in `kdbench list distillers` and in leaderboards.

The method below is classic soft-target KD (Hinton et al. 2015), a working starting point:
edit :meth:`{cls}.loss_terms`, the hyper-parameters of ``__init__`` and the spec's defaults.
"""

from __future__ import annotations

import kdbench
import torch
import torch.nn.functional as F
from kdbench import Batch, DistillContext, Distiller, DistillerSpec, Progress, Signals, at_least_float32

__all__ = ["{cls}", "soft_target_loss"]


def soft_target_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Return T² · KL(softmax(teacher / T) ‖ softmax(student / T)), averaged over the batch."""
    # Loss maths in float32 even when the models run under bf16 autocast.
    log_p_student = F.log_softmax(at_least_float32(student_logits) / temperature, dim=1)
    log_p_teacher = F.log_softmax(at_least_float32(teacher_logits) / temperature, dim=1)
    kl = F.kl_div(log_p_student, log_p_teacher, log_target=True, reduction="batchmean")
    # T² keeps gradient magnitudes comparable across temperatures (Hinton et al. 2015, section 2).
    return kl * temperature**2


class {cls}(Distiller):
    """Match the teacher's temperature-softened class distribution (edit me)."""

    # What the engine captures from each model for loss_terms: "logits", "feats" (one tensor per
    # stage), "preact" (stages before their last ReLU), "embedding" (the pooled features),
    # "pooled_map" (the last map, which global pooling averages into the embedding).
    # Ask only for what the loss reads: with an empty teacher set the teacher is never run.
    student_signals = frozenset({{"logits"}})
    teacher_signals = frozenset({{"logits"}})

    def __init__(
        self,
        student: torch.nn.Module,
        teacher: torch.nn.Module | None,
        context: DistillContext,
        temperature: float = 4.0,
        ce_weight: float = 0.1,
        kd_weight: float = 0.9,
    ):
        super().__init__()
        # Keyword arguments are the method's hyper-parameters; their defaults here are the spec's
        # `defaults` (kdbench reads them from this signature: write the paper's values once, here),
        # updated by a suite's [distiller_params.{name}] table.
        # `context` gives num_classes and the shapes of both models' signals. Connectors or
        # embeddings a method trains are submodules created here: the engine optimises them with
        # the student and reports them as training-only parameters. Never store the student or
        # the teacher as attributes of the distiller.
        self.temperature = temperature
        self.ce_weight = ce_weight
        self.kd_weight = kd_weight

    def loss_terms(
        self, student: Signals, teacher: Signals | None, batch: Batch, progress: Progress
    ) -> dict[str, torch.Tensor]:
        """Return the weighted loss terms; the engine sums them, logs each by name, and minimises the sum."""
        assert teacher is not None  # teacher_signals is not empty, so the engine ran the teacher
        # batch.targets are the labels, batch.indices the samples' positions in the train set;
        # progress.fraction (0 → 1 over training) is there for warm-ups and schedules.
        return {{
            "ce": self.ce_weight * F.cross_entropy(student.logits, batch.targets),
            "kd": self.kd_weight * soft_target_loss(student.logits, teacher.logits, self.temperature),
        }}


@kdbench.hookimpl
def kdbench_register_distillers() -> list[DistillerSpec]:
    """Tell kdbench about the method: its name, builder (whose keyword defaults are the published ones), citation."""
    return [
        DistillerSpec(
            name="{name}",
            builder={cls},
            description="Soft-target KD (template: describe the method in one line)",
            citation="Hinton, Vinyals & Dean, NIPS Deep Learning Workshop 2015 (template: cite the method's paper)",
            family="logit",  # "logit" or "feature": the group of the leaderboard the method is listed in
        )
    ]
'''

_TEMPLATES["tests/test_{name}.py"] = '''
"""The {name} plugin against kdbench's contract checks (kdbench.testing)."""

from __future__ import annotations

import kdbench
from kdbench.testing import check_distiller

from {package} import kdbench_register_distillers


def test_distiller_keeps_the_contract() -> None:
    # Builds the method on a tiny teacher/student pair and trains it a few steps on synthetic data:
    # an AssertionError names the broken part of the contract.
    (spec,) = kdbench_register_distillers()
    check_distiller(spec)


def test_installed_plugin_registers_the_distiller() -> None:
    # Through the entry point, as every kdbench command sees it: needs `pip install -e .` first.
    assert "{name}" in kdbench.list_distillers()
    check_distiller("{name}")
'''

_TEMPLATES["README.md"] = """
# kdbench-{name}

The **{name}** knowledge-distillation method as a kdbench plugin (generated by
`kdbench new-plugin {name}`: describe the method and cite its paper here).

## Install

Into the environment kdbench is installed in:

```bash
pip install -e ".[test]"
kdbench plugins                  # lists "{name}  kdbench-{name} 0.1.0  loaded  distillers: {name}"
kdbench list distillers {name}
```

## Test

```bash
pytest                           # tests/test_{name}.py: kdbench.testing.check_distiller, by spec and by name
```

## Run it in a suite

Any suite can list `{name}` among its distillers. A quick one on the digits data kdbench ships
(CPU, minutes), saved as `{name}-smoke.toml`:

```toml
name = "{name}-smoke"
description = "{name} vs vanilla and KD on digits"
dataset = "digits"
distillers = ["vanilla", "kd", "{name}"]
seeds = [0, 1, 2]

[recipe]
epochs = 30
lr_milestones = [20, 25]

[[pairs]]
teacher = "digits_cnn_l"
student = "digits_cnn_s"

# [distiller_params.{name}]      # override the spec's defaults for this suite
# temperature = 2.0
```

```bash
kdbench run --suite {name}-smoke.toml
kdbench leaderboard --suite {name}-smoke.toml --out leaderboards
kdbench run --suite smoke -p no:{name}     # disable the plugin like any other
```

## Edit

`src/{package}/__init__.py` holds the method (`{cls}`, a `kdbench.Distiller`) and its
registration (`kdbench_register_distillers`). Keep the keyword defaults of `__init__` (the spec's
`defaults`, read from its signature) equal to the paper's and cite it in `citation`; `kdbench.testing`
keeps checking the contract as the method grows.
"""
