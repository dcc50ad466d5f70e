"""IDX reader/writer and the dataset loading layer, on tiny files generated in tmp_path.

Never touches the real Fashion-MNIST install (CI may lack it) nor the network; run with
``HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1``.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch

from rpg_hf.train.data import (
    FASHION_MNIST_LABELS,
    IDX_IMAGES_MAGIC,
    IDX_LABELS_MAGIC,
    IdxFormatError,
    idx_magic,
    load_idx_dataset,
    load_image_dataset,
    read_idx,
    to_tensors,
    write_idx,
)

H, W = 7, 5  # deliberately not square, so a transposed shape would show


def _make_idx_dir(root: Path, n_train: int = 12, n_test: int = 6, gz: bool = True, seed: int = 0):
    """Write a Fashion-MNIST-shaped IDX directory; return {split: (images, labels)}."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    ext = ".gz" if gz else ""
    out = {}
    for split, prefix, n in (("train", "train", n_train), ("test", "t10k", n_test)):
        images = rng.integers(0, 256, size=(n, H, W), dtype=np.uint8)
        labels = (np.arange(n) % 10).astype(np.uint8)
        write_idx(root / f"{prefix}-images-idx3-ubyte{ext}", images)
        write_idx(root / f"{prefix}-labels-idx1-ubyte{ext}", labels)
        out[split] = (images, labels)
    return out


# --------------------------------------------------------------------------- IDX format


@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gz"])
@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64])
def test_round_trip(tmp_path, dtype, gz):
    rng = np.random.default_rng(1)
    for shape in [(), (5,), (3, 4), (2, 3, 4), (2, 1, 2, 3), (0, 4)]:
        arr = (rng.standard_normal(shape) * 100).astype(dtype)
        path = write_idx(tmp_path / f"a{len(shape)}.idx{'.gz' if gz else ''}", arr)
        back = read_idx(path, expect_magic=idx_magic(dtype, len(shape)))
        assert back.shape == arr.shape and back.dtype == np.dtype(dtype)
        assert back.dtype.isnative and back.flags.writeable
        np.testing.assert_array_equal(back, arr)
        assert (path.read_bytes()[:2] == b"\x1f\x8b") == gz


def test_big_endian_bytes_on_disk(tmp_path):
    path = tmp_path / "x.idx"
    path.write_bytes(b"\x00\x00\x0b\x01" + b"\x00\x00\x00\x02" + b"\x01\x02\xff\xfe")
    np.testing.assert_array_equal(read_idx(path), np.array([258, -2], dtype=np.int16))
    write_idx(path, np.array([258, -2], dtype=np.int16))
    assert path.read_bytes() == b"\x00\x00\x0b\x01\x00\x00\x00\x02\x01\x02\xff\xfe"


def test_images_and_labels_magic_and_shapes(tmp_path):
    _make_idx_dir(tmp_path, gz=False)
    img, lab = tmp_path / "train-images-idx3-ubyte", tmp_path / "train-labels-idx1-ubyte"
    assert IDX_IMAGES_MAGIC == 2051 and IDX_LABELS_MAGIC == 2049
    assert int.from_bytes(img.read_bytes()[:4], "big") == 2051
    assert int.from_bytes(lab.read_bytes()[:4], "big") == 2049
    assert img.read_bytes()[4:16] == (12).to_bytes(4, "big") + H.to_bytes(4, "big") + W.to_bytes(4, "big")
    assert read_idx(img, expect_magic=2051).shape == (12, H, W)
    assert read_idx(lab, expect_magic=2049).shape == (12,)


def test_gzip_output_is_deterministic_and_sniffed_by_content(tmp_path):
    arr = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    a, b = write_idx(tmp_path / "a.gz", arr), write_idx(tmp_path / "b.gz", arr)
    assert a.read_bytes() == b.read_bytes()
    renamed = tmp_path / "no-suffix"
    renamed.write_bytes(a.read_bytes())
    np.testing.assert_array_equal(read_idx(renamed), arr)


