"""`snakemake --report` on the smoke run: one self-contained HTML file, results grouped by
paper, and it renders in headless Chromium (a screenshot is kept under test-output/)."""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from workflow_run import ROOT, SMOKE, snakemake

pytestmark = pytest.mark.slow  # every test reads the report of the smoke run

SCREENSHOT = ROOT / "test-output/report.png"


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def report(smoke_run):
    path = smoke_run / "reports/smoke/report.html"
    snakemake(smoke_run, "--report", str(path), "reproduce_all", *SMOKE)
    return path


def embedded_categories(html: str) -> dict:
    """The report's grouping as embedded: {category: {subcategory: [paths]}}."""
    match = re.search(r"var categories = (\{.*?\});\n", html, re.S)
    assert match, "no categories in the report"
    return json.loads(match.group(1))


def test_report_is_self_contained_and_grouped_by_paper(report):
    html = report.read_text()
    # self-contained: no script, stylesheet, image or frame is fetched from anywhere
    assert not re.search(r"<(script|link|img|iframe)[^>]+(src|href)=[\"']?(https?:)?//", html)
    assert not re.search(r"url\(\s*[\"']?(https?:)?//", html)
    grouped = {(category, sub, Path(path).name)
               for category, subs in embedded_categories(html).items()
               for sub, paths in subs.items() for path in paths}
    assert grouped == {
        ("T-Stitch", "Tables", "tstitch_table.html"),
        ("T-Stitch", "Pareto plots", "tstitch_pareto.png"),
        ("ParaTAA", "Tables", "parataa_table.html"),
        ("ParaTAA", "Pareto plots", "parataa_pareto.png"),
        ("ParaTAA", "Convergence", "parataa_convergence.png"),
        *((paper, sub, f"{table}_{name}")
          for paper, table in (("SpeeD / SpeeDiT", "speedit"), ("Immiscible Diffusion", "immiscible"))
          for sub, name in (("Tables", "table.html"), ("Training curves", "curves.png"),
                            ("Training curves", "schedules.png"), ("Training curves", "cost.png"))),
    }
    assert "Paper-vs-reproduced table for" in html and "Pareto plot of" in html  # captions


# Opens the T-Stitch group and its table page once the report's own script has drawn the page,
# as a click on "Results", "T-Stitch" and the table would.
OPEN_TSTITCH_TABLE = """<script>
window.addEventListener("load", () => setTimeout(() => {
  const path = Object.keys(results).find(p => p.endsWith("tstitch_table.html"));
  app.setView({navbarMode: "category", category: "T-Stitch", content: "html",
               contentPath: results[path].data_uri, resultPath: path});
}, 500));
</script>
"""


def test_report_renders_in_headless_chromium(report, tmp_path):
    browser = chromium()
    if browser is None:
        pytest.skip("Chromium not installed: run `bash scripts/install_test_cluster.sh` "
                    "(Debian: apt-get install chromium)")
    common = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
              "--virtual-time-budget=15000", "--window-size=1400,900",
              f"--user-data-dir={tmp_path / 'profile'}"]

    def render(path: Path, *args: str) -> str:
        run = subprocess.run([*common, *args, path.as_uri()], capture_output=True, text=True,
                             timeout=180)
        assert run.returncode == 0, run.stderr[-2000:]
        return run.stdout

    # The file's <div id="app"> is empty: the menu exists only once its script has run.
    assert not re.search(r'<div id="app">\s*<div', report.read_text())
    dom = render(report, "--dump-dom")
    assert re.search(r'<div id="app"><div.*<nav.*>Results<', dom, re.S)

    opened = tmp_path / "report_opened.html"
    html = report.read_text()
    end = html.rindex("</body>")
    opened.write_text(html[:end] + OPEN_TSTITCH_TABLE + html[end:])
    dom = render(opened, "--dump-dom")
    for entry in ("T-Stitch", "Tables", "Pareto plots"):
        assert f">{entry}<" in dom, f"menu entry {entry!r} not rendered"
    frame = re.search(r'<iframe[^>]+src="data:text/html;[^"]*filename=tstitch_table.html;'
                      r'base64,([^"]+)"', dom)
    assert frame, "the table page is not shown"
    page = base64.b64decode(frame.group(1)).decode()
    assert "<table>" in page and "T-Stitch claims: paper vs ours" in page

    # The opened view differs from the start page where the table is drawn (right of the menu).
    from PIL import Image, ImageChops, ImageStat

    SCREENSHOT.parent.mkdir(exist_ok=True)
    start = tmp_path / "start.png"
    render(report, f"--screenshot={start}")
    render(opened, f"--screenshot={SCREENSHOT}")
    shot, first = (Image.open(p).convert("L") for p in (SCREENSHOT, start))
    content = (shot.width // 4, 0, shot.width, shot.height)
    changed = ImageStat.Stat(ImageChops.difference(shot.crop(content), first.crop(content)))
    assert changed.mean[0] > 5, changed.mean
    print(f"report screenshot (T-Stitch table page): {SCREENSHOT}")
