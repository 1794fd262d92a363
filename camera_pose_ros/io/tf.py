"""Transforms and map-frame poses recorded in a bag: ``/tf``, ``/tf_static`` and pose topics.

A :class:`TfTree` holds every transform of a bag's ``/tf`` and ``/tf_static`` as time series
per edge (parent -> child, as tf2 does: each frame has one parent) and answers
``target_from_source`` at many stamps at once. Between two samples of an edge the transform
is interpolated (linear in translation, slerp in rotation) when they are at most
``max_gap`` apart; beyond an edge's first or last sample it is held for at most ``hold``
(50 ms: a frame stamped a little after the last TF sample) and never
extrapolated. Static edges hold at every stamp. A missing link or a gap is reported per
stamp (a validity mask), never guessed.

:func:`read_pose_topic` reads a map-frame pose topic (``geometry_msgs/PoseWithCovarianceStamped``
such as AMCL's ``/amcl_pose``, ``PoseStamped`` or ``nav_msgs/Odometry``) with its covariance.

Hostile samples (a NaN, a zero quaternion, an empty frame name) are skipped and counted; a
bag whose TF cannot be read past some point raises :class:`BagError`.
"""

from __future__ import annotations

import logging
import os
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.spatial.transform import Rotation

from camera_pose_ros.errors import BagError
from camera_pose_ros.io.bags import open_bag, read_messages

__all__ = [
    "TfTree",
    "PoseSeries",
    "POSE_TOPIC_TYPES",
    "read_tf",
    "read_pose_topic",
    "interpolate_poses",
]

log = logging.getLogger(__name__)

TF_TYPE = "tf2_msgs/msg/TFMessage"
POSE_TOPIC_TYPES = (
    "geometry_msgs/msg/PoseWithCovarianceStamped",
    "geometry_msgs/msg/PoseStamped",
    "nav_msgs/msg/Odometry",
)


def _frame(name: str) -> str:
    """tf2 frame names carry no leading slash (tf1 bags still have them)."""
    return str(name).lstrip("/")


def _valid(trans: np.ndarray, quat_xyzw: np.ndarray) -> bool:
    norm = float(np.linalg.norm(quat_xyzw))
    return bool(np.all(np.isfinite(trans)) and np.all(np.isfinite(quat_xyzw))
                and 0.5 < norm < 1.5 and np.all(np.abs(trans) < 1e6))


def interpolate_poses(stamps_ns: np.ndarray, trans_N3: np.ndarray, rot: Rotation,
                      query_ns: np.ndarray, max_gap_ns: int, hold_ns: int = 50_000_000
                      ) -> tuple[np.ndarray, np.ndarray]:
    """Poses (M, 4, 4) of a sampled series at ``query_ns`` and a validity mask (M,).

    ``stamps_ns`` must be sorted and unique. A query between two samples at most
    ``max_gap_ns`` apart is interpolated; within ``hold_ns`` beyond the first or last
    sample the end sample is held; anything else is invalid (the pose is the identity there).
    """
    query = np.asarray(query_ns, dtype=np.int64)
    out = np.tile(np.eye(4), (len(query), 1, 1))
    valid = np.zeros(len(query), dtype=bool)
    n = len(stamps_ns)
    if n == 0 or len(query) == 0:
        return out, valid
    k = np.searchsorted(stamps_ns, query, side="left")
    exact = (k < n) & (stamps_ns[np.minimum(k, n - 1)] == query)
    inner = ~exact & (k > 0) & (k < n)
    lo, hi = np.clip(k - 1, 0, n - 1), np.clip(k, 0, n - 1)
    inner &= (stamps_ns[hi] - stamps_ns[lo]) <= max_gap_ns
    before = (k == 0) & ~exact & ((stamps_ns[0] - query) <= hold_ns)
    after = (k == n) & ((query - stamps_ns[-1]) <= hold_ns)
    idx = np.where(exact, np.minimum(k, n - 1), np.where(before, 0, n - 1))
    hold = exact | before | after
    out[hold, :3, :3] = rot[idx[hold]].as_matrix()
    out[hold, :3, 3] = trans_N3[idx[hold]]
    if inner.any():
        a, b = lo[inner], hi[inner]
        w = (query[inner] - stamps_ns[a]) / (stamps_ns[b] - stamps_ns[a]).astype(float)
        out[inner, :3, 3] = (1 - w)[:, None] * trans_N3[a] + w[:, None] * trans_N3[b]
        # slerp per interval: relative rotation from a to b, scaled by w
        rel = rot[a].inv() * rot[b]
        out[inner, :3, :3] = (rot[a] * Rotation.from_rotvec(rel.as_rotvec() * w[:, None])
                              ).as_matrix()
    valid = hold | inner
    return out, valid