def test_write_rejects_unsupported_dtype(tmp_path):
    with pytest.raises(ValueError, match="no IDX type code"):
        write_idx(tmp_path / "x.idx", np.zeros(3, dtype=np.int64))


@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gz"])
def test_truncated_data(tmp_path, gz):
    arr = np.arange(600, dtype=np.int16).reshape(3, 10, 20)
    path = write_idx(tmp_path / f"img{'.gz' if gz else ''}", arr)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(IdxFormatError, match="truncated") as err:
        read_idx(path)
    assert str(path) in str(err.value)


def test_truncated_gzip_trailer(tmp_path):
    # All data decompresses but the CRC/size trailer is cut: still a truncated file.
    path = write_idx(tmp_path / "img.gz", np.arange(100, dtype=np.uint8))
    path.write_bytes(path.read_bytes()[:-4])
    with pytest.raises(IdxFormatError, match="truncated gzip"):
        read_idx(path)


@pytest.mark.parametrize("cut", [2, 6, 13])
def test_truncated_header(tmp_path, cut):
    path = write_idx(tmp_path / "img", np.zeros((2, 3, 4), dtype=np.uint8))
    path.write_bytes(path.read_bytes()[:cut])
    with pytest.raises(IdxFormatError, match="truncated header") as err:
        read_idx(path)
    assert str(path) in str(err.value)


def test_trailing_garbage(tmp_path):
    path = write_idx(tmp_path / "lab.gz", np.zeros(4, dtype=np.uint8))
    path.write_bytes(gzip.compress(gzip.decompress(path.read_bytes()) + b"junk"))
    with pytest.raises(IdxFormatError, match="trailing garbage"):
        read_idx(path)


def test_wrong_magic_names_expected_and_found(tmp_path):
    labels = write_idx(tmp_path / "train-labels-idx1-ubyte", np.zeros(4, dtype=np.uint8))
    with pytest.raises(IdxFormatError, match="magic") as err:
        read_idx(labels, expect_magic=IDX_IMAGES_MAGIC)
    msg = str(err.value)
    assert "expected 2051" in msg and "found 2049" in msg and str(labels) in msg


def test_unknown_type_code_and_not_idx(tmp_path):
    path = tmp_path / "x"
    path.write_bytes(b"\x00\x00\x0a\x01\x00\x00\x00\x00")
    with pytest.raises(IdxFormatError, match="unknown IDX type code 0x0A"):
        read_idx(path)
    path.write_bytes(b"PK\x03\x04 not an idx file")
    with pytest.raises(IdxFormatError, match="not an IDX file"):
        read_idx(path)


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope"):
        read_idx(tmp_path / "nope")


# --------------------------------------------------------------------------- datasets layer


@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gz"])
def test_load_idx_dataset_fashion_shaped(tmp_path, gz):
    arrays = _make_idx_dir(tmp_path / "fashion-mnist", gz=gz)
    for split in ("train", "test"):
        ds = load_idx_dataset(tmp_path / "fashion-mnist", split=split)
        images, labels = arrays[split]
        assert isinstance(ds, datasets.Dataset) and ds.num_rows == len(labels)
        assert ds.features["image"] == datasets.Array2D(shape=(H, W), dtype="uint8")
        assert isinstance(ds.features["label"], datasets.ClassLabel)
        assert ds.features["label"].names == list(FASHION_MNIST_LABELS)
        assert ds["label"][:] == labels.tolist()
        np.testing.assert_array_equal(np.asarray(ds[3]["image"], dtype=np.uint8), images[3])

        x, y = to_tensors(ds)
        assert x.dtype == torch.uint8 and x.shape == (len(labels), H, W)
        assert y.dtype == torch.int64
        np.testing.assert_array_equal(x.numpy(), images)
        np.testing.assert_array_equal(y.numpy(), labels)


