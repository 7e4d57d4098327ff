"""Build .dvc/plots/offline.html: DVC's HTML page template with Vega, Vega-Lite and Vega-Embed
inlined, so `dvc plots show` / `dvc plots diff` pages load no script from the network.

    python report/build_offline_template.py        # needs `npm` and the npm registry, once

The packages are pinned below with the npm registry's integrity hashes; the tarballs are checked
against them before anything is taken out. The generated template is committed, so users never
run this; re-run it only to change versions. (.dvc/config points `plots.html_template` at it.)
"""

from __future__ import annotations

import base64
import hashlib
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

PACKAGES = {  # name: (version, npm dist.integrity, file in the tarball)
    "vega": ("5.33.1", "sha512-1fArfVDUqVbb5z8n+/nVQb+VNBzx8svY6CrsyTK4Ujm4yrd9I1auoKxBAPXLCavY1LcrbHUskQbGUP8gXOzyQw==",
             "package/build/vega.min.js"),
    "vega-lite": ("5.23.0", "sha512-l4J6+AWE3DIjvovEoHl2LdtCUkfm4zs8Xxx7INwZEAv+XVb6kR6vIN1gt3t2gN2gs/y4DYTs/RPoTeYAuEg6mA==",
                  "package/build/vega-lite.min.js"),
    "vega-embed": ("6.29.0", "sha512-PmlshTLtLFLgWtF/b23T1OwX53AugJ9RZ3qPE2c01VFAbgt3/GSNI/etzA/GzdrkceXFma+FDHNXUppKuM0U6Q==",
                   "package/build/vega-embed.min.js"),
}
TEMPLATE = Path(__file__).resolve().parent.parent / ".dvc" / "plots" / "offline.html"
PAGE = """<!DOCTYPE html>
<html>
<head>
    {refresh_tag}
    <meta charset="utf-8">
    <title>kdpipe plots</title>
    <!-- {versions}: inlined from the npm registry by report/build_offline_template.py -->
{scripts}
    <style>
        body {{ font-family: sans-serif; }}
        table {{ border-spacing: 15px; }}
    </style>
</head>
<body>
    {plot_divs}
</body>
</html>
"""


def fetch(name: str, version: str, integrity: str, member: str, workdir: Path) -> str:
    out = subprocess.run(["npm", "pack", f"{name}@{version}", "--silent"], cwd=workdir, check=True,
                         capture_output=True, text=True).stdout.strip().splitlines()[-1]
    tarball = workdir / out
    digest = "sha512-" + base64.b64encode(hashlib.sha512(tarball.read_bytes()).digest()).decode()
    if digest != integrity:
        raise SystemExit(f"{tarball.name}: integrity {digest} does not match the pinned {integrity}")
    with tarfile.open(tarball) as tar:
        code = tar.extractfile(member).read().decode()
    if "</script" in code.lower():
        raise SystemExit(f"{name}: the code contains '</script', it cannot be inlined")
    return code


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        scripts = []
        for name, (version, integrity, member) in PACKAGES.items():
            code = fetch(name, version, integrity, member, Path(tmp))
            scripts.append(f'    <script data-package="{name}@{version}">\n{code}\n    </script>')
    versions = ", ".join(f"{n}@{v}" for n, (v, _, _) in PACKAGES.items())
    # Only {refresh_tag} and {plot_divs} stay for DVC to fill; with no {scripts} placeholder DVC
    # adds none of its CDN <script> tags.
    page = PAGE.replace("{{", "{").replace("}}", "}").replace("{versions}", versions)
    page = page.replace("{scripts}", "\n".join(scripts))
    TEMPLATE.parent.mkdir(parents=True, exist_ok=True)
    TEMPLATE.write_text(page)
    print(f"wrote {TEMPLATE} ({TEMPLATE.stat().st_size / 1e6:.2f} MB): {versions}", file=sys.stderr)


if __name__ == "__main__":
    main()
