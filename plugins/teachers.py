"""The widely shared CIFAR-100 teacher checkpoints (MDistiller release "checkpoints", file cifar_teachers.tar).

Each file ``cifar_teachers/<arch>_vanilla/ckpt_epoch_240.pth`` is a dict whose
``"model"`` entry is the state_dict of the CRD/MDistiller zoo architecture.
Extract the archive under ``--teacher-root`` (default ``./teachers``) and name
the teacher in a suite's ``[teachers]`` table or with ``--teacher ARCH=NAME``.
Reported top-1 values: MDistiller README / methods reference.
"""

from __future__ import annotations

from kdbench import TeacherSpec, hookimpl

__all__: list[str] = []

_RELEASE = "https://github.com/megvii-research/mdistiller/releases/tag/checkpoints (cifar_teachers.tar)"
_CITATION = "Zhao et al., Decoupled Knowledge Distillation, CVPR 2022 (MDistiller); CRD, Tian et al., ICLR 2020"

#: architecture → top-1 (%) of the released checkpoint on the CIFAR-100 test set.
_REPORTED = {
    "resnet56": 72.34,
    "resnet110": 74.31,
    "resnet32x4": 79.42,
    "wrn_40_2": 75.61,
    "vgg13": 74.64,
    "ResNet50": 79.34,
}


@hookimpl
def kdbench_register_teachers() -> list[TeacherSpec]:
    return [
        TeacherSpec(
            name=f"{arch}@mdistiller",
            model=arch,
            dataset="cifar100",
            path=f"cifar_teachers/{arch}_vanilla/ckpt_epoch_240.pth",
            description=f"{arch} trained 240 epochs on CIFAR-100 (reference release)",
            state_key="model",
            url=_RELEASE,
            reported_top1=top1,
            citation=_CITATION,
        )
        for arch, top1 in _REPORTED.items()
    ]
