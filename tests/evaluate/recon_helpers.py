"""Plain helpers of the reconstruction-evaluation tests (``tests/evaluate`` is on sys.path while they run)."""

from __future__ import annotations

from pathlib import Path

import pytest

#: colour photographs shipped inside the scikit-image wheel (short sides 300 to 512 px)
PHOTOS = ("astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg")


def skimage_data() -> Path:
    skimage = pytest.importorskip("skimage")
    return Path(skimage.__file__).parent / "data"
