"""Open a report in headless Chromium: check that it renders, take a screenshot."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

# Flags this machine kind needs: no sandbox as root, and no background networking (the network
# is closed, and Chromium would otherwise retry connections at every start).
CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--hide-scrollbars",
)
_PROBE = """<script>
window.addEventListener("load", function () {
  var imgs = Array.prototype.slice.call(document.images);
  var out = document.createElement("pre"); out.id = "latentsurgeon-probe";
  out.textContent = JSON.stringify({
    images: imgs.length,
    loaded: imgs.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length,
    tables: Array.prototype.map.call(document.querySelectorAll("table"), function (t) {
      return {id: t.id, rows: t.rows.length}; })
  });
  document.body.appendChild(out);
});
</script>"""


def find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


def _run(binary: str, args: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    with tempfile.TemporaryDirectory() as profile:
        return subprocess.run([binary, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args],
                              capture_output=True, text=True, timeout=timeout, check=False)


def inspect_report(report: str | Path, screenshot: str | Path | None = None, *,
                   binary: str | None = None, timeout: float = 90.0) -> dict:
    """Render ``report`` in headless Chromium and say what loaded.

    Returns ``{"images": n, "loaded": n_loaded, "tables": [{"id", "rows"}, ...]}``; images count
    as loaded when complete with a natural width above zero. A copy of the page with a small probe
    script is rendered, so the report file itself stays untouched.
    """
    binary = binary or find_chromium()
    if binary is None:
        raise FileNotFoundError("No Chromium found (install Debian's chromium package).")
    report = Path(report).resolve()
    with tempfile.TemporaryDirectory() as tmp:
        probed = Path(tmp) / report.name
        text = report.read_text(encoding="utf-8")
        probed.write_text(text.replace("</body>", _PROBE + "</body>"), encoding="utf-8")
        result = _run(binary, ["--virtual-time-budget=10000", "--dump-dom", probed.as_uri()],
                      timeout)
        match = re.search(r'<pre id="latentsurgeon-probe">(.*?)</pre>', result.stdout, re.S)
        if not match:
            raise RuntimeError(f"Chromium did not render the report (exit {result.returncode}): "
                               f"{result.stderr[-2000:]}")
        found = json.loads(match.group(1).replace("&quot;", '"'))
        if screenshot is not None:
            shot = Path(screenshot).resolve()
            _run(binary, ["--window-size=1200,2400", f"--screenshot={shot}", report.as_uri()],
                 timeout)
            found["screenshot"] = str(shot) if shot.exists() else None
    return found
