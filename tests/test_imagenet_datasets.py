"""The streaming datasets imagenet, imagenet100 and flowers102 read from generated files in their exact layouts."""

from __future__ import annotations

import base64
import io
import os
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.datasets
import torchvision.datasets.utils
from kdbench_plugins.datasets import flowers102, imagenet100, tiny_imagenet
from kdbench_plugins.datasets._image_folder import scan_image_folder
from PIL import Image

import kdbench
from kdbench import ImageData, ImageFiles, ResizedCropSpec
from kdbench.errors import DataNotFoundError

SIZES = ((20, 30), (30, 20), (17, 17))
CMC = imagenet100.wnids()
#: 1000 class folders: the 100 CMC wnids and 900 made-up ones, interleaved in sorted order.
WNIDS = sorted({*CMC, *(f"n{n:08d}" for n in range(1_000_000, 100_000_000, 110_000)[:900])})


def _jpegs() -> list[bytes]:
    """Return tiny JPEG files of the sizes in SIZES, each a different colour."""
    found = []
    for index, size in enumerate(SIZES):
        buffer = io.BytesIO()
        Image.new("RGB", size, (60 * index, 90, 200 - 50 * index)).save(buffer, format="JPEG")
        found.append(buffer.getvalue())
    return found


JPEGS = _jpegs()


def _write_classes(split: Path, wnids: list[str], per_class: int = 1) -> None:
    """Write ``split/<wnid>/<wnid>_<k>.JPEG`` for every wnid, ``per_class`` images each."""
    for index, wnid in enumerate(wnids):
        (split / wnid).mkdir(parents=True)
        for k in range(per_class):
            (split / wnid / f"{wnid}_{k}.JPEG").write_bytes(JPEGS[(index + k) % len(JPEGS)])


def _imagenet(root: Path, wnids: list[str] = WNIDS, folder: str = "imagenet") -> Path:
    """Write ``root/folder/{train,val}`` with 1 train and 1 val image per class (in unsorted order); return it."""
    order = wnids[1::2] + wnids[::2]
    _write_classes(root / folder / "train", order)
    _write_classes(root / folder / "val", order)
    return root / folder


def _load(name: str, root: Path, download: bool = False) -> ImageFiles:
    data = kdbench.get_dataset(name).loader(root, download)
    assert isinstance(data, ImageFiles)
    assert all(Path(f).is_absolute() and Path(f).is_file() for f in data.train_files + data.test_files)
    return data


# --- imagenet -------------------------------------------------------------------------------------------------


def test_the_three_datasets_are_registered_as_streaming() -> None:
    expected = {"imagenet": 1000, "imagenet100": 100, "flowers102": 102}
    for name, classes in expected.items():
        spec = kdbench.get_dataset(name)
        assert (spec.num_classes, spec.image_size, spec.streaming) == (classes, (3, 224, 224), True)
        assert spec.augment == ResizedCropSpec()
        assert (spec.mean, spec.std) == ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    assert set(expected) <= set(kdbench.list_datasets())


def test_imagenet_reads_the_image_folder_layout_as_torchvision_does(tmp_path: Path) -> None:
    assert len(WNIDS) == 1000
    folder = _imagenet(tmp_path)
    first = folder / "train" / WNIDS[0]
    (first / "b.jpeg").write_bytes(JPEGS[0])  # lower-case ending: accepted
    (first / "a.png").write_bytes(JPEGS[1])  # any ImageFolder ending, even if the bytes are a JPEG
    (first / "notes.txt").write_text("not an image", encoding="utf-8")
    (first / "sub").mkdir()
    (first / "sub" / "c.JPEG").write_bytes(JPEGS[2])  # ImageFolder walks sub-folders
    data = _load("imagenet", tmp_path)
    assert (data.num_train, data.num_test) == (1003, 1000)
    assert data.train_labels.dtype == torch.int64 and data.verified is False  # not ILSVRC2012's image counts
    names = [Path(f).relative_to(folder / "train").as_posix() for f in data.train_files[:4]]
    assert names == [
        f"{WNIDS[0]}/a.png",
        f"{WNIDS[0]}/b.jpeg",
        f"{WNIDS[0]}/{WNIDS[0]}_0.JPEG",
        f"{WNIDS[0]}/sub/c.JPEG",
    ]
    index = data.train_files.index(str(folder / "train" / WNIDS[517] / f"{WNIDS[517]}_0.JPEG"))
    assert data.train_labels[index] == 517
    assert data.test_labels.tolist() == list(range(1000))
    assert [Path(f).parent.name for f in data.test_files] == WNIDS
    for split, files, labels in (
        ("train", data.train_files, data.train_labels),
        ("val", data.test_files, data.test_labels),
    ):
        reference = torchvision.datasets.ImageFolder(str(folder / split))
        assert reference.classes == WNIDS
        assert list(zip(files, labels.tolist())) == reference.samples