@dataclass
class _Edge:
    parent: str
    child: str
    static: bool
    stamps: list[int] = field(default_factory=list)
    trans: list[np.ndarray] = field(default_factory=list)
    quats_xyzw: list[np.ndarray] = field(default_factory=list)

    def arrays(self) -> tuple[np.ndarray, np.ndarray, Rotation]:
        st = np.asarray(self.stamps, dtype=np.int64)
        order = np.argsort(st, kind="stable")
        st = st[order]
        keep = np.ones(len(st), dtype=bool)
        keep[1:] = np.diff(st) > 0  # one sample per stamp (the first)
        idx = order[keep]
        trans = np.asarray(self.trans, dtype=float).reshape(-1, 3)[idx]
        quats = np.asarray(self.quats_xyzw, dtype=float).reshape(-1, 4)[idx]
        return st[keep], trans, Rotation.from_quat(quats)


class TfTree:
    """Time series of every transform in a bag, queried like a tf2 buffer."""

    def __init__(self) -> None:
        self._edges: dict[str, _Edge] = {}
        self._cache: dict[str, tuple[np.ndarray, np.ndarray, Rotation]] = {}
        #: samples skipped: not finite, zero quaternion, empty names, a second parent
        self.skipped = 0

    def add(self, parent: str, child: str, stamp_ns: int, trans_3: Any, quat_xyzw_4: Any, *,
            static: bool = False) -> bool:
        """Add one transform ``parent_from_child``; False (and counted) when it is unusable."""
        parent, child = _frame(parent), _frame(child)
        trans = np.asarray(trans_3, dtype=float).reshape(3)
        quat = np.asarray(quat_xyzw_4, dtype=float).reshape(4)
        edge = self._edges.get(child)
        if not parent or not child or parent == child or not _valid(trans, quat) or (
                edge is not None and edge.parent != parent):
            self.skipped += 1
            return False
        if edge is None:
            edge = self._edges[child] = _Edge(parent, child, static)
        if static:  # a re-published static transform replaces the old one
            edge.static = True
            edge.stamps, edge.trans, edge.quats_xyzw = [], [], []
        edge.stamps.append(int(stamp_ns))
        edge.trans.append(trans)
        edge.quats_xyzw.append(quat / np.linalg.norm(quat))
        self._cache.pop(child, None)
        return True

    def add_message(self, transforms: Any, *, static: bool = False, log_ns: int = 0) -> None:
        """Add a ``tf2_msgs/TFMessage``'s transforms; an unusable one is skipped and counted.
        A transform stamped 0 takes ``log_ns`` (the bag's log time)."""
        for t in transforms:
            try:
                tr, q = t.transform.translation, t.transform.rotation
                self.add(t.header.frame_id, t.child_frame_id, _stamp_ns(t.header, log_ns),
                         (tr.x, tr.y, tr.z), (q.x, q.y, q.z, q.w), static=static)
            except (AttributeError, TypeError, ValueError):
                self.skipped += 1

    @property
    def frames(self) -> set[str]:
        """Every frame named by some transform."""
        return {e.child for e in self._edges.values()} | {e.parent for e in self._edges.values()}

    def parent_of(self, frame: str) -> str | None:
        """The parent frame of ``frame``, or None for a root or an unknown frame."""
        edge = self._edges.get(_frame(frame))
        return edge.parent if edge else None

    def time_range_ns(self, child: str) -> tuple[int, int] | None:
        """First and last stamp of the (dynamic) edge into ``child``; None if static/unknown."""
        edge = self._edges.get(_frame(child))
        if edge is None or edge.static or not edge.stamps:
            return None
        return min(edge.stamps), max(edge.stamps)

    def _path_to_root(self, frame: str) -> list[str]:
        """``frame`` and its ancestors up to the root.

        Raises:
            BagError: the chain loops (a transform closes a cycle: tf2 would refuse the
                tree; composing around it gives poses metres wrong).
        """
        path, seen = [frame], {frame}
        while (parent := self.parent_of(path[-1])) is not None:
            if parent in seen:
                raise BagError("TF has a loop: " + " <- ".join([*path, parent])
                               + "; a transform in the bag closes a cycle")
            path.append(parent)
            seen.add(parent)
        return path

    def chain(self, target: str, source: str) -> tuple[list[str], list[str]] | None:
        """Frames from ``source`` up to the common ancestor, and from ``target`` up to it.

        None when the two frames are not connected (a missing link).
        """
        target, source = _frame(target), _frame(source)
        up_s, up_t = self._path_to_root(source), self._path_to_root(target)
        common = next((f for f in up_s if f in set(up_t)), None)
        if common is None:
            return None
        return up_s[:up_s.index(common) + 1], up_t[:up_t.index(common) + 1]

    def missing_link(self, target: str, source: str) -> str:
        """A sentence naming where the chain from ``source`` to ``target`` breaks."""
        up_s = self._path_to_root(_frame(source))
        up_t = self._path_to_root(_frame(target))
        return (f"no transform chain from '{_frame(target)}' to '{_frame(source)}': "
                f"'{up_s[-1]}' has no parent above {' <- '.join(up_s)}, and "
                f"'{up_t[-1]}' none above {' <- '.join(up_t)}; frames in the bag: "
                f"{', '.join(sorted(self.frames)) or 'none'}")

    def _edge_at(self, child: str, stamps_ns: np.ndarray, max_gap_ns: int
                 ) -> tuple[np.ndarray, np.ndarray]:
        """``parent_from_child`` of one edge at the stamps, and validity."""
        edge = self._edges[child]
        if edge.static:
            pose = np.eye(4)
            pose[:3, :3] = Rotation.from_quat(edge.quats_xyzw[-1]).as_matrix()
            pose[:3, 3] = edge.trans[-1]
            return np.tile(pose, (len(stamps_ns), 1, 1)), np.ones(len(stamps_ns), bool)
        if child not in self._cache:
            self._cache[child] = edge.arrays()
        st, trans, rot = self._cache[child]
        return interpolate_poses(st, trans, rot, stamps_ns, max_gap_ns)

    def lookup(self, target: str, source: str, stamps_ns: Any, *, max_gap_s: float = 0.5
               ) -> tuple[np.ndarray, np.ndarray]:
        """``target_from_source`` (M, 4, 4) at each stamp, and a validity mask (M,).

        A stamp is invalid where any link of the chain has no sample close enough (see the
        module docstring). Raises :class:`BagError` when the frames are not connected.
        """
        stamps = np.asarray(stamps_ns, dtype=np.int64).reshape(-1)
        links = self.chain(target, source)
        if links is None:
            raise BagError(self.missing_link(target, source))
        up_s, up_t = links
        gap = int(max_gap_s * 1e9)
        common_from_source = np.tile(np.eye(4), (len(stamps), 1, 1))
        valid = np.ones(len(stamps), bool)
        for child in up_s[:-1]:  # source -> ... -> common: left-multiply each parent_from_child
            pose, ok = self._edge_at(child, stamps, gap)
            common_from_source = pose @ common_from_source
            valid &= ok
        common_from_target = np.tile(np.eye(4), (len(stamps), 1, 1))
        for child in up_t[:-1]:
            pose, ok = self._edge_at(child, stamps, gap)
            common_from_target = pose @ common_from_target
            valid &= ok
        return np.linalg.inv(common_from_target) @ common_from_source, valid


