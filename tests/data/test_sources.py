"""Each loader on small files written in the real on-disk formats, and every bad-data case."""

import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from kdpipe.config import DataConfig
from kdpipe.data.prepare import make_splits, prepare
from kdpipe.data.prepared import load_prepared
from kdpipe.data.write import write_split
from kdpipe.data.sources import SOURCES
from kdpipe.data.sources.decode import decode_file
from kdpipe.errors import DataError
from kdpipe.io import read_json


def cfg(root, **kw) -> DataConfig:
    return DataConfig(root=str(root), download=False, **kw)


# --- torchvision formats -----------------------------------------------------------------

def write_cifar(root: Path, n_per_batch=20, classes=10, hundred=False):
    rng = np.random.default_rng(0)
    if hundred:
        folder = root / "cifar-100-python"
        files, key, meta = ["train", "test"], "fine_labels", ("meta", "fine_label_names")
    else:
        folder = root / "cifar-10-batches-py"
        files = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
        key, meta = "labels", ("batches.meta", "label_names")
    folder.mkdir(parents=True)
    for name in files:
        labels = [i % classes for i in range(n_per_batch)]
        data = rng.integers(0, 256, (n_per_batch, 3072), dtype=np.uint8)
        (folder / name).write_bytes(pickle.dumps({"data": data, key: labels}))
    (folder / meta[0]).write_bytes(pickle.dumps({meta[1]: [f"class{i}" for i in range(classes)]}))


def write_idx(path: Path, array: np.ndarray):
    magic = 0x0800 + array.ndim  # 0x08: unsigned byte data
    header = struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def write_mnist(root: Path, folder="MNIST", n=40):
    raw = root / folder / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(1)
    for prefix, count in (("train", n), ("t10k", n // 2)):
        write_idx(raw / f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, (count, 28, 28), dtype=np.uint8))
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", np.arange(count) % 10)


def test_cifar10_python_batches(tmp_path):
    write_cifar(tmp_path)
    src = SOURCES["cifar10"](cfg(tmp_path))
    assert src.train[0].shape == (100, 3, 32, 32) and src.test[0].shape == (20, 3, 32, 32)
    assert src.class_names[0] == "class0" and src.train[1].dtype == np.int64
    # the channel order survives the NHWC -> NCHW move: first pixel of the red plane
    raw = pickle.loads((tmp_path / "cifar-10-batches-py" / "data_batch_1").read_bytes())["data"]
    assert src.train[0][0, 0, 0, 0] == raw[0, 0] and src.train[0][0, 1, 0, 0] == raw[0, 1024]


def test_cifar100(tmp_path):
    write_cifar(tmp_path, n_per_batch=200, classes=100, hundred=True)
    src = SOURCES["cifar100"](cfg(tmp_path))
    assert len(src.class_names) == 100 and src.train[0].shape == (200, 3, 32, 32)


@pytest.mark.parametrize("name,folder", [("mnist", "MNIST"), ("fashion_mnist", "FashionMNIST")])
def test_mnist_idx_files(tmp_path, name, folder):
    write_mnist(tmp_path, folder)
    src = SOURCES[name](cfg(tmp_path))
    assert src.train[0].shape == (40, 1, 28, 28) and src.test[0].shape == (20, 1, 28, 28)
    assert len(src.class_names) == 10


def test_missing_archive_offline_names_the_file(tmp_path):
    with pytest.raises(DataError, match=r"cifar-10-python\.tar\.gz.*" + str(tmp_path)):
        SOURCES["cifar10"](cfg(tmp_path))
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte.*MNIST/raw"):
        SOURCES["mnist"](cfg(tmp_path))


def test_failed_download_is_one_clear_message(tmp_path, monkeypatch):
    import torchvision.datasets.cifar as tv_cifar

    def offline(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(tv_cifar, "download_and_extract_archive", offline)
    with pytest.raises(DataError, match="download failed.*network is unreachable.*cifar-10-python.tar.gz"):
        SOURCES["cifar10"](DataConfig(root=str(tmp_path), download=True))


# --- MedMNIST ----------------------------------------------------------------------------

def write_medmnist(root: Path, flag="pathmnist", channels=3, n=60, classes=9):
    rng = np.random.default_rng(2)
    shape = (28, 28, channels) if channels == 3 else (28, 28)
    arrays = {}
    for split, count in (("train", n), ("val", n // 3), ("test", n // 3)):
        arrays[f"{split}_images"] = rng.integers(0, 256, (count, *shape), dtype=np.uint8)
        arrays[f"{split}_labels"] = (np.arange(count) % classes).reshape(-1, 1)
    np.savez(root / f"{flag}.npz", **arrays)


def test_medmnist_npz(tmp_path):
    write_medmnist(tmp_path)
    src = SOURCES["medmnist"](cfg(tmp_path, medmnist_flag="pathmnist"))
    assert src.train[0].shape == (60, 3, 28, 28) and src.val[0].shape == (20, 3, 28, 28)
    assert src.train[1].shape == (60,) and src.class_names[0] == "adipose"


def test_medmnist_gray_set_and_refusals(tmp_path):
    write_medmnist(tmp_path, "octmnist", channels=1, classes=4)
    assert SOURCES["medmnist"](cfg(tmp_path, medmnist_flag="octmnist")).train[0].shape[1] == 1
    with pytest.raises(DataError, match="multi-label.*single-label"):
        SOURCES["medmnist"](cfg(tmp_path, medmnist_flag="chestmnist"))
    with pytest.raises(DataError, match="unknown 2D MedMNIST set 'pathmnsit'.*pathmnist"):
        SOURCES["medmnist"](cfg(tmp_path, medmnist_flag="pathmnsit"))
    with pytest.raises(DataError, match=r"dermamnist\.npz not found"):
        SOURCES["medmnist"](cfg(tmp_path, medmnist_flag="dermamnist"))


# --- ImageFolder -------------------------------------------------------------------------

def save(path: Path, img: Image.Image, fmt=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, fmt)


def rgb(seed, size=(12, 12)):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (*size[::-1], 3), dtype=np.uint8), "RGB")


def gray(seed, size=(12, 12)):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, size[::-1], dtype=np.uint8), "L")