def test_missing_imagenet_names_the_folder_and_how_to_prepare_it(tmp_path: Path) -> None:
    with pytest.raises(DataNotFoundError) as caught:
        _load("imagenet", tmp_path)
    message = str(caught.value)
    assert f"expected the folder {tmp_path / 'imagenet' / 'train'}" in message
    assert f"--data-root {tmp_path}" in message
    with pytest.raises(DataNotFoundError) as caught:
        _load("imagenet", tmp_path, download=True)
    message = str(caught.value)
    assert "cannot be downloaded automatically" in message and "licence" in message
    for needed in ("ILSVRC2012_img_train.tar", "ILSVRC2012_img_val.tar", "ILSVRC2012_devkit_t12.tar.gz", "split='val'"):
        assert needed in message
    assert f"{tmp_path / 'imagenet'}/train/<wnid>/*.JPEG" in message


def test_imagenet_refuses_a_wrong_class_count_a_val_mismatch_and_an_empty_class(tmp_path: Path, capsys) -> None:
    folder = _imagenet(tmp_path, WNIDS[:999])
    partial = _load("imagenet", tmp_path)  # a partial ImageNet loads, loudly, as unverified data
    assert partial.verified is False and partial.num_train == 999
    assert "has 999 classes, 999 train and 999 val images, not ILSVRC2012's 1000" in capsys.readouterr().err
    _write_classes(folder / "train", ["n99999998", "n99999999"])
    with pytest.raises(DataNotFoundError, match=r"found 1001 class folders in .*imagenet/train, expected 1000"):
        _load("imagenet", tmp_path)
    for extra in ("n99999998", "n99999999"):
        shutil.rmtree(folder / "train" / extra)
    (folder / "train" / WNIDS[999]).mkdir()
    with pytest.raises(DataNotFoundError, match=rf"val differ.*missing in val: {WNIDS[999]}\)"):
        _load("imagenet", tmp_path)
    (folder / "val" / WNIDS[999]).mkdir()
    (folder / "val" / WNIDS[999] / "x.JPEG").write_bytes(JPEGS[0])
    (folder / "val" / "n99999999").mkdir()
    shutil.rmtree(folder / "val" / WNIDS[3])
    with pytest.raises(DataNotFoundError, match=rf"missing in val: {WNIDS[3]}; only in val: n99999999"):
        _load("imagenet", tmp_path)
    shutil.rmtree(folder / "val" / "n99999999")
    _write_classes(folder / "val", [WNIDS[3]])
    with pytest.raises(DataNotFoundError, match=rf"class folder .*train/{WNIDS[999]} holds no image"):
        _load("imagenet", tmp_path)
    (folder / "train" / WNIDS[999] / "y.webp").write_bytes(JPEGS[0])
    assert _load("imagenet", tmp_path).num_train == 1000


def test_scan_image_folder_takes_a_class_list_and_names_missing_folders(tmp_path: Path) -> None:
    _write_classes(tmp_path / "split", ["b", "a", "c"], per_class=2)
    files, labels = scan_image_folder(tmp_path / "split", ["c", "a"])
    assert [Path(f).name for f in files] == ["c_0.JPEG", "c_1.JPEG", "a_0.JPEG", "a_1.JPEG"]
    assert labels.tolist() == [0, 0, 1, 1]
    assert scan_image_folder(tmp_path / "split")[1].tolist() == [0, 0, 1, 1, 2, 2]
    with pytest.raises(DataNotFoundError, match=r"1 class folder\(s\) missing: expected .*split/zz$"):
        scan_image_folder(tmp_path / "split", ["a", "zz"])


# --- imagenet100 ----------------------------------------------------------------------------------------------


def test_the_cmc_class_list_is_shipped_intact() -> None:
    lines = imagenet100.CLASS_FILE.read_text(encoding="utf-8").splitlines()
    listed = [line for line in lines if not line.startswith("#")]
    assert len(listed) == 100 and (listed[0], listed[-1]) == ("n02869837", "n02090622")  # CMC's file order
    assert CMC == sorted(listed) and all(len(w) == 9 and w[0] == "n" and w[1:].isdigit() for w in CMC)
    assert any("github.com/HobbitLong/CMC" in line for line in lines if line.startswith("#"))


