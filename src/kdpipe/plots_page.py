"""Render a `dvc plots show` page in headless Chromium (Playwright) and report what rendered.

    PYTHONPATH=src python -m kdpipe.plots_page --readme   # README figures of the committed run

Used by the test suite (every chart renders, nothing loaded from the network, no console error)
and to make the README's PNG figures from the committed run. Needs Debian's `chromium` (or
`KDPIPE_CHROMIUM` pointing at a Chromium binary); Playwright drives it, no browser download.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
CHART = ".vega-embed"
README_FIGURES = {  # the page's element id of a chart (its dvc.yaml title, punctuation as _) -> docs/figures/
    "Validation_accuracy": "validation_accuracy.png",
    "Test_accuracy_by_model": "test_accuracy_by_model.png",
    "Pareto__test_accuracy_vs_batch-1_CPU_latency__ms_": "pareto_latency.png",
    "Reliability_diagram__test___accuracy_vs_confidence": "reliability.png",
    "plots_methods_methods_csv": "methods.png",
}


def chromium_path() -> str | None:
    for candidate in (os.environ.get("KDPIPE_CHROMIUM"), "/usr/bin/chromium", "/usr/bin/chromium-browser"):
        if candidate and Path(candidate).is_file():
            return candidate
    return None


@dataclass
class Rendered:
    charts: int  # vega-embed containers
    drawn: int  # of those, with a non-empty SVG or canvas
    images: int  # <img> elements
    images_loaded: int
    errors: list[str] = field(default_factory=list)  # console errors and page exceptions
    external_requests: list[str] = field(default_factory=list)  # anything not file: or data:


def render(html: Path, screenshot: Path | None = None, chart_shots: dict[str, Path] | None = None,
           min_charts: int = 1, timeout_ms: int = 30000) -> Rendered:
    from playwright.sync_api import TimeoutError as PlaywrightTimeout
    from playwright.sync_api import sync_playwright

    executable = chromium_path()
    if executable is None:
        raise FileNotFoundError("Chromium not found: install Debian's `chromium` or set KDPIPE_CHROMIUM")
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            errors: list[str] = []
            requests: list[str] = []
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("request", lambda r: requests.append(r.url))
            page.goto(html.resolve().as_uri())
            page.wait_for_load_state("load")
            drawn_js = (
                f"Array.from(document.querySelectorAll('{CHART}')).filter(d => Array.from("
                "d.querySelectorAll('svg, canvas')).some(e => e.getBoundingClientRect().width > 50)).length"
            )
            with contextlib.suppress(PlaywrightTimeout):  # then report what did render
                page.wait_for_function(f"{drawn_js} >= {min_charts}", timeout=timeout_ms)
            result = Rendered(
                charts=page.evaluate(f"document.querySelectorAll('{CHART}').length"),
                drawn=page.evaluate(drawn_js),
                images=page.evaluate("document.images.length"),
                images_loaded=page.evaluate("Array.from(document.images).filter(i => i.naturalWidth > 0).length"),
                errors=errors,
                external_requests=[u for u in requests if not u.startswith(("file:", "data:"))],
            )
            if screenshot is not None:
                page.screenshot(path=str(screenshot), full_page=True)
            for element_id, path in (chart_shots or {}).items():
                path.parent.mkdir(parents=True, exist_ok=True)
                page.locator(f'div[id="{element_id}"]').screenshot(path=str(path))
            return result
        finally:
            browser.close()


def plots_show(repo: Path, out_dir: Path) -> Path:
    """`dvc plots show` of ``repo`` into ``out_dir``; the page's path."""
    subprocess.run([sys.executable, "-m", "dvc", "plots", "show", "-o", str(out_dir)], cwd=repo, check=True,
                   capture_output=True, text=True)
    return out_dir / "index.html"


def network_scripts(html: Path) -> list[str]:
    """<script src=...> that would load from the network."""
    return re.findall(r"<script[^>]+src=[\"'](https?:[^\"']+)", html.read_text())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--readme", action="store_true", help="write docs/figures/*.png from the committed run")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        page = plots_show(Path.cwd(), Path(tmp) / "plots")
        shots = {i: Path("docs/figures") / f for i, f in README_FIGURES.items()} if args.readme else None
        result = render(page, chart_shots=shots)
    print(result)
    return 0 if result.drawn == result.charts and not result.errors and not result.external_requests else 1


if __name__ == "__main__":
    sys.exit(main())
