"""camera_pose_ros.dataset.refmap: the refinement map reuses the SfM stage's retrieval index."""

from __future__ import annotations

import shutil

import numpy as np
import pycolmap
import pytest

from camera_pose_ros.dataset.refmap import build_refinement_map
from camera_pose_ros.io.refmap import load_refinement_map
from camera_pose_ros.io.retrieval import (
    GLOBAL_DESCRIPTORS,
    RetrievalIndex,
    save_retrieval_index,
)

pytestmark = pytest.mark.slow


def test_the_sfm_retrieval_index_is_reused_when_it_fits(sfm_building, tmp_path):
    _, data = sfm_building
    copy = tmp_path / "data"
    shutil.copytree(data, copy, ignore=shutil.ignore_patterns("images", "*.png"))
    db = pycolmap.Database.open(copy / "sfm" / "database.db")
    try:
        names = sorted(im.name for im in db.read_all_images())
    finally:
        db.close()
    rng = np.random.default_rng(5)
    words = 32
    desc = rng.random((len(names), words)).astype(np.float32)
    marker = RetrievalIndex(names, desc / np.linalg.norm(desc, axis=1, keepdims=True),
                            rng.uniform(0, 255, (words, 128)).astype(np.float32),
                            np.full(words, 0.5, np.float32), seed=7)
    save_retrieval_index(copy / "sfm" / GLOBAL_DESCRIPTORS, marker)

    reused = load_refinement_map(build_refinement_map(copy, out=tmp_path / "a.npz",
                                                      words=words, seed=7))
    np.testing.assert_array_equal(reused.vocabulary, marker.vocabulary)
    rows = [names.index(str(n)) for n in reused.names]
    np.testing.assert_array_equal(reused.global_desc, marker.descriptors[rows])

    # another seed: the vocabulary is learnt again from the database, not taken from the file
    fresh = load_refinement_map(build_refinement_map(copy, out=tmp_path / "b.npz",
                                                     words=words, seed=8))
    assert fresh.vocabulary.shape == (words, 128)
    assert not np.allclose(fresh.vocabulary, marker.vocabulary)

    # an index of another database (a frame missing): learnt again, no KeyError
    stale = RetrievalIndex(names[1:], marker.descriptors[1:], marker.vocabulary, marker.idf,
                           seed=7)
    save_retrieval_index(copy / "sfm" / GLOBAL_DESCRIPTORS, stale)
    again = load_refinement_map(build_refinement_map(copy, out=tmp_path / "c.npz",
                                                     words=words, seed=7))
    assert len(again) == len(reused)
    assert not np.allclose(again.vocabulary, marker.vocabulary)