def test_imagenet100_reads_its_classes_out_of_a_full_imagenet(tmp_path: Path) -> None:
    others = ["n00000001", "n99999999"]
    folder = _imagenet(tmp_path, [*CMC, *others])
    data = _load("imagenet100", tmp_path)
    assert (data.num_train, data.num_test) == (100, 100)
    assert data.train_labels.tolist() == list(range(100)) and data.test_labels.tolist() == list(range(100))
    assert [Path(f).parent.name for f in data.train_files] == CMC
    assert all(str(folder) in f for f in data.train_files + data.test_files)
    index = data.test_files.index(str(folder / "val" / "n02869837" / "n02869837_0.JPEG"))
    assert data.test_labels[index] == CMC.index("n02869837") == 48


def test_imagenet100_prefers_a_prepared_subset_folder(tmp_path: Path) -> None:
    _imagenet(tmp_path, CMC[:5])  # a full ImageNet without the CMC classes: not read
    subset = _imagenet(tmp_path, CMC, folder="imagenet100")
    data = _load("imagenet100", tmp_path)
    assert data.num_train == 100 and all(f.startswith(str(subset) + "/") for f in data.train_files)


def test_imagenet100_names_a_missing_class_and_a_missing_root(tmp_path: Path) -> None:
    with pytest.raises(DataNotFoundError) as caught:
        _load("imagenet100", tmp_path)
    message = str(caught.value)
    assert f"expected the folder {tmp_path / 'imagenet' / 'train'}" in message
    assert str(tmp_path / "imagenet100") in message and "imagenet100_cmc.txt" in message
    folder = _imagenet(tmp_path, CMC)
    shutil.rmtree(folder / "val" / "n04589890")
    with pytest.raises(
        DataNotFoundError, match=r"ImageNet-100 .*1 class folder\(s\) missing: expected .*val/n04589890"
    ):
        _load("imagenet100", tmp_path)


# --- flowers102 -----------------------------------------------------------------------------------------------


def _element(kind: int, payload: bytes) -> bytes:
    """Return a MAT-file v5 data element: its tag, then ``payload`` padded to 8 bytes."""
    return struct.pack("<II", kind, len(payload)) + payload + b"\0" * (-len(payload) % 8)


def _write_mat(path: Path, **variables: np.ndarray) -> None:
    """Write ``variables`` as MATLAB does: 1×N double arrays whose integer values are stored as uint16, compressed."""
    header = b"MATLAB 5.0 MAT-file, written by kdbench tests".ljust(116) + b"\0" * 8 + struct.pack("<H", 0x0100) + b"IM"
    body = b""
    for name, values in variables.items():
        row = np.asarray(values).reshape(1, -1)
        matrix = (
            _element(6, struct.pack("<II", 6, 0))  # miUINT32 array flags: mxDOUBLE_CLASS
            + _element(5, np.array(row.shape, "<i4").tobytes())  # miINT32 dimensions
            + _element(1, name.encode("ascii"))  # miINT8 name
            + _element(4, row.astype("<u2").tobytes(order="F"))  # miUINT16 real part
        )
        compressed = zlib.compress(_element(14, matrix))
        body += struct.pack("<II", 15, len(compressed)) + compressed
    path.write_bytes(header + body)


#: 12 images: labels (1-based) and the three id lists (1-based, not sorted), like the real files' shapes.
LABELS = [5, 5, 102, 1, 7, 7, 1, 102, 5, 33, 33, 1]
TRNID, VALID, TSTID = [4, 1, 3], [2, 8], [12, 6, 5, 7, 9, 10, 11]


def _flowers(root: Path) -> Path:
    folder = root / "flowers-102"
    (folder / "jpg").mkdir(parents=True)
    for image_id in range(1, len(LABELS) + 1):
        (folder / "jpg" / f"image_{image_id:05d}.jpg").write_bytes(JPEGS[image_id % len(JPEGS)])
    _write_mat(folder / "imagelabels.mat", labels=np.array(LABELS))
    _write_mat(folder / "setid.mat", trnid=np.array(TRNID), valid=np.array(VALID), tstid=np.array(TSTID))
    return folder


