"""The HTML report in a real browser (headless Chromium): at 1280 and 1440 px nothing overflows sideways and
run ids stay on one line, with every run's details unfolded. Screenshots are saved beside the test's files."""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import pytest
from report_testkit import fill_team_store

from edgekit import report

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="chromium is not installed (Debian: apt-get install -y chromium; .ci/run does it)"
)

# appended to the page: unfold every run's details, then write the page's widths and the run ids that wrapped
# into the DOM, where --dump-dom shows them
PROBE = """<script>window.addEventListener('load', function () {
  document.querySelectorAll('details').forEach(function (d) { d.open = true; });
  var root = document.documentElement;
  var wrapped = Array.prototype.filter.call(document.querySelectorAll('.id'), function (e) {
    return e.getClientRects().length > 1; });
  var out = document.createElement('pre');
  out.id = 'edgekit-measure';
  out.textContent = JSON.stringify({scroll: root.scrollWidth, client: root.clientWidth, ids: wrapped.length,
                                    all_ids: document.querySelectorAll('.id').length});
  document.body.appendChild(out);
});</script>"""


def _chromium(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    command = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)


@pytest.mark.parametrize("width", [1280, 1440])
def test_the_report_fits_the_screen_without_sideways_scrolling(tmp_path, width):
    store = fill_team_store(tmp_path / "team.db")
    page = report.to_html(store.get(statuses=report.statuses_for("all")))
    probe = tmp_path / "probe.html"
    probe.write_text(page.replace("</body>", PROBE + "</body>"))
    size = f"--window-size={width},900"
    dumped = _chromium(size, "--virtual-time-budget=5000", "--dump-dom", probe.as_uri())
    found = re.search(r'<pre id="edgekit-measure">([^<]*)</pre>', dumped.stdout)
    assert found, f"chromium wrote no measurement (exit {dumped.returncode}): {dumped.stderr[-2000:]}"
    measured = json.loads(found.group(1))
    assert measured["client"] >= width - 20, measured  # the window really was that wide
    assert measured["scroll"] <= measured["client"], f"the page overflows sideways at {width} px: {measured}"
    assert measured["all_ids"] >= 8 and measured["ids"] == 0, f"run ids wrapped at {width} px: {measured}"

    (tmp_path / "report.html").write_text(page)
    shot = tmp_path / f"report-{width}.png"
    taken = _chromium(size, f"--screenshot={shot}", (tmp_path / "report.html").as_uri())
    assert shot.is_file() and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", taken.stderr[-2000:]