def pixels(split, tmp_path):
    """A source's files decoded as prepare writes them (kdpipe.data.write)."""
    out = tmp_path / "decoded.npy"
    written = write_split(out, split[0], image_size=None, channels=None, workers=1, desc="test")
    assert not written.unreadable
    return np.load(out)


def make_tree(root: Path, n=6, classes=("cat", "dog"), splits=("train", "test"), maker=gray, ext="png"):
    for split in splits:
        for c in classes:
            for i in range(n):
                save(root / split / c / f"{i}.{ext}", maker(hash((split, c, i)) % 1000))
    return root


def test_gray_tree_gives_one_channel_and_ignores_stray_files(tmp_path):
    make_tree(tmp_path)
    (tmp_path / "train" / "cat" / "notes.txt").write_text("not an image")
    (tmp_path / "train" / ".DS_Store").write_bytes(b"\0")
    src = SOURCES["imagefolder"](cfg(tmp_path))
    assert src.class_names == ["cat", "dog"]
    assert src.train[0].shape == (12, 1, 12, 12) and src.val is None


def test_mixed_modes_become_rgb(tmp_path):
    make_tree(tmp_path)
    save(tmp_path / "train" / "cat" / "rgba.png", rgb(1).convert("RGBA"))
    save(tmp_path / "train" / "dog" / "pal.png", rgb(2).convert("P"))
    save(tmp_path / "test" / "cat" / "photo.jpg", rgb(3), "JPEG")
    save(tmp_path / "test" / "dog" / "photo.JPEG", rgb(4), "JPEG")
    src = SOURCES["imagefolder"](cfg(tmp_path))
    assert src.train[0].shape == (14, 3, 12, 12) and src.test[0].shape == (14, 3, 12, 12)
    # a gray image is copied into all three channels
    g = pixels(src.train, tmp_path)[0]
    assert np.array_equal(g[0], g[1]) and np.array_equal(g[1], g[2])