def test_flowers102_trains_on_train_and_val_and_tests_on_test(tmp_path: Path) -> None:
    folder = _flowers(tmp_path)
    data = _load("flowers102", tmp_path)
    assert [Path(f).name for f in data.train_files] == [f"image_{i:05d}.jpg" for i in TRNID + VALID]
    assert data.train_labels.tolist() == [LABELS[i - 1] - 1 for i in TRNID + VALID] == [0, 4, 101, 4, 101]
    assert data.test_files[0] == str(folder / "jpg" / "image_00012.jpg") and data.test_labels[0] == 0
    assert data.test_labels.tolist() == [0, 6, 6, 0, 4, 32, 32] and data.test_labels.dtype == torch.int64
    assert data.verified is False  # the generated .mat files are not torchvision's


def test_flowers102_constants_are_torchvisions() -> None:
    tv = torchvision.datasets.Flowers102
    assert flowers102.URL == tv._download_url_prefix
    assert flowers102.FILES == dict(tv._file_dict.values())
    assert tv._splits_map == {"train": "trnid", "val": "valid", "test": "tstid"}


#: scipy.io.savemat({"labels": [[3., 1., 102.]], "tstid": uint16 [[2, 1]]}, do_compression=True), scipy 1.17.1.
SCIPY_MAT = (
    "TUFUTEFCIDUuMCBNQVQtZmlsZSBQbGF0Zm9ybTogcG9zaXgsIENyZWF0ZWQgb246IFN1biBEZWMgIDYgMDc6Mjc6MzYgMjAyNgAAAAAAAAAA"
    "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAABSU0PAAAANwAAAHic42NgYAgAYjYg5oDSIMAK5TMCMTOUBsnl"
    "JCal5hQzMHAC2RIMMMDhAKE/2IOphkgHAJzSBa8PAAAALAAAAHic42NgYLAAYjYg5gBibgYIYIXyGYGYCUqDxEqKSzJTgDQLEDIBRQE3OAKp"
)


def test_read_mat_reads_what_scipy_writes(tmp_path: Path) -> None:
    path = tmp_path / "scipy.mat"
    path.write_bytes(base64.b64decode(SCIPY_MAT))
    arrays = flowers102.read_mat(path)
    assert arrays["labels"].dtype == np.float64 and arrays["labels"].tolist() == [[3.0, 1.0, 102.0]]
    assert arrays["tstid"].dtype == np.uint16 and arrays["tstid"].tolist() == [[2, 1]]
    path.write_bytes(b"MATLAB 7.3 MAT-file".ljust(124, b" ") + b"\x00\x02IM")
    with pytest.raises(DataNotFoundError, match="not a MATLAB 5 MAT-file"):
        flowers102.read_mat(path)


def test_read_mat_round_trips_scipy_when_installed(tmp_path: Path) -> None:
    sio = pytest.importorskip("scipy.io")
    values = {"a": np.arange(6.0).reshape(2, 3), "b": np.array([[7]], np.int32), "s": "text"}
    for compress in (False, True):
        sio.savemat(tmp_path / "x.mat", values, do_compression=compress)
        arrays = flowers102.read_mat(tmp_path / "x.mat")
        assert set(arrays) == {"a", "b"} and np.array_equal(arrays["a"], values["a"]) and arrays["b"].tolist() == [[7]]


def test_missing_flowers102_files_are_named(tmp_path: Path) -> None:
    with pytest.raises(DataNotFoundError, match=r"Flowers-102 not found: expected .*flowers-102/jpg\. .*--download"):
        _load("flowers102", tmp_path)
    folder = _flowers(tmp_path)
    (folder / "setid.mat").unlink()
    with pytest.raises(DataNotFoundError, match=r"expected .*flowers-102/setid\.mat"):
        _load("flowers102", tmp_path)
    _write_mat(folder / "setid.mat", trnid=np.array([1]), valid=np.array([2]), tstid=np.array([13]))
    with pytest.raises(DataNotFoundError, match=r"image ids must lie in 1\.\.12"):
        _load("flowers102", tmp_path)
    _write_mat(folder / "setid.mat", trnid=np.array([1]), valid=np.array([2]), tstid=np.array([3]))
    (folder / "jpg" / "image_00003.jpg").unlink()
    with pytest.raises(DataNotFoundError, match=r"1 image\(s\) of setid.mat missing .* e\.g\. image_00003\.jpg"):
        _load("flowers102", tmp_path)
    _write_mat(folder / "setid.mat", trnid=np.array([1]), tstid=np.array([2]))
    with pytest.raises(DataNotFoundError, match=r"setid\.mat: no numeric variable 'valid' \(found: trnid, tstid\)"):
        _load("flowers102", tmp_path)


