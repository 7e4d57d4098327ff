"""predict: any image file through any model file, one JSON line each, errors per file."""

import io
import json

import numpy as np
import pytest
import torch
from PIL import Image

import predict as predict_cli  # src/predict.py (src is on pytest's pythonpath)
from kdpipe.model_file import normalise, open_model
from kdpipe.models.checkpoint import ModelInfo, save_checkpoint
from kdpipe.models.registry import build_model
from kdpipe.onnx_export import export_onnx
from kdpipe.predict import predict_files

CLASSES = ["cat", "dog", "owl"]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    model = build_model("resnet18", 3, 1, 8).eval()
    info = ModelInfo(role="student", arch="resnet18", num_classes=3, image_shape=(1, 8, 8), class_names=CLASSES,
                     mean=[0.3], std=[0.2])
    save_checkpoint(root / "m.pt", model, info)
    export_onnx(model, info, root / "m.onnx", opset=18)
    return root


@pytest.fixture
def images(tmp_path):
    rng = np.random.default_rng(0)
    folder = tmp_path / "imgs"
    (folder / "nested").mkdir(parents=True)
    gray = rng.integers(0, 256, (8, 8), dtype=np.uint8)
    Image.fromarray(gray, "L").save(folder / "gray.png")
    Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8), "RGB").save(folder / "rgb.png")
    Image.fromarray(rng.integers(0, 256, (17, 30, 3), dtype=np.uint8), "RGB").save(folder / "nested" / "odd.jpg")
    Image.fromarray(rng.integers(0, 256, (40, 40, 4), dtype=np.uint8), "RGBA").save(folder / "nested" / "alpha.png")
    Image.fromarray(rng.integers(0, 65535, (9, 9), dtype=np.uint16)).save(folder / "deep16.png")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0" + b"\0" * 50)
    (folder / "notes.txt").write_text("not an image, not listed")
    return folder, gray


def _lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines()]


@pytest.mark.parametrize("name", ["m.pt", "m.onnx"])
def test_every_image_predicted_and_the_broken_one_reported(models, images, name):
    folder, _ = images
    out = io.StringIO()
    done, failed = predict_files(open_model(models / name), [str(folder)], topk=2, out=out)
    rows = _lines(out.getvalue())
    assert (done, failed) == (5, 1)
    by_name = {r["path"].rsplit("/", 1)[1]: r for r in rows}
    assert set(by_name) == {"gray.png", "rgb.png", "odd.jpg", "alpha.png", "deep16.png", "broken.jpg"}
    assert "error" in by_name["broken.jpg"] and "label" not in by_name["broken.jpg"]
    for row in rows:
        if "error" in row:
            continue
        assert row["label"] in CLASSES and 0 < row["probability"] <= 1
        assert len(row["topk"]) == 2 and row["topk"][0] == {"label": row["label"], "probability": row["probability"]}
        assert row["topk"][0]["probability"] >= row["topk"][1]["probability"]


def test_preprocessing_matches_training_and_formats_agree(models, images):
    folder, gray = images
    expected = open_model(models / "m.pt")
    with torch.inference_mode():
        logits = expected.model(torch.from_numpy(normalise(gray[None, None], [0.3], [0.2])))
    probs = torch.softmax(logits.double(), 1)[0].numpy()
    for name in ("m.pt", "m.onnx"):
        out = io.StringIO()
        predict_files(open_model(models / name), [str(folder / "gray.png")], topk=3, out=out)
        (row,) = _lines(out.getvalue())
        assert row["label"] == CLASSES[int(probs.argmax())]
        assert row["probability"] == pytest.approx(float(probs.max()), abs=1e-4)
        assert len(row["topk"]) == 3


def test_cli_exit_status_and_topk_cap(models, images, capsys):
    folder, _ = images
    assert predict_cli.main([str(folder / "gray.png"), "--model", str(models / "m.onnx"), "--topk", "10"]) == 0
    (row,) = _lines(capsys.readouterr().out)
    assert len(row["topk"]) == 3  # capped at the class count
    assert predict_cli.main([str(folder), str(folder / "missing.png"), "--model", str(models / "m.pt")]) == 1
    captured = capsys.readouterr()
    rows = _lines(captured.out)
    assert [r["path"].endswith("missing.png") for r in rows if "error" in r] == [False, True]
    assert "2 of 7 images could not be predicted" in captured.err
    assert predict_cli.main([str(folder), "--model", str(models / "absent.onnx")]) == 2
    assert "absent.onnx not found" in capsys.readouterr().err