def test_transparent_pixels_become_white(tmp_path):
    make_tree(tmp_path, maker=rgb)
    clear = Image.new("RGBA", (12, 12), (0, 0, 0, 0))
    save(tmp_path / "train" / "cat" / "clear.png", clear)
    src = SOURCES["imagefolder"](cfg(tmp_path))
    assert (pixels(src.train, tmp_path) == 255).all(axis=(1, 2, 3)).sum() == 1


def test_channels_setting_forces_gray(tmp_path):
    make_tree(tmp_path, maker=rgb)
    assert SOURCES["imagefolder"](cfg(tmp_path, channels=1)).train[0].shape[1] == 1


def test_val_folder_is_used(tmp_path):
    make_tree(tmp_path, splits=("train", "val", "test"))
    src = SOURCES["imagefolder"](cfg(tmp_path))
    assert src.val[0].shape[0] == 12


def test_sizes_must_agree_unless_resized(tmp_path):
    make_tree(tmp_path)
    save(tmp_path / "train" / "dog" / "big.png", gray(9, (20, 16)))
    with pytest.raises(DataError, match=r"sizes differ.*big\.png is 20x16.*data\.image_size"):
        SOURCES["imagefolder"](cfg(tmp_path))
    src = SOURCES["imagefolder"](cfg(tmp_path, image_size=10))
    assert src.train[0].shape[1:] == (1, 10, 10)


def test_truncated_jpeg_is_named_and_nothing_is_left(tmp_path):
    root = make_tree(tmp_path / "raw", maker=rgb, ext="jpg")
    broken = root / "train" / "dog" / "3.jpg"
    broken.write_bytes(broken.read_bytes()[:200])
    out = tmp_path / "prepared"
    with pytest.raises(DataError, match=r"dog/3\.jpg"):
        prepare(cfg(root, dataset="imagefolder"), 0, out, tmp_path / "m.json")
    assert not out.exists() and not (tmp_path / "m.json").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_skip_corrupt_counts_the_skipped(tmp_path):
    root = make_tree(tmp_path / "raw", n=10, maker=rgb, ext="jpg")
    (root / "train" / "cat" / "0.jpg").write_bytes(b"\xff\xd8 garbage")
    metrics = tmp_path / "m.json"
    meta = prepare(cfg(root, dataset="imagefolder", skip_corrupt=True, val_fraction=0.2), 0, tmp_path / "p", metrics)
    m = read_json(metrics)
    assert m["skipped_corrupt"] == 1 and m["skipped_files"][0].endswith("cat/0.jpg")
    assert meta.counts["train"] + meta.counts["val"] == 19


@pytest.mark.parametrize(
    "breakage,message",
    [
        (lambda r: [p.unlink() for p in (r / "train" / "dog").iterdir()], "Found no valid file for the classes dog"),
        (lambda r: (r / "test" / "bird").mkdir() or save(r / "test" / "bird" / "0.png", gray(0)), "only in test: \\['bird'\\]"),
        (lambda r: __import__("shutil").rmtree(r / "test"), "must hold train/ and test/"),
    ],
    ids=["empty class folder", "class sets differ", "no test folder"],
)
def test_layout_errors(tmp_path, breakage, message):
    root = make_tree(tmp_path)
    breakage(root)
    with pytest.raises(DataError, match=message):
        SOURCES["imagefolder"](cfg(root))


def test_root_without_images(tmp_path):
    for split in ("train", "test"):
        (tmp_path / split / "a").mkdir(parents=True)
        (tmp_path / split / "a" / "readme.txt").write_text("x")
    with pytest.raises(DataError, match="Found no valid file"):
        SOURCES["imagefolder"](cfg(tmp_path))
    with pytest.raises(DataError, match="is not a folder"):
        SOURCES["imagefolder"](cfg(tmp_path / "missing"))


