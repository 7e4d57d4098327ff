"""`dvc plots show` renders offline: every chart drawn in headless Chromium, no network, no errors."""

import itertools
import os

import numpy as np
import pytest
import yaml
from PIL import Image

from conftest import ROOT
from kdpipe.config import lookup
from kdpipe.plots_page import chromium_path, network_scripts, plots_show, render

needs_browser = pytest.mark.skipif(
    chromium_path() is None and not os.environ.get("KDPIPE_REQUIRE_BROWSER"),
    reason="no Chromium here (CI installs Debian's chromium and sets KDPIPE_REQUIRE_BROWSER=1)",
)


IMAGES = (".png", ".jpg", ".jpeg", ".svg", ".gif")


def generated_paths(out, stage: dict, base) -> list[str]:
    """The path of a stage `plots:` output, once per stage a `matrix:` generates (``${item.<axis>}``
    filled in from the experiment's params.yaml: a list's items, a mapping's keys)."""
    path = out if isinstance(out, str) else next(iter(out))
    if "matrix" not in stage:
        return [path]
    params = yaml.safe_load((base / "params.yaml").read_text())
    axes = {}
    for axis, values in stage["matrix"].items():
        if isinstance(values, str):  # "${a.b}"
            values = lookup(params, values.strip("${}"))
        axes[axis] = list(values)
    paths = []
    for combo in itertools.product(*axes.values()):
        filled = path
        for axis, value in zip(axes, combo):
            filled = filled.replace("${item." + axis + "}", str(value))
        paths.append(filled)
    return paths


def declared_plots() -> tuple[int, list[str], int]:
    """(Vega charts, image files, empty charts) DVC draws: the top-level `plots:` of every dvc.yaml,
    plus one chart a data file of the stages' `plots:` outputs (the training curves). An experiment
    pipeline may be committed part-way: each stage `plots:` output it has not made yet is one empty
    chart."""
    charts, images, empty = 0, [], 0
    experiments = sorted((ROOT / "experiments").glob("*/dvc.yaml"))
    for dvc_file in (ROOT / "dvc.yaml", ROOT / "compare" / "dvc.yaml", *experiments):
        spec = yaml.safe_load(dvc_file.read_text())
        base = dvc_file.parent
        for plot in spec.get("plots", []):
            if isinstance(plot, dict):  # a data plot with its template
                charts += 1
            else:  # a folder of images
                images += [str(p) for p in (base / plot).glob("*") if p.suffix in IMAGES]
        for stage in spec["stages"].values():
            for out, path in ((o, p) for o in stage.get("plots", []) for p in generated_paths(o, stage, base)):
                files = [p for p in (base / path).rglob("*") if p.is_file()]
                if not files and dvc_file in experiments:
                    charts, empty = charts + 1, empty + 1
                    continue
                assert files, f"{path}: a declared plots output with nothing committed"
                assert not any(p.suffix == ".json" for p in files), f"{path}: a JSON summary DVC cannot draw"
                charts += sum(p.suffix not in IMAGES for p in files)
                images += [str(p) for p in files if p.suffix in IMAGES]
    return charts, images, empty


def test_template_is_offline_and_configured():
    config = (ROOT / ".dvc" / "config").read_text()
    assert "html_template = plots/offline.html" in config
    template = (ROOT / ".dvc" / "plots" / "offline.html").read_text()
    assert "{plot_divs}" in template and "{scripts}" not in template  # DVC adds no CDN tags
    for package in ("vega@5.33.1", "vega-lite@5.23.0", "vega-embed@6.29.0"):
        assert f'data-package="{package}"' in template
    assert network_scripts(ROOT / ".dvc" / "plots" / "offline.html") == []


@needs_browser
def test_committed_plots_render_in_chromium(tmp_path):
    page = plots_show(ROOT, tmp_path / "plots")
    assert network_scripts(page) == []
    charts, image_files, empty = declared_plots()
    images = len(image_files)
    shot = tmp_path / "plots.png"
    result = render(page, screenshot=shot, min_charts=charts)
    assert result.errors == []
    assert result.external_requests == []
    assert result.charts == charts and result.drawn == charts - empty, result
    assert result.images == images and result.images_loaded == images, result
    # the screenshot is a real page: tall, and not blank
    pixels = np.asarray(Image.open(shot).convert("L"))
    assert pixels.shape[0] > 2000 and pixels.std() > 10
