"""torchvision's ImageNet ``IMAGENET1K_V1`` weights as teachers: the weights of the papers' ImageNet tables.

Named explicitly, never ``DEFAULT``: for ResNet-50 that is V2, 4.7 points stronger than the papers'
teacher (../shared/reference/imagenet.md §2.3; torchvision's ``ResNet50_Weights.DEFAULT`` is
``IMAGENET1K_V2``). A file is read from ``--teacher-root/<file>`` or torch's hub cache
(``$TORCH_HOME/hub/checkpoints/<file>``, where ``torchvision.models.resnet50(weights="IMAGENET1K_V1")``
downloads it); the hex after the dash in the name is the start of the file's SHA-256 (torchvision's
naming), checked before use. File names and top-1 (ImageNet-1K ``acc@1``) are torchvision's
published metadata of each ``ResNet*_Weights.IMAGENET1K_V1``.
"""

from __future__ import annotations

from kdbench import TeacherSpec, hookimpl

__all__: list[str] = []

_TORCHVISION_URL = "https://download.pytorch.org/models/"
#: architecture → (torchvision file of IMAGENET1K_V1, its published ImageNet-1K top-1).
_TORCHVISION_V1 = {
    "resnet18": ("resnet18-f37072fd.pth", 69.758),
    "resnet34": ("resnet34-b627a593.pth", 73.314),
    "resnet50": ("resnet50-0676ba61.pth", 76.130),
    "resnet101": ("resnet101-63fe2227.pth", 77.374),
}


def _torchvision_teachers() -> list[TeacherSpec]:
    return [
        TeacherSpec(
            name=f"{arch}@torchvision-v1",
            model=arch,
            dataset="imagenet",
            path=file,
            description=f"torchvision {arch} IMAGENET1K_V1 (the papers' ImageNet teacher weights)",
            state_key="",
            sha256=file.removesuffix(".pth").rsplit("-", 1)[1],
            url=_TORCHVISION_URL + file,
            reported_top1=top1,
            citation="torchvision.models ResNet*_Weights.IMAGENET1K_V1 (He et al., CVPR 2016)",
        )
        for arch, (file, top1) in _TORCHVISION_V1.items()
    ]


@hookimpl
def kdbench_register_teachers() -> list[TeacherSpec]:
    return _torchvision_teachers()