def test_class_names_generic_and_explicit(tmp_path):
    _make_idx_dir(tmp_path / "digits")
    assert load_idx_dataset(tmp_path / "digits").features["label"].names == [str(k) for k in range(10)]
    ds = load_idx_dataset(tmp_path / "digits", class_names=FASHION_MNIST_LABELS)
    assert ds.features["label"].names == list(FASHION_MNIST_LABELS)
    with pytest.raises(ValueError, match="out of range"):
        load_idx_dataset(tmp_path / "digits", class_names=["a", "b"])


def test_to_tensors_respects_select_and_shuffle(tmp_path):
    images, labels = _make_idx_dir(tmp_path / "d")["train"]
    ds = load_idx_dataset(tmp_path / "d").shuffle(seed=0).select([4, 0, 7])
    rows = [int(i) for i in ds._indices.column(0).to_pylist()]  # the underlying rows, in order
    x, y = to_tensors(ds)
    np.testing.assert_array_equal(x.numpy(), images[rows])
    np.testing.assert_array_equal(y.numpy(), labels[rows])


def test_count_mismatch(tmp_path):
    _make_idx_dir(tmp_path, gz=False)
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.zeros(3, dtype=np.uint8))
    with pytest.raises(ValueError, match="12 images but .* 3 labels"):
        load_idx_dataset(tmp_path)


def test_swapped_files_fail_on_magic(tmp_path):
    _make_idx_dir(tmp_path, gz=False)
    img, lab = tmp_path / "train-images-idx3-ubyte", tmp_path / "train-labels-idx1-ubyte"
    img_bytes, lab_bytes = img.read_bytes(), lab.read_bytes()
    img.write_bytes(lab_bytes)
    lab.write_bytes(img_bytes)
    with pytest.raises(IdxFormatError, match="wrong magic"):
        load_idx_dataset(tmp_path)


def test_missing_dir_and_missing_file_say_how_to_install(tmp_path):
    with pytest.raises(FileNotFoundError, match="apt-get install -y dataset-fashion-mnist"):
        load_idx_dataset(tmp_path / "absent")
    _make_idx_dir(tmp_path / "partial")
    (tmp_path / "partial" / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(FileNotFoundError, match="apt-get install -y dataset-fashion-mnist") as err:
        load_idx_dataset(tmp_path / "partial", split="test")
    assert "t10k-labels-idx1-ubyte" in str(err.value)
    with pytest.raises(ValueError, match="unknown split"):
        load_idx_dataset(tmp_path / "partial", split="validation")


def test_dispatch_idx_dir(tmp_path):
    _make_idx_dir(tmp_path / "idx")
    ds = load_image_dataset(tmp_path / "idx", "test")
    assert ds.num_rows == 6 and ds.features["image"].shape == (H, W)


def test_dispatch_imagefolder_offline(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(2)
    expected = []
    for label, cls in enumerate(("cat", "dog")):
        (tmp_path / "imgs" / cls).mkdir(parents=True)
        for i in range(2):
            pixels = rng.integers(0, 256, size=(H, W), dtype=np.uint8)
            Image.fromarray(pixels, mode="L").save(tmp_path / "imgs" / cls / f"{i}.png")
            expected.append((label, pixels.tobytes()))
    ds = load_image_dataset(tmp_path / "imgs", "train", cache_dir=tmp_path / "cache")
    assert ds.num_rows == 4
    assert ds.features["label"].names == ["cat", "dog"]
    x, y = to_tensors(ds)
    assert x.dtype == torch.uint8 and x.shape == (4, H, W)
    got = sorted((int(label), img.tobytes()) for img, label in zip(x.numpy(), y.numpy(), strict=True))
    assert got == sorted(expected)


def test_dispatch_parquet_file(tmp_path):
    _make_idx_dir(tmp_path / "idx")
    src = load_idx_dataset(tmp_path / "idx")
    src.to_parquet(tmp_path / "train.parquet")
    ds = load_image_dataset(tmp_path / "train.parquet", "train", cache_dir=tmp_path / "cache")
    assert ds.features == src.features
    np.testing.assert_array_equal(to_tensors(ds)[0].numpy(), to_tensors(src)[0].numpy())


def test_dispatch_missing_local_path(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_image_dataset(tmp_path / "does-not-exist")
