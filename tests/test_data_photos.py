"""builtin:photos / photos_heldout: tiles of scikit-image's bundled photographs for the
enhancement demo; the held-out photos never appear in the training tiles."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest

from dgan.data import builtin
from dgan.data.builtin import HELDOUT_PHOTOS, TRAIN_PHOTOS, make_builtin, photo_tiles

pytestmark = pytest.mark.skipif(importlib.util.find_spec("skimage") is None,
                                reason="needs the photos extra (scikit-image)")


def test_tiles_are_full_resolution_crops_and_the_held_out_photos_stay_out():
    train = photo_tiles(TRAIN_PHOTOS, 64, overlap=True)
    held = photo_tiles(HELDOUT_PHOTOS, 64, overlap=False)
    assert train.shape[1:] == held.shape[1:] == (64, 64, 3) and train.dtype == np.uint8
    assert not set(TRAIN_PHOTOS) & set(HELDOUT_PHOTOS)
    # chelsea 451x300 and rocket 640x427, without overlap: 7 x 4 + 10 x 6 tiles of 64
    assert len(held) == 7 * 4 + 10 * 6
    seen = {t.tobytes() for t in train}
    assert not any(t.tobytes() in seen for t in held)
    # no flat background tiles (the retina's and the Hubble field's black)
    assert min(float(t.std()) for t in train) >= builtin.FLAT_TILE_STD


def test_make_builtin_writes_rgb_shards(tmp_path):
    index = make_builtin("photos_heldout", tmp_path / "h", resolution=96)
    assert index["channels"] == 3 and index["resolution"] == 96
    assert index["total"] == sum(s["count"] for s in index["shards"]) == len(
        photo_tiles(HELDOUT_PHOTOS, 96, overlap=False))
    assert json.loads((tmp_path / "h" / "index.json").read_text())["builtin"] == "photos_heldout"


def test_missing_scikit_image_is_one_clear_error(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ValueError, match=r"scikit-image: pip install 'dgan\[photos\]'"):
        builtin.photo_file("astronaut.png")
