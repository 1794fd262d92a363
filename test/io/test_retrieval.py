"""camera_pose_ros.io.retrieval: the bag-of-words index, its file, and query descriptors."""

from __future__ import annotations

import numpy as np
import pytest

from camera_pose_ros.errors import FormatError
from camera_pose_ros.io.retrieval import (
    bow_descriptor,
    build_retrieval_index,
    load_retrieval_index,
    save_retrieval_index,
)


def _images(n: int = 6, per: int = 120, seed: int = 0) -> list[np.ndarray]:
    """SIFT-like descriptors: each image draws from its own cluster of prototypes."""
    rng = np.random.default_rng(seed)
    protos = rng.uniform(0, 255, (n, 8, 128)).astype(np.float32)
    return [np.clip(protos[i][rng.integers(0, 8, per)] + rng.normal(0, 4, (per, 128)), 0, 255)
            .astype(np.float32) for i in range(n)]


def test_each_image_retrieves_itself_first():
    descs = _images()
    index = build_retrieval_index([f"{i}.png" for i in range(6)], descs, words=32, seed=1)
    assert index.descriptors.shape == (6, 32)
    np.testing.assert_allclose(np.linalg.norm(index.descriptors, axis=1), 1.0, rtol=1e-5)
    for i, d in enumerate(descs):
        query = bow_descriptor(d[::2], index.vocabulary, index.idf)  # half its features
        assert int(np.argmax(index.descriptors @ query)) == i


def test_unit_scaled_query_descriptors_match_the_uint8_scale():
    descs = _images()
    index = build_retrieval_index([str(i) for i in range(6)], descs, words=32)
    raw = bow_descriptor(descs[2], index.vocabulary, index.idf)
    unit = bow_descriptor(descs[2] / 512.0, index.vocabulary, index.idf)
    np.testing.assert_allclose(raw, unit, atol=1e-6)


def test_too_few_features_is_a_format_error():
    with pytest.raises(FormatError, match="too few SIFT features"):
        build_retrieval_index(["a"], [np.zeros((10, 128), np.float32)], words=32)


def test_the_file_round_trips(tmp_path):
    index = build_retrieval_index([f"{i}.png" for i in range(6)], _images(), words=16, seed=3)
    path = save_retrieval_index(tmp_path / "g.npz", index)
    back = load_retrieval_index(path)
    assert back.names == index.names and back.seed == 3 and back.words == 16
    np.testing.assert_array_equal(back.descriptors, index.descriptors)
    np.testing.assert_array_equal(back.vocabulary, index.vocabulary)
    assert list(tmp_path.iterdir()) == [path]  # no temporary left behind


def test_inconsistent_or_unreadable_files_are_refused(tmp_path):
    index = build_retrieval_index([f"{i}" for i in range(6)], _images(), words=16)
    np.savez(tmp_path / "bad.npz", names=np.array(index.names[:3]),
             descriptors=index.descriptors, vocabulary=index.vocabulary, idf=index.idf)
    with pytest.raises(FormatError, match="do not fit"):
        load_retrieval_index(tmp_path / "bad.npz")
    np.savez(tmp_path / "partial.npz", names=np.array(index.names))
    with pytest.raises(FormatError, match="lacks"):
        load_retrieval_index(tmp_path / "partial.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(FormatError, match="cannot read"):
        load_retrieval_index(tmp_path / "junk.npz")
