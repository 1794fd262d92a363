"""The refinement map format: what geometric refinement needs from the SfM model.

``DATA/refinement_map.npz`` holds, for every registered frame, its camera pose
(``map_from_cam``) and the indices of the triangulated 3D points it observes; for every
point, its map-frame coordinates and **one** SIFT descriptor (the medoid of its
observations), compressed by PCA to ``D`` int8 components; the shared camera intrinsics;
and a bag-of-words vocabulary with per-image global descriptors for retrieval. The dataset
stage :mod:`camera_pose_ros.dataset.refmap` builds it; refinement then needs neither
pycolmap's database nor the images.

One file, plain arrays (``np.load`` without pickle), written atomically. It is read
memory-mapped: a query touches only the pages of its retrieved frames' points, and
processes that load the same map share them. Format 1 (every observation's descriptor,
about 9x larger) is still read: it is compacted in memory on load.
"""

from __future__ import annotations

import logging
import os
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from camera_pose_ros.camera import PinholeCamera
from camera_pose_ros.errors import RefinementError
from camera_pose_ros.fileio import atomic_path

__all__ = ["REFINEMENT_MAP", "DESCRIPTOR_DIMS", "RefinementMap", "check_descriptor_dims",
           "compact_descriptors", "save_refinement_map", "load_refinement_map",
           "load_refinement_map_frames"]

log = logging.getLogger(__name__)

REFINEMENT_MAP = "refinement_map.npz"
_FORMAT = 2
_READS = (1, 2)
#: PCA components kept per point descriptor (of SIFT's 128)
DESCRIPTOR_DIMS = 64
_CHUNK = 1 << 16  # observations handled at once when compacting (bounds the float copies)


