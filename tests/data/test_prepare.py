import json

import numpy as np
import pytest
import torch

from kdpipe.config import DataConfig
from kdpipe.data.prepare import make_splits, prepare
from kdpipe.data.prepared import IMAGENET_MEAN, IMAGENET_STD, load_meta, load_prepared
from kdpipe.errors import ConfigError, DataError, MissingInputError
from kdpipe.io import read_json, sha256_file


def class_shares(y, k=10):
    return np.bincount(y, minlength=k) / len(y)


def test_splits_are_stratified_disjoint_and_complete():
    names, splits, _ = make_splits(DataConfig(), seed=0)
    total = sum(len(y) for _, y in splits.values())
    assert total == 1797 and names == [str(i) for i in range(10)]
    assert len(splits["test"][1]) == pytest.approx(0.2 * 1797, abs=1)
    assert len(splits["val"][1]) == pytest.approx(0.1 * 1797, abs=1)
    overall = class_shares(np.concatenate([y for _, y in splits.values()]))
    for _, y in splits.values():
        assert np.abs(class_shares(y) - overall).max() < 0.02
    # no image is in two splits (digits has a handful of exact duplicates, so compare counts)
    flat = {k: {x.tobytes() for x in xs} for k, (xs, _) in splits.items()}
    assert len(flat["train"] & flat["test"]) <= 5


def test_deterministic_for_a_seed_and_different_across_seeds():
    _, a, _ = make_splits(DataConfig(), seed=3)
    _, b, _ = make_splits(DataConfig(), seed=3)
    _, c, _ = make_splits(DataConfig(), seed=4)
    assert all(np.array_equal(a[k][0], b[k][0]) and np.array_equal(a[k][1], b[k][1]) for k in a)
    assert not np.array_equal(a["test"][1], c["test"][1])


def test_max_samples_make_stratified_subsets():
    _, splits, _ = make_splits(DataConfig(max_train_samples=200, max_test_samples=50), seed=0)
    assert len(splits["train"][1]) == 200 and len(splits["test"][1]) == 50
    # validation shrinks with training: 200 of 1257 train images -> 180 * 200 / 1257 ~ 29 val images
    assert len(splits["val"][1]) == 29 and len(np.unique(splits["val"][1])) == 10
    assert np.bincount(splits["train"][1]).min() >= 18


def test_prepare_writes_arrays_meta_and_metrics(tmp_path):
    out, metrics = tmp_path / "prepared", tmp_path / "prepare.json"
    meta = prepare(DataConfig(), 0, out, metrics)
    data = load_prepared(out)
    assert data["train"].images.dtype.is_floating_point is False
    assert data["train"].images.shape[1:] == (1, 8, 8)
    assert meta.channels == 1 and meta.height == meta.width == 8
    x = data["train"].images.float() / 255
    assert meta.mean[0] == pytest.approx(x.mean().item(), abs=1e-5)
    assert meta.std[0] == pytest.approx(x.std(unbiased=False).item(), abs=1e-5)
    m = read_json(metrics)
    assert m["counts"] == meta.counts and sum(m["per_class"]["test"].values()) == meta.counts["test"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp leftovers


def test_corrupt_or_missing_prepared_data_is_detected(tmp_path):
    out = tmp_path / "prepared"
    with pytest.raises(MissingInputError, match="dvc repro prepare"):
        load_prepared(out)
    prepare(DataConfig(), 0, out, tmp_path / "m.json")
    np.save(out / "val_x.npy", np.zeros((3, 1, 8, 8), dtype=np.uint8))
    with pytest.raises(DataError, match="val_x.npy is corrupted: its SHA-256 differs"):
        load_prepared(out)
    # a file whose hash was recorded but whose shape disagrees with the metadata
    meta = json.loads((out / "meta.json").read_text())
    meta["files"]["val_x.npy"] = sha256_file(out / "val_x.npy")
    (out / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(DataError, match="val_x.npy does not match"):
        load_prepared(out)
    (out / "test_y.npy").write_bytes(b"garbage")
    with pytest.raises(DataError):
        load_prepared(out, splits=("test",))


def test_too_small_subset_is_a_clear_error():
    with pytest.raises(DataError, match="stratified split"):
        make_splits(DataConfig(max_train_samples=5), seed=0)


def mapped_file(address: int) -> str | None:
    """The file mapped at ``address`` in this process (Linux /proc/self/maps), if any."""
    for line in open("/proc/self/maps"):
        fields = line.split()
        start, end = (int(v, 16) for v in fields[0].split("-"))
        if start <= address < end:
            return fields[5] if len(fields) > 5 and fields[5].startswith("/") else None
    return None


def test_splits_load_memory_mapped_unless_asked_in_memory(tmp_path):
    out = tmp_path / "prepared"
    prepare(DataConfig(), 0, out, tmp_path / "m.json")
    mapped, copied = load_prepared(out), load_prepared(out, in_memory=True)
    for name in ("train", "val", "test"):
        assert torch.equal(mapped[name].images, copied[name].images)
        # the tensor's memory is a mapping of the prepared file (no copy), the in-memory one is not
        assert mapped_file(mapped[name].images.data_ptr()) == str(out / f"{name}_x.npy")
        assert mapped_file(copied[name].images.data_ptr()) is None
    # copy-on-write: writing into a loaded split never reaches the prepared file
    before = (out / "train_x.npy").read_bytes()
    mapped["train"].images[0] = 255
    assert (out / "train_x.npy").read_bytes() == before


def test_a_data_set_the_disk_cannot_hold_is_refused_before_any_work(tmp_path, monkeypatch):
    import shutil
    from collections import namedtuple

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**9, 10**9, 1000))
    with pytest.raises(DataError, match=r"prepare needs 0\.00 GB for 1,797 images of 1x8x8 .* free: free space"):
        prepare(DataConfig(), 0, tmp_path / "prepared", tmp_path / "m.json")
    assert not list(tmp_path.iterdir())


def test_imagenet_normalisation_is_recorded_for_rgb_and_refused_for_gray(tmp_path):
    """data.normalize: imagenet writes ImageNet's statistics (what pretrained weights expect) in
    place of the split's own; the pixels are the same bytes either way; gray data is refused by name."""
    with pytest.raises(ConfigError, match="data.normalize: imagenet needs RGB"):
        prepare(DataConfig(normalize="imagenet"), 0, tmp_path / "gray", tmp_path / "gray.json")
    assert not (tmp_path / "gray").exists()
    own = prepare(DataConfig(channels=3), 0, tmp_path / "own", tmp_path / "own.json")
    imagenet = prepare(DataConfig(channels=3, normalize="imagenet"), 0, tmp_path / "in", tmp_path / "in.json")
    assert (imagenet.mean, imagenet.std) == (IMAGENET_MEAN, IMAGENET_STD) and own.mean != IMAGENET_MEAN
    assert imagenet.files == own.files
    assert load_meta(tmp_path / "in").mean == IMAGENET_MEAN
