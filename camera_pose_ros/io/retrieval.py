"""Image retrieval descriptors: a bag of visual words over SIFT, and its file format.

The vocabulary is learnt by k-means on a sample of the mapped frames' SIFT descriptors
(COLMAP's uint8 scale); an image's descriptor is its tf-idf word histogram, L2-normalised.
The dataset stage writes ``sfm/global_descriptors.npz`` (:func:`save_retrieval_index`) while
matching loop pairs; the refinement map reuses it (:func:`load_retrieval_index`) and the
refiner describes query images with :func:`bow_descriptor`. numpy only.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from camera_pose_ros.errors import FormatError
from camera_pose_ros.fileio import atomic_path

__all__ = ["RetrievalIndex", "build_retrieval_index", "bow_descriptor",
           "save_retrieval_index", "load_retrieval_index", "GLOBAL_DESCRIPTORS"]

GLOBAL_DESCRIPTORS = "global_descriptors.npz"


@dataclass
class RetrievalIndex:
    """Per-image global descriptors and the vocabulary they were made with.

    Attributes:
        names: image names, in the order of ``descriptors``' rows.
        descriptors: (N, W) float32 tf-idf vectors, L2-normalised.
        vocabulary: (W, 128) float32 visual words (COLMAP's uint8 SIFT scale).
        idf: (W,) float32 word weights.
        seed: the k-means seed the vocabulary was learnt with.
    """

    names: list[str]
    descriptors: np.ndarray
    vocabulary: np.ndarray
    idf: np.ndarray
    seed: int = 0

    @property
    def words(self) -> int:
        """The vocabulary size."""
        return len(self.vocabulary)


def _nearest(x: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """Index of the nearest centre of each row (squared L2, one BLAS product)."""
    return np.argmin((centres**2).sum(1)[None, :] - 2.0 * x @ centres.T, axis=1)


def _kmeans(x: np.ndarray, k: int, rng: np.random.Generator, iters: int = 8) -> np.ndarray:
    """Lloyd's k-means with BLAS distances (scipy's kmeans2 took minutes on 60k SIFT)."""
    centres = x[rng.choice(len(x), k, replace=False)].copy()
    for _ in range(iters):
        label = _nearest(x, centres)
        counts = np.bincount(label, minlength=k)
        sums = np.zeros_like(centres)
        np.add.at(sums, label, x)
        filled = counts > 0
        centres[filled] = sums[filled] / counts[filled, None]
        empty = np.flatnonzero(~filled)
        centres[empty] = x[rng.choice(len(x), len(empty), replace=False)]
    return centres


def build_retrieval_index(names: list[str], descriptors: list[np.ndarray], *,
                          words: int = 256, seed: int = 0) -> RetrievalIndex:
    """Learn a vocabulary from the images' SIFT descriptors and describe every image.

    Raises:
        FormatError: too few descriptors in all to learn ``words`` visual words.
    """
    descs = [np.asarray(d, dtype=np.float32).reshape(-1, 128) for d in descriptors]
    rng = np.random.default_rng(seed)
    per_image = max(20, 20000 // max(1, len(descs)))
    parts = [d[rng.permutation(len(d))[:per_image]] for d in descs if len(d)]
    sample = np.concatenate(parts) if parts else np.zeros((0, 128), np.float32)
    if len(sample) < words:
        raise FormatError(f"too few SIFT features ({len(sample)}) for image retrieval "
                          f"({words} words); are the images textured?")
    vocab = _kmeans(sample, words, rng)
    hist = np.zeros((len(descs), words), np.float32)
    for i, d in enumerate(descs):
        if len(d):
            hist[i] = np.bincount(_nearest(d, vocab), minlength=words)
    idf = np.log((len(descs) + 1) / ((hist > 0).sum(0) + 1)).astype(np.float32)
    hist *= idf
    hist /= np.linalg.norm(hist, axis=1, keepdims=True) + 1e-12
    return RetrievalIndex(list(names), hist, vocab, idf, seed)


def bow_descriptor(descriptors_N128: np.ndarray, vocabulary: np.ndarray, idf: np.ndarray
                   ) -> np.ndarray:
    """The tf-idf bag-of-words vector of one image's SIFT descriptors (COLMAP's uint8 scale).

    Descriptors scaled to unit length (pycolmap's float output) are rescaled to the uint8
    range of the database, in which the vocabulary was learnt.
    """
    d = np.asarray(descriptors_N128, dtype=np.float32)
    if len(d) and d.max() <= 1.0:
        d = d * 512.0
    hist = np.bincount(_nearest(d, vocabulary), minlength=len(vocabulary)).astype(np.float32)
    hist *= idf
    return hist / (np.linalg.norm(hist) + 1e-12)


def save_retrieval_index(path: str | os.PathLike, index: RetrievalIndex) -> Path:
    """Write ``index`` to an ``.npz`` file atomically; returns the path."""
    path = Path(path)
    with atomic_path(path, suffix=".npz") as tmp:
        np.savez(tmp, names=np.array(index.names), descriptors=index.descriptors,
                 vocabulary=index.vocabulary, idf=index.idf, seed=np.array(index.seed))
    return path


def load_retrieval_index(path: str | os.PathLike) -> RetrievalIndex:
    """Read a file written by :func:`save_retrieval_index`.

    Raises:
        FormatError: missing, unreadable, or its arrays do not fit together.
    """
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (OSError, ValueError) as exc:
        raise FormatError(f"cannot read retrieval descriptors {path}: {exc}") from exc
    try:
        index = RetrievalIndex([str(n) for n in arrays["names"]],
                               arrays["descriptors"].astype(np.float32),
                               arrays["vocabulary"].astype(np.float32),
                               arrays["idf"].astype(np.float32), int(arrays.get("seed", -1)))
    except KeyError as exc:
        raise FormatError(f"{path} lacks the array {exc}") from exc
    if index.descriptors.shape != (len(index.names), index.words) or index.idf.shape != (
            index.words,) or index.vocabulary.shape[1:] != (128,):
        raise FormatError(f"{path}: descriptors, vocabulary and idf do not fit together")
    return index