@dataclass
class RefinementMap:
    """Mapped frames and the 3D points they observe, ready for matching.

    Attributes:
        names: (M,) image names of the registered frames, sorted.
        map_from_cam: (M, 4, 4) camera poses in the map frame.
        camera: intrinsics of the mapped frames (ROS pixel convention).
        points: (P, 3) float32 triangulated points in the map frame.
        offsets: (M + 1,) frame ``i`` observes points ``frame_points[offsets[i]:offsets[i+1]]``.
        frame_points: (K,) int32 point indices, per frame.
        desc_codes: (P, D) int8 PCA codes of each point's descriptor;
            ``desc_mean`` (128,), ``desc_basis`` (128, D), ``desc_scale`` (D,) decode them
            (:meth:`descriptors`).
        vocabulary: (W, 128) visual words; ``idf`` (W,) their weights.
        global_desc: (M, W) L2-normalised tf-idf vectors of the frames.
        alignment_rms_m: RMS of the control points after alignment: how far the map itself
            may be from the building's frame (a floor for refined poses' uncertainty).
    """

    names: np.ndarray
    map_from_cam: np.ndarray
    camera: PinholeCamera
    points: np.ndarray
    offsets: np.ndarray
    frame_points: np.ndarray
    desc_codes: np.ndarray
    desc_mean: np.ndarray
    desc_basis: np.ndarray
    desc_scale: np.ndarray
    vocabulary: np.ndarray
    idf: np.ndarray
    global_desc: np.ndarray
    alignment_rms_m: float = 0.0

    def __len__(self) -> int:
        return len(self.names)

    @property
    def centres(self) -> np.ndarray:
        """(M, 3) camera centres in the map frame."""
        return self.map_from_cam[:, :3, 3]

    @property
    def optical_axes(self) -> np.ndarray:
        """(M, 3) viewing directions (camera z) in the map frame."""
        return self.map_from_cam[:, :3, 2]

    def frame_point_indices(self, frames: np.ndarray) -> np.ndarray:
        """Sorted indices of the points that any of ``frames`` observes."""
        parts = [self.frame_points[self.offsets[i]:self.offsets[i + 1]]
                 for i in np.asarray(frames, int)]
        return np.unique(np.concatenate(parts)) if parts else np.zeros(0, np.int64)

    def _decode(self, codes: np.ndarray) -> np.ndarray:
        """(n, 128) float32 descriptors, not normalised, of int8 PCA ``codes``."""
        return (np.asarray(codes, np.float32) * self.desc_scale) @ self.desc_basis.T \
            + self.desc_mean

    def descriptors(self, points: np.ndarray) -> np.ndarray:
        """(n, 128) float32 unit-length descriptors of ``points`` (decoded from the codes)."""
        desc = self._decode(self.desc_codes[np.asarray(points, int)])
        return desc / np.maximum(np.linalg.norm(desc, axis=1, keepdims=True), 1e-9)

    def descriptor_norms(self, chunk: int = 32768) -> np.ndarray:
        """(P,) float32 lengths of every point's decoded descriptor (at least 1e-9), decoded
        ``chunk`` points at a time."""
        norms = np.empty(len(self.points), np.float32)
        for s in range(0, len(norms), chunk):
            norms[s:s + chunk] = np.linalg.norm(self._decode(self.desc_codes[s:s + chunk]),
                                                axis=1)
        return np.maximum(norms, 1e-9)

    def observations(self, frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Indices (n,) and unit descriptors (n, 128) of the points ``frames`` observe."""
        points = self.frame_point_indices(frames)
        return points, self.descriptors(points)


def check_descriptor_dims(dims: int) -> None:
    """Raise :class:`RefinementError` unless 1 <= ``dims`` <= 128."""
    if not 1 <= dims <= 128:
        raise RefinementError(f"descriptor dimensions must be 1 to 128, not {dims}")


def compact_descriptors(obs_point: np.ndarray, obs_desc: np.ndarray, n_points: int,
                        dims: int = DESCRIPTOR_DIMS
                        ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """One descriptor per point, PCA-compressed: ``(codes, mean, basis, scale)``.

    A point's descriptor is the medoid of its observations' (the observation whose cosine
    to the others' sum is largest: a real SIFT vector, not an average of several). The PCA
    is fitted on the points' descriptors; each component is quantised to int8.

    Args:
        obs_point: (K,) point index of each observation.
        obs_desc: (K, 128) uint8 SIFT descriptors (COLMAP's scale).
        n_points: P; a point without observations gets the mean descriptor.
        dims: components kept, 1 to 128.

    Raises:
        RefinementError: ``dims`` out of range.
    """
    check_descriptor_dims(dims)
    obs_point = np.asarray(obs_point, np.int64)

    def unit(rows: slice | np.ndarray) -> np.ndarray:
        d = np.asarray(obs_desc[rows], np.float32)
        return d / np.maximum(np.linalg.norm(d, axis=1, keepdims=True), 1e-9)

    total = np.zeros((n_points, 128), np.float32)
    for s in range(0, len(obs_point), _CHUNK):
        np.add.at(total, obs_point[s:s + _CHUNK], unit(slice(s, s + _CHUNK)))
    score = np.concatenate([np.einsum("ij,ij->i", unit(slice(s, s + _CHUNK)),
                                      total[obs_point[s:s + _CHUNK]])
                            for s in range(0, len(obs_point), _CHUNK)] or [np.zeros(0)])
    order = np.lexsort((-score, obs_point))
    pts, first = np.unique(obs_point[order], return_index=True)
    rep = np.zeros((n_points, 128), np.float32)
    rep[pts] = unit(order[first]) if len(pts) else rep[pts]
    mean = rep[pts].mean(axis=0) if len(pts) else np.zeros(128, np.float32)
    rep[np.setdiff1d(np.arange(n_points), pts)] = mean
    centred = rep - mean
    _, vecs = np.linalg.eigh(centred.T @ centred)  # ascending eigenvalues
    basis = np.ascontiguousarray(vecs[:, ::-1][:, :dims], np.float32)
    proj = centred @ basis
    scale = np.abs(proj).max(axis=0) / 127.0 if n_points else np.ones(dims, np.float32)
    scale = np.where(scale > 0, scale, 1.0).astype(np.float32)
    codes = np.clip(np.round(proj / scale), -127, 127).astype(np.int8)
    return codes, mean.astype(np.float32), basis, scale


def save_refinement_map(path: str | os.PathLike, rmap: RefinementMap) -> Path:
    """Write ``rmap`` to ``path`` atomically (the format :func:`load_refinement_map` reads)."""
    path = Path(path)
    cam = rmap.camera
    arrays: dict[str, Any] = dict(  # Any: savez's stub types allow_pickle as a keyword
        format=np.array(_FORMAT), names=np.asarray(rmap.names),
        map_from_cam=np.asarray(rmap.map_from_cam, float),
        camera=np.array([cam.width, cam.height, cam.fx, cam.fy, cam.cx, cam.cy]),
        camera_distortion=np.array(cam.distortion, float),
        points=np.asarray(rmap.points, np.float32),
        offsets=np.asarray(rmap.offsets, np.int64),
        frame_points=np.asarray(rmap.frame_points, np.int32),
        desc_codes=np.asarray(rmap.desc_codes, np.int8),
        desc_mean=np.asarray(rmap.desc_mean, np.float32),
        desc_basis=np.asarray(rmap.desc_basis, np.float32),
        desc_scale=np.asarray(rmap.desc_scale, np.float32),
        vocabulary=np.asarray(rmap.vocabulary, np.float32),
        idf=np.asarray(rmap.idf, np.float32),
        global_desc=np.asarray(rmap.global_desc, np.float32),
        alignment_rms_m=np.array(float(rmap.alignment_rms_m)))
    with atomic_path(path, suffix=".npz") as tmp:
        np.savez(tmp, **arrays)
    return path


def _member(fh: Any, zf: zipfile.ZipFile, info: zipfile.ZipInfo, path: Path,
            mmap: bool) -> np.ndarray:
    """One ``.npy`` member: memory-mapped when stored uncompressed (and ``mmap``), else read."""
    if mmap and info.compress_type == zipfile.ZIP_STORED:
        fh.seek(info.header_offset)
        local = fh.read(30)
        if local[:4] != b"PK\x03\x04":
            raise ValueError(f"member {info.filename} has no local header")
        name_len, extra_len = struct.unpack("<HH", local[26:30])
        fh.seek(info.header_offset + 30 + name_len + extra_len)
        version = np.lib.format.read_magic(fh)
        read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                       else np.lib.format.read_array_header_2_0)
        shape, fortran, dtype = read_header(fh)
        if dtype.hasobject:
            raise ValueError(f"member {info.filename} holds Python objects")
        if shape and int(np.prod(shape)) > 0:
            return np.memmap(path, dtype=dtype, mode="r", offset=fh.tell(), shape=shape,
                             order="F" if fortran else "C")
    with zf.open(info) as member:
        return np.lib.format.read_array(member, allow_pickle=False)


def _read_arrays(path: str | os.PathLike, keys: tuple[str, ...] | None = None,
                 mmap: bool = False) -> tuple[Path, dict[str, np.ndarray]]:
    """The file's arrays (only ``keys`` when given, and then all of them required), its
    format checked."""
    path = Path(path)
    if path.is_dir():
        path = path / REFINEMENT_MAP
    if not path.is_file():
        raise RefinementError(f"no refinement map at {path}: build one with `camera-pose "
                              "refinement-map --data DATA` (the dataset command writes it)")
    try:
        with zipfile.ZipFile(path) as zf, open(path, "rb") as fh:
            arrays = {info.filename.removesuffix(".npy"): _member(fh, zf, info, path, mmap)
                      for info in zf.infolist()
                      if keys is None or info.filename.removesuffix(".npy") in
                      ("format", *keys)}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise RefinementError(f"cannot read the refinement map {path}: {exc}") from exc
    version = int(arrays.get("format", -1))
    if version not in _READS:
        raise RefinementError(f"{path} is a refinement map of format {version}, this "
                              f"version reads {', '.join(map(str, _READS))}; rebuild it "
                              "with `camera-pose refinement-map`")
    _require(path, arrays, keys or ())
    return path, arrays


def _require(path: Path, arrays: dict[str, np.ndarray], keys: tuple[str, ...]) -> None:
    missing = [k for k in keys if k not in arrays]
    if missing:
        raise RefinementError(f"{path} lacks {', '.join(missing)}: rebuild it with "
                              "`camera-pose refinement-map`")


def load_refinement_map_frames(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Only the frames' names (M,) and ``map_from_cam`` poses (M, 4, 4) of a refinement map
    (the other arrays are not read).

    Raises:
        RefinementError: missing, unreadable or of another format version.
    """
    _, arrays = _read_arrays(path, ("names", "map_from_cam"))
    return np.asarray(arrays["names"]), np.asarray(arrays["map_from_cam"])


_COMMON = ("names", "map_from_cam", "camera", "points", "offsets", "vocabulary", "idf",
           "global_desc")
_COMPACT = ("frame_points", "desc_codes", "desc_mean", "desc_basis", "desc_scale")


def load_refinement_map(path: str | os.PathLike, *, mmap: bool = True) -> RefinementMap:
    """Read a refinement map file, or ``DIR/refinement_map.npz`` when given a directory.

    The large arrays stay memory-mapped unless ``mmap`` is False. A format-1 map is
    compacted in memory (a warning says to rebuild it).

    Raises:
        RefinementError: missing, unreadable, incomplete or of another format version.
    """
    path, arrays = _read_arrays(path, mmap=mmap)
    old = int(arrays["format"]) == 1
    _require(path, arrays, _COMMON + (("obs_point", "obs_desc") if old else _COMPACT))
    if old:
        log.warning("%s is a format-1 refinement map (every observation's descriptor): "
                    "compacting it in memory; rebuild it with `camera-pose refinement-map` "
                    "for the smaller, memory-mapped format", path)
        obs_point = np.asarray(arrays["obs_point"], np.int64)
        codes, mean, basis, scale = compact_descriptors(obs_point, arrays["obs_desc"],
                                                        len(arrays["points"]))
        arrays.update(frame_points=obs_point.astype(np.int32), desc_codes=codes,
                      desc_mean=mean, desc_basis=basis, desc_scale=scale,
                      points=np.asarray(arrays["points"], np.float32))
    c = arrays["camera"]
    return RefinementMap(
        names=np.asarray(arrays["names"]), map_from_cam=np.asarray(arrays["map_from_cam"]),
        camera=PinholeCamera(int(c[0]), int(c[1]), float(c[2]), float(c[3]), float(c[4]),
                             float(c[5]), tuple(arrays.get("camera_distortion", ()))),
        points=arrays["points"], offsets=np.asarray(arrays["offsets"]),
        frame_points=arrays["frame_points"], desc_codes=arrays["desc_codes"],
        desc_mean=np.asarray(arrays["desc_mean"]), desc_basis=np.asarray(arrays["desc_basis"]),
        desc_scale=np.asarray(arrays["desc_scale"]), vocabulary=np.asarray(arrays["vocabulary"]),
        idf=np.asarray(arrays["idf"]), global_desc=np.asarray(arrays["global_desc"]),
        alignment_rms_m=float(arrays.get("alignment_rms_m", 0.0)))