def test_prepare_resizes_and_converts_array_sources(tmp_path):
    write_cifar(tmp_path)
    meta = prepare(cfg(tmp_path, dataset="cifar10", image_size=16, channels=1), 0, tmp_path / "p", tmp_path / "m.json")
    assert meta.image_shape == (1, 16, 16) and load_prepared(tmp_path / "p")["train"].images.shape[1:] == (1, 16, 16)


SHARED = Path(__file__).resolve().parents[3] / "shared" / "datasets" / "cifar10-jpg.tar.gz"


@pytest.mark.skipif(not SHARED.is_file(), reason=f"real CIFAR-10 JPEGs not found at {SHARED}")
def test_real_cifar10_jpeg_tree(tmp_path):
    import tarfile

    with tarfile.open(SHARED) as tar:
        tar.extractall(tmp_path, filter="data")
    root = tmp_path / "cifar10-jpg"
    metrics = tmp_path / "prepare.json"
    meta = prepare(cfg(root, dataset="imagefolder"), 0, tmp_path / "prepared", metrics)
    assert meta.counts == {"train": 45000, "val": 5000, "test": 10000}
    assert meta.image_shape == (3, 32, 32) and meta.class_names[0] == "airplane"
    m = read_json(metrics)
    assert m["per_class"]["test"]["cat"] == 1000 and m["skipped_corrupt"] == 0
    assert m["images_per_second"] == pytest.approx(60000 / m["seconds"], rel=0.01)
    print(f"real CIFAR-10 prepare: {m['seconds']} s, {m['images_per_second']} img/s, peak {m['peak_memory_mb']} MB")


def test_decoding_workers_are_output_neutral(tmp_path, monkeypatch):
    """data.workers is not a DVC param of prepare (dvc.yaml): the prepared bytes must not depend on it."""
    from kdpipe.data.sources import decode

    monkeypatch.setattr(decode, "CHUNK", 16)  # several chunks, so two workers really share them
    root = make_tree(tmp_path / "tree", n=40, maker=rgb)
    prepared = {}
    for workers in (1, 2):
        out = tmp_path / f"prepared-{workers}"
        prepare(cfg(root, dataset="imagefolder", workers=workers), 0, out, tmp_path / f"prepare-{workers}.json")
        prepared[workers] = {p.name: p.read_bytes() for p in sorted(out.iterdir())}
    assert prepared[1] == prepared[2] and len(prepared[1]) > 1
    timings = ("seconds", "images_per_second", "peak_memory_mb")
    facts = [{k: v for k, v in read_json(tmp_path / f"prepare-{w}.json").items() if k not in timings} for w in (1, 2)]
    assert facts[0] == facts[1]


def test_every_format_pillow_reads_is_an_image_and_other_files_are_counted(tmp_path, caplog):
    """A GIF (its first frame), TIFF, BMP and WebP train like PNGs; a text file in a class folder
    is skipped by name in the report, never silently."""
    make_tree(tmp_path, maker=rgb)
    first, second = rgb(100), rgb(101)
    first.save(tmp_path / "train" / "cat" / "anim.gif", save_all=True, append_images=[second])
    for i, ext in enumerate(("tif", "bmp", "webp")):
        save(tmp_path / "train" / "dog" / f"x.{ext}", rgb(200 + i))
    (tmp_path / "train" / "cat" / "notes.txt").write_text("not an image")
    src = SOURCES["imagefolder"](cfg(tmp_path))
    assert src.train[0].shape == (16, 3, 12, 12)
    gif = np.asarray(Image.open(tmp_path / "train" / "cat" / "anim.gif").convert("RGB")).transpose(2, 0, 1)
    assert any(np.array_equal(gif, x) for x in pixels(src.train, tmp_path))  # the first frame, as Pillow shows it
    assert src.report["skipped_not_image"] == 1
    assert src.report["skipped_not_image_files"] == [str(tmp_path / "train" / "cat" / "notes.txt")]
    assert "skipped 1 file(s) in class folders that are not images Pillow reads" in caplog.text