def _stamp_ns(header: Any, log_ns: int) -> int:
    ns = int(header.stamp.sec) * 1_000_000_000 + int(header.stamp.nanosec)
    return ns if ns > 0 else int(log_ns)


def read_tf(path: str | os.PathLike, *, topics: tuple[str, ...] = ("/tf", "/tf_static")
            ) -> TfTree | None:
    """Every transform on the bag's TF topics, or None when the bag has none of them.

    Raises:
        BagError: the bag cannot be read, or a TF topic is not ``tf2_msgs/msg/TFMessage``.
    """
    reader = open_bag(path)
    try:
        conns = [c for c in reader.connections if c.topic in topics]
        if not conns:
            return None
        for c in conns:
            if c.msgtype != TF_TYPE:
                raise BagError(f"topic '{c.topic}' in {path} is {c.msgtype}, not {TF_TYPE}")
        tree = TfTree()
        undecodable = 0
        for conn, log_ns, raw in read_messages(reader, conns, path):
            try:
                msg: Any = reader.deserialize(raw, conn.msgtype)
                transforms = list(msg.transforms)
            except Exception:  # noqa: BLE001 -- corrupt CDR: count and go on
                undecodable += 1
                continue
            tree.add_message(transforms, static=conn.topic.endswith("tf_static"),
                             log_ns=log_ns)
        if undecodable or tree.skipped:
            log.warning("TF in %s: skipped %d undecodable message(s) and %d unusable "
                        "transform(s)", path, undecodable, tree.skipped)
        return tree
    finally:
        reader.close()