def test_onnx_without_kdpipe_metadata_is_refused(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])], [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    onnx.save(helper.make_model(graph), str(tmp_path / "other.onnx"))
    from kdpipe.errors import MissingInputError

    with pytest.raises(MissingInputError, match="no kdpipe metadata"):
        open_model(tmp_path / "other.onnx")
    (tmp_path / "junk.onnx").write_bytes(b"junk")
    with pytest.raises(MissingInputError, match="not a readable ONNX file"):
        open_model(tmp_path / "junk.onnx")


def test_a_folder_scan_predicts_every_format_and_names_what_it_skips(models, tmp_path, caplog):
    rng = np.random.default_rng(1)
    frames = [Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8), "RGB") for _ in range(2)]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:])
    frames[1].save(tmp_path / "scan.tiff")
    frames[1].save(tmp_path / "old.bmp")
    (tmp_path / "notes.txt").write_text("no image")
    out = io.StringIO()
    done, failed = predict_files(open_model(models / "m.pt"), [str(tmp_path)], out=out)
    assert (done, failed) == (3, 0)
    assert {r["path"].rsplit("/", 1)[1] for r in _lines(out.getvalue())} == {"anim.gif", "scan.tiff", "old.bmp"}
    assert f"skipped 1 file(s) that are not images Pillow reads: {tmp_path / 'notes.txt'}" in caplog.text


def test_predict_reads_a_photo_upright_by_its_exif_orientation(models, tmp_path):
    """An orientation-6 JPEG predicts as its upright image does (the model sees the same pixels)."""
    rng = np.random.default_rng(2)
    upright = Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8), "RGB")
    upright.save(tmp_path / "upright.png")
    exif = Image.Exif()
    exif[0x0112] = 6
    upright.transpose(Image.Transpose.ROTATE_90).save(tmp_path / "phone.png", exif=exif)
    out = io.StringIO()
    predict_files(open_model(models / "m.pt"), [str(tmp_path / "upright.png"), str(tmp_path / "phone.png")], topk=3, out=out)
    a, b = _lines(out.getvalue())
    assert a["topk"] == b["topk"]


def test_predict_resizes_a_photo_as_the_training_images_were(tmp_path):
    """A model of center-cropped data (data.resize) carries the mode in its checkpoint and ONNX
    metadata; predict brings a wide photo to the model's size the same way."""
    from kdpipe.data.sources.decode import decode_file

    torch.manual_seed(0)
    model = build_model("resnet8", 3, 1, 8).eval()
    info = ModelInfo(role="student", arch="resnet8", num_classes=3, image_shape=(1, 8, 8), class_names=["a", "b", "c"],
                     mean=[0.5], std=[0.25], resize="center_crop")
    save_checkpoint(tmp_path / "m.pt", model, info)
    export_onnx(model, info, tmp_path / "m.onnx", opset=18)
    arr = np.zeros((20, 60), dtype=np.uint8)
    arr[:, 15:45] = np.arange(30, dtype=np.uint8)[None] * 8
    Image.fromarray(arr, "L").save(tmp_path / "wide.png")
    for file in ("m.pt", "m.onnx"):
        loaded = open_model(tmp_path / file)
        assert loaded.resize == "center_crop"
        out = io.StringIO()
        predict_files(loaded, [str(tmp_path / "wide.png")], topk=3, out=out)
        got = {r["label"]: r["probability"] for r in json.loads(out.getvalue())["topk"]}
        x = normalise(decode_file(str(tmp_path / "wide.png"), 1, (8, 8), "center_crop").array[None], [0.5], [0.25])
        with torch.no_grad():
            expected = torch.softmax(model(torch.from_numpy(x)).double(), dim=1)[0].numpy()
        assert [got[c] for c in "abc"] == pytest.approx(expected, abs=1e-5)
    plain = ModelInfo(**{**info.__dict__, "resize": None})
    assert "resize" not in plain.to_dict()  # checkpoints of unresized data keep their bytes
    save_checkpoint(tmp_path / "plain.pt", model, plain)
    assert open_model(tmp_path / "plain.pt").resize == "squash"
