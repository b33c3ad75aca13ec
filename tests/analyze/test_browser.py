"""The report renders in a real browser: headless Chromium loads it from disk, offline.

Debian's ``chromium`` package. Without it the tests skip, except in CI (``CI`` set), where
they fail: CI installs Chromium itself.
"""

import os
import re
import shutil
import subprocess

import numpy as np
import pytest

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars", "--window-size=1280,2000"]

# Counts, once the page and every PNG it links to have loaded, the <img> elements that decoded
# (naturalWidth > 0), the linked PNG files that decode, and whether the page is wider than the
# window; puts the counts on <body> for --dump-dom to show.
PROBE = """<script>
window.addEventListener("load", function () {
  var imgs = Array.prototype.slice.call(document.images);
  var links = Array.prototype.slice.call(document.querySelectorAll('a[href$=".png"]'));
  Promise.all(links.map(function (a) {
    return new Promise(function (done) {
      var im = new Image();
      im.onload = function () { done(im.naturalWidth > 0 ? 1 : 0); };
      im.onerror = function () { done(0); };
      im.src = a.getAttribute("href");
    });
  })).then(function (linked) {
    var b = document.body;
    b.setAttribute("data-images", imgs.length);
    b.setAttribute("data-images-loaded", imgs.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length);
    b.setAttribute("data-linked", links.length);
    b.setAttribute("data-linked-loaded", linked.reduce(function (s, v) { return s + v; }, 0));
    b.setAttribute("data-too-wide", document.documentElement.scrollWidth > window.innerWidth ? "1" : "0");
  });
});
</script>"""


@pytest.fixture(scope="module")
def chromium():
    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name)
        if path:
            return path
    if os.environ.get("CI"):
        pytest.fail("chromium is not installed, and CI must run the browser test: apt-get install -y chromium")
    pytest.skip("chromium is not installed (Debian: apt-get install -y chromium); CI (CI set) fails instead")


def _run(chromium, tmp_path, *args) -> str:
    cmd = [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}", *args]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"chromium exited {done.returncode}: {done.stderr[-2000:]}"
    return done.stdout


@pytest.fixture(scope="module")
def probed_body(chromium, external_report, tmp_path_factory):
    """The <body> tag of the report with the probe, as Chromium leaves it after loading."""
    page = external_report.with_name("probe.html")  # beside index.html: its PNG links resolve
    page.write_text(external_report.read_text(encoding="utf-8").replace("</body>", PROBE + "</body>"),
                    encoding="utf-8")
    dom = _run(chromium, tmp_path_factory.mktemp("chromium"), "--virtual-time-budget=20000", "--dump-dom",
               page.as_uri())
    page.unlink()
    body = re.search(r"<body[^>]*>", dom)
    assert body, f"no <body> in Chromium's DOM dump: {dom[:500]!r}"
    return dict(re.findall(r'data-([a-z-]+)="(\d+)"', body.group(0)))


def test_every_embedded_image_loads_in_chromium(probed_body):
    assert int(probed_body["images"]) == 10
    assert probed_body["images-loaded"] == probed_body["images"]


def test_every_linked_png_beside_the_html_loads_in_chromium(probed_body):
    assert int(probed_body["linked"]) == 10
    assert probed_body["linked-loaded"] == probed_body["linked"]


def test_the_page_fits_a_1280_px_window(probed_body):
    assert probed_body["too-wide"] == "0"


def test_chromium_screenshots_the_report(chromium, external_report, tmp_path):
    from matplotlib.image import imread

    shot = tmp_path / "report.png"
    _run(chromium, tmp_path, f"--screenshot={shot}", external_report.as_uri())
    rgb = imread(shot)[..., :3]
    assert rgb.shape[:2] == (2000, 1280)
    not_white = (rgb < 0.9).any(axis=2).mean()
    assert 0.02 < not_white < 0.9, f"screenshot looks blank or broken: {not_white:.1%} of pixels not white"
    assert len(np.unique(rgb.reshape(-1, 3).round(2), axis=0)) > 50  # text, tables, a figure: many colours