def test_exif_orientation_is_applied(tmp_path):
    """A phone photo stored sideways with EXIF orientation 6 decodes upright."""
    upright = Image.fromarray(np.kron(np.arange(12, dtype=np.uint8).reshape(3, 4) * 20, np.ones((4, 4), np.uint8)), "L")
    make_tree(tmp_path, maker=lambda seed: gray(seed, (16, 12)))  # 16 wide, 12 high, as `upright`
    stored = upright.transpose(Image.Transpose.ROTATE_90)  # what a camera writes; orientation 6 turns it back
    exif = Image.Exif()
    exif[0x0112] = 6
    stored.save(tmp_path / "test" / "cat" / "phone.png", exif=exif)
    src = SOURCES["imagefolder"](cfg(tmp_path))
    assert any(np.array_equal(x[0], np.asarray(upright)) for x in pixels(src.test, tmp_path))


def test_a_file_that_fails_only_when_decoded_is_skipped_and_the_split_stays_valid(tmp_path):
    """A truncated JPEG passes the header probe and fails mid-decode: with skip_corrupt the split
    is rewritten without it (hash, counts and labels agree), without skip_corrupt it is named."""
    root = make_tree(tmp_path / "raw", n=10, maker=rgb, ext="jpg")
    broken = root / "train" / "dog" / "3.jpg"
    broken.write_bytes(broken.read_bytes()[:300])
    metrics = tmp_path / "m.json"
    meta = prepare(cfg(root, dataset="imagefolder", skip_corrupt=True, val_fraction=0.2), 0, tmp_path / "p", metrics)
    data = load_prepared(tmp_path / "p")  # hashes checked
    m = read_json(metrics)
    assert m["skipped_corrupt"] == 1 and m["skipped_files"] == [str(broken)]
    assert meta.counts["train"] + meta.counts["val"] == 19 and len(data["train"]) == meta.counts["train"]
    with pytest.raises(DataError, match=r"1 unreadable image\(s\): .*dog/3\.jpg"):
        prepare(cfg(root, dataset="imagefolder"), 0, tmp_path / "q", tmp_path / "n.json")


# --- data.resize: how photos of other proportions reach image_size ----------------------------

def bands(width=60, height=20) -> Image.Image:
    """A landscape photo: a black left quarter, white middle half, black right quarter."""
    arr = np.zeros((height, width), dtype=np.uint8)
    arr[:, width // 4 : 3 * width // 4] = 255
    return Image.fromarray(arr, "L")


@pytest.mark.parametrize("mode, left, centre, top", [
    ("squash", 0, 255, 255),        # the whole width kept, stretched: black edges, white top row
    ("center_crop", 255, 255, 255),  # the centre square: only the white middle half is left
    ("pad", 0, 255, 0),             # all of it, scaled to fit: black bars above and below
])
def test_resize_modes(tmp_path, mode, left, centre, top):
    save(tmp_path / "photo.png", bands())
    decoded = decode_file(str(tmp_path / "photo.png"), 1, 10, mode)
    img = decoded.array[0]
    assert img.shape == (10, 10)
    assert (img[5, 0], img[5, 5], img[0, 5]) == (left, centre, top)


def test_imagefolder_center_crops_by_default_and_records_the_mode(tmp_path):
    root = make_tree(tmp_path / "raw")
    save(root / "train" / "dog" / "wide.png", bands())
    out = tmp_path / "prepared"
    meta = prepare(cfg(root, dataset="imagefolder", image_size=10), 0, out, tmp_path / "m.json")
    assert meta.resize == "center_crop" and read_json(out / "meta.json")["resize"] == "center_crop"
    assert read_json(tmp_path / "m.json")["resize"] == "center_crop"
    meta = prepare(cfg(root, dataset="imagefolder", image_size=10, resize="pad"), 0, out, tmp_path / "m.json")
    assert meta.resize == "pad"
    # not resized: meta.json is written exactly as before data.resize existed (its hash unchanged)
    meta = prepare(cfg(make_tree(tmp_path / "same"), dataset="imagefolder"), 0, out, tmp_path / "m.json")
    assert meta.resize is None and "resize" not in read_json(out / "meta.json")
    with pytest.raises(ValueError, match="resize"):
        cfg(root, resize="stretch")
