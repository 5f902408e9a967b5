"""Where the report's pictures go: embedded as data URIs (one self-contained file) or
written beside it in ``RUN/report_files/`` when embedding would make the HTML too big.
"""

from __future__ import annotations

import base64
import hashlib
import re
import shutil
from pathlib import Path

from robsal.io import write_bytes

FILES_DIR = "report_files"
# Above this many (estimated) bytes of pictures the report keeps them in report_files/:
# browsers open a 50 MB HTML file slowly, and e-mail/chat tools refuse it anyway.
EMBED_LIMIT_BYTES = 40 * 2**20


class ImageStore:
    """Turns PNG bytes into an ``<img src>`` value.

    embed=True:  ``data:image/png;base64,...`` (the report is one file, readable offline).
    embed=False: writes ``RUN/report_files/NNNNN_<stem>.png`` and returns the relative path.
    """

    def __init__(self, run_dir: str | Path, embed: bool) -> None:
        self.run_dir = Path(run_dir)
        self.embed = embed
        self.count = 0
        self.total_bytes = 0
        self._files = self.run_dir / FILES_DIR
        self._written: dict[str, str] = {}
        if not embed and self._files.exists():
            shutil.rmtree(self._files)  # stale pictures of an earlier report

    def add(self, png: bytes, stem: str = "img") -> str:
        if self.embed:
            self.count += 1
            self.total_bytes += len(png)
            return "data:image/png;base64," + base64.b64encode(png).decode("ascii")
        key = hashlib.sha1(png).hexdigest()
        if key in self._written:  # the same picture (e.g. a map in the grid and the viewer) once
            return self._written[key]
        self.count += 1
        self.total_bytes += len(png)
        safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", stem)[:60] or "img"
        name = f"{self.count:05d}_{safe}.png"
        write_bytes(self._files / name, png)
        self._written[key] = f"{FILES_DIR}/{name}"
        return self._written[key]


def estimate_png_bytes(n_pixels: int) -> int:
    """Rough upper estimate of PNG bytes for ``n_pixels`` RGB pixels of noisy saliency maps
    (3 bytes per pixel, compression ~0.8 on noise, base64 4/3)."""
    return int(n_pixels * 3 * 0.8 * 4 / 3)