@dataclass(frozen=True)
class PoseSeries:
    """A pose topic as arrays: ``frame_from_child`` at each stamp, sorted by stamp.

    Attributes:
        frame_id: the frame the poses are in (header.frame_id, e.g. ``map``).
        child_frame_id: the frame posed (Odometry's child_frame_id; empty for other types).
        stamps_ns: (N,) int64.
        poses_N44: (N, 4, 4).
        covariances_N66: (N, 6, 6) (x, y, z, roll, pitch, yaw) or None when the type has none.
    """

    frame_id: str
    child_frame_id: str
    stamps_ns: np.ndarray
    poses_N44: np.ndarray
    covariances_N66: np.ndarray | None


def read_pose_topic(path: str | os.PathLike, topic: str) -> PoseSeries | None:
    """The poses on ``topic`` of the bag, or None when the bag lacks the topic.

    A message with a non-finite pose or a zero quaternion is skipped (counted in a warning).

    Raises:
        BagError: the topic is not a pose type, or none of its messages is usable.
    """
    reader = open_bag(path)
    try:
        conns = [c for c in reader.connections if c.topic == topic]
        if not conns:
            return None
        msgtype = conns[0].msgtype
        if msgtype not in POSE_TOPIC_TYPES:
            raise BagError(f"topic '{topic}' in {path} is {msgtype}; a pose topic must be one "
                           f"of {', '.join(POSE_TOPIC_TYPES)}")
        frames: dict[str, int] = defaultdict(int)
        child = ""
        stamps, poses, covs = [], [], []
        frame_of: list[str] = []
        skipped = 0
        for conn, log_ns, raw in read_messages(reader, conns, path):
            try:
                msg: Any = reader.deserialize(raw, conn.msgtype)
                pose = msg.pose if msgtype.endswith("PoseStamped") else msg.pose.pose
                p, q = pose.position, pose.orientation
                trans = np.array([p.x, p.y, p.z], float)
                quat = np.array([q.x, q.y, q.z, q.w], float)
                cov = (None if msgtype.endswith("/PoseStamped")
                       else np.asarray(msg.pose.covariance, float).reshape(6, 6))
                stamp = _stamp_ns(msg.header, log_ns)
                frame = _frame(msg.header.frame_id)
                if msgtype.endswith("Odometry"):
                    child = _frame(msg.child_frame_id)
            except Exception:  # noqa: BLE001 -- corrupt CDR or a malformed message
                skipped += 1
                continue
            if not _valid(trans, quat) or (cov is not None and not np.all(np.isfinite(cov))):
                skipped += 1
                continue
            m = np.eye(4)
            m[:3, :3] = Rotation.from_quat(quat / np.linalg.norm(quat)).as_matrix()
            m[:3, 3] = trans
            stamps.append(stamp)
            poses.append(m)
            covs.append(cov)
            frames[frame] += 1
            frame_of.append(frame)
        if skipped:
            log.warning("%s in %s: skipped %d unusable pose message(s)", topic, path, skipped)
        if not stamps:
            raise BagError(f"topic '{topic}' in {path} has no usable pose message")
        if len(frames) > 1:
            log.warning("%s is in several frames (%s); using the most common one", topic,
                        ", ".join(sorted(frames)))
        frame_id = max(frames, key=lambda k: frames[k])
        in_frame = np.array([f == frame_id for f in frame_of], bool)
        order = np.argsort(np.asarray(stamps, np.int64), kind="stable")
        order = order[in_frame[order]]
        st = np.asarray(stamps, np.int64)[order]
        uniq = np.ones(len(st), bool)
        uniq[1:] = np.diff(st) > 0
        order, st = order[uniq], st[uniq]
        cov_arr = None if covs[0] is None else np.asarray(covs, float)[order]
        return PoseSeries(frame_id, child, st, np.asarray(poses)[order], cov_arr)
    finally:
        reader.close()