def test_flowers102_download_fetches_torchvisions_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def fake_archive(url: str, download_root: str, md5: str) -> None:
        calls.append((url, md5))
        _flowers(tmp_path / "elsewhere")
        shutil.copytree(tmp_path / "elsewhere" / "flowers-102" / "jpg", Path(download_root) / "jpg")

    def fake_url(url: str, root: str, md5: str) -> None:
        calls.append((url, md5))
        name = url.rsplit("/", 1)[1]
        shutil.copy(tmp_path / "elsewhere" / "flowers-102" / name, Path(root) / name)

    monkeypatch.setattr(torchvision.datasets.utils, "download_and_extract_archive", fake_archive)
    monkeypatch.setattr(torchvision.datasets.utils, "download_url", fake_url)
    data = _load("flowers102", tmp_path / "root", download=True)
    prefix = "https://www.robots.ox.ac.uk/~vgg/data/flowers/102/"
    assert calls == [(prefix + name, md5) for name, md5 in flowers102.FILES.items()]
    assert data.num_train == 5 and data.num_test == 7
    _load("flowers102", tmp_path / "root", download=True)
    assert len(calls) == 3  # present: nothing fetched again


# --- tiny-imagenet's decoded-array cache ----------------------------------------------------------------------


def _tiny(root: Path) -> Path:
    """Write a 2-class Tiny-ImageNet (2 train images per class, 2 val images) of distinct colours; return its folder."""
    folder = root / tiny_imagenet.FOLDER
    (folder / "val" / "images").mkdir(parents=True)
    (folder / "wnids.txt").write_text("n02\nn01\n", encoding="utf-8")
    for index, wnid in enumerate(("n01", "n02")):
        (folder / "train" / wnid / "images").mkdir(parents=True)
        for k in range(2):
            shade = (40 * index + 20 * k, 100, 200)
            Image.new("RGB", (64, 64), shade).save(folder / "train" / wnid / "images" / f"{wnid}_{k}.JPEG")
        Image.new("RGB", (64, 64), (0, 0, 90 * index)).save(folder / "val" / "images" / f"val_{index}.JPEG")
    annotations = "val_0.JPEG\tn01\t0\t0\t63\t63\nval_1.JPEG\tn02\t0\t0\t63\t63\n"
    (folder / "val" / "val_annotations.txt").write_text(annotations, encoding="utf-8")
    return folder


def _same(one: ImageData, other: ImageData) -> bool:
    keys = ("train_images", "train_labels", "test_images", "test_labels")
    return all(torch.equal(getattr(one, key), getattr(other, key)) for key in keys)


def test_tiny_imagenet_keeps_its_decoded_arrays_and_rebuilds_them_when_needed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = _tiny(tmp_path)
    first = tiny_imagenet.load_tiny_imagenet(tmp_path, download=False)
    (cache,) = folder.glob(".kdbench-cache-*.npz")
    assert sorted(p.name for p in folder.iterdir() if p.name.startswith(".")) == [cache.name]  # no temporary left
    assert first.train_labels.tolist() == [0, 0, 1, 1] and first.test_labels.tolist() == [0, 1]

    def no_decoding(path: Path) -> np.ndarray:
        raise AssertionError(f"decoded {path} although the cache holds it")

    with monkeypatch.context() as patch:
        patch.setattr(tiny_imagenet, "_read_image", no_decoding)
        assert _same(tiny_imagenet.load_tiny_imagenet(tmp_path, download=False), first)
        image = folder / "train" / "n02" / "images" / "n02_1.JPEG"
        Image.new("RGB", (64, 64), (255, 0, 0)).save(image)
        os.utime(image, ns=(1, 1))  # a changed file is a new digest: the cache no longer applies
        with pytest.raises(AssertionError, match="decoded"):
            tiny_imagenet.load_tiny_imagenet(tmp_path, download=False)
    changed = tiny_imagenet.load_tiny_imagenet(tmp_path, download=False)
    assert changed.train_images[3, 0].float().mean() > 240 and _same(changed, first) is False
    (new_cache,) = folder.glob(".kdbench-cache-*.npz")  # the stale cache is gone
    assert new_cache != cache
    new_cache.write_bytes(b"PK\x03\x04 truncated")  # unreadable: ignored and rebuilt
    assert _same(tiny_imagenet.load_tiny_imagenet(tmp_path, download=False), changed)
    assert new_cache.stat().st_size > 4 * 3 * 64 * 64
