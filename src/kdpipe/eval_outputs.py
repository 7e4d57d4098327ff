"""What the evaluate stage hands the figures stage: every model's test logits and the feature
maps of a few test images, as a folder of .npy files and an index (``data/eval_outputs/``).

.npy rather than .npz: ``np.save`` writes the same bytes for the same arrays, so a re-run with
the same results leaves the folder's DVC hash unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kdpipe.errors import MissingInputError
from kdpipe.io import read_json, write_json, write_with

FOLDER = Path("data/eval_outputs")  # a cached output of evaluate, a dependency of figures
INDEX = "index.json"


@dataclass(frozen=True)
class FeatureMaps:
    layer: str  # the module whose output is shown
    channels: list[int]  # which of its channels, most active first
    maps: np.ndarray  # images x channels x H x W


@dataclass(frozen=True)
class EvalOutputs:
    class_names: list[str]
    labels: np.ndarray  # the test split's labels
    logits: dict[str, np.ndarray]  # model -> test logits, in the split's order
    images: np.ndarray  # the test images the feature maps are shown for (uint8, N x C x H x W)
    captions: list[str]  # their class names
    feature_maps: dict[str, dict[str, FeatureMaps]]  # model -> "early" | "middle" -> maps


def _save_array(path: Path, array: np.ndarray) -> None:
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as fh:  # a file object: np.save would append ".npy" to a temporary name
            np.save(fh, array, allow_pickle=False)

    write_with(path, write)


def save_eval_outputs(outputs: EvalOutputs, folder: Path = FOLDER) -> None:
    _save_array(folder / "labels.npy", outputs.labels)
    _save_array(folder / "images.npy", outputs.images)
    for name, logits in outputs.logits.items():
        _save_array(folder / "logits" / f"{name}.npy", logits)
    maps_index: dict[str, dict[str, dict]] = {}
    for name, by_label in outputs.feature_maps.items():
        maps_index[name] = {}
        for label, fm in by_label.items():
            _save_array(folder / "feature_maps" / f"{name}_{label}.npy", fm.maps)
            maps_index[name][label] = {"layer": fm.layer, "channels": fm.channels}
    # the index last: a folder with an index is complete
    write_json(folder / INDEX, {"class_names": outputs.class_names, "captions": outputs.captions,
                                "models": list(outputs.logits), "feature_maps": maps_index})


def load_eval_outputs(folder: Path = FOLDER) -> EvalOutputs:
    if not (folder / INDEX).is_file():
        raise MissingInputError(f"{folder / INDEX} is missing: run the evaluate stage first (`dvc repro evaluate`)")
    index = read_json(folder / INDEX)
    return EvalOutputs(
        class_names=index["class_names"],
        labels=np.load(folder / "labels.npy"),
        logits={name: np.load(folder / "logits" / f"{name}.npy") for name in index["models"]},
        images=np.load(folder / "images.npy"),
        captions=index["captions"],
        feature_maps={
            name: {label: FeatureMaps(spec["layer"], spec["channels"], np.load(folder / "feature_maps" / f"{name}_{label}.npy"))
                   for label, spec in by_label.items()}
            for name, by_label in index["feature_maps"].items()
        },
    )
