"""Several floors: which one the camera is on, recognised by retrieval against each floor's map.

A building is mapped floor by floor (:mod:`camera_pose_ros.io.floors`): each floor has its own
dataset, model, refinement map and map frame. :func:`recognise_floor` describes the image once
(SIFT) and lets every floor's refiner solve it from retrieval alone (no regressed prior: the
regressor of the wrong floor knows nothing); the floor whose verified solution has the most
inliers wins, unless another floor's map also verifies a pose (with at least
``ambiguity_ratio`` times its inliers; default 0: any): then no floor is claimed. Inlier counts
do not tell look-alike floors apart: the better-mapped twin has more. :class:`FloorSet`
keeps the current floor for the node: set by hand (parameter or topic), recognised when
unknown, and recognised again after ``recheck_after`` refinements in a row failed on the
current floor (a lift ride, stairs).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from camera_pose_ros.camera import PinholeCamera
from camera_pose_ros.errors import ConfigError
from camera_pose_ros.io.floors import FloorSpec
from camera_pose_ros.runtime.estimate import PoseEstimate, blind_estimate
from camera_pose_ros.runtime.refine import QueryFeatures, Refiner

if TYPE_CHECKING:
    from camera_pose_ros.runtime.localizer import Localizer

__all__ = ["FloorVerdict", "recognise_floor", "FloorSet"]


@dataclass
class FloorVerdict:
    """What :func:`recognise_floor` concluded.

    Attributes:
        floor: the recognised floor's id, or None (no floor fits, or two fit alike).
        estimate: the pose refined on that floor (``floor`` set), or None.
        inliers: per floor, the inliers of its verified solution (0: it found none).
        refused: per floor whose map found a pose and then refused it (its verification,
            the inliers' spread or the look-alike check), that pose's inliers.
        reason: why no floor was recognised ("" when one was).
        seconds: what recognising took.
    """

    floor: str | None
    estimate: PoseEstimate | None
    inliers: dict[str, int] = field(default_factory=dict)
    refused: dict[str, int] = field(default_factory=dict)
    reason: str = ""
    seconds: float = 0.0


def recognise_floor(refiners: Mapping[str, Refiner], image_rgb: np.ndarray,
                    camera: PinholeCamera | None = None, *, ambiguity_ratio: float = 0.0
                    ) -> FloorVerdict:
    """The floor (of ``refiners``, by id) an image was taken on, and its pose there.

    The image's SIFT features are extracted once (again for a refiner whose
    :attr:`~Refiner.feature_settings` differ); each floor refines from retrieval alone, with
    its own verification and look-alike check. The floor with the most inliers wins when
    every other floor's verified inliers are below ``ambiguity_ratio`` times its own (0,
    the default: when no other floor verifies a pose at all).
    """
    t0 = time.perf_counter()
    features: dict[tuple[int, int, int], QueryFeatures] = {}
    blind = blind_estimate()
    results: dict[str, PoseEstimate] = {}
    refused: dict[str, int] = {}
    notes: list[str] = []
    for fid, refiner in refiners.items():
        key = refiner.feature_settings
        if key not in features:
            features[key] = refiner.extract(image_rgb)
        out = refiner.refine(image_rgb, blind.position, blind.quat_wxyz, blind.covariance,
                             camera, features=features[key])
        if out.success:
            results[fid] = PoseEstimate(out.position, out.quat_wxyz, out.covariance,
                                        refined=True, inliers=out.inliers, floor=fid)
        else:
            notes.append(f"{fid}: {out.reason}")
            if out.inliers:
                refused[fid] = out.inliers
    inliers = {fid: (results[fid].inliers if fid in results else 0) for fid in refiners}
    verdict = FloorVerdict(None, None, inliers, refused)
    ranked = sorted(results, key=lambda f: -results[f].inliers)
    if not ranked:
        verdict.reason = "no floor's map fits the image (" + "; ".join(notes) + ")"
    elif len(ranked) > 1 and inliers[ranked[1]] >= ambiguity_ratio * inliers[ranked[0]]:
        verdict.reason = (f"floors {ranked[0]} and {ranked[1]} both fit the image "
                          f"({inliers[ranked[0]]} and {inliers[ranked[1]]} inliers)")
    else:
        verdict.floor, verdict.estimate = ranked[0], results[ranked[0]]
    verdict.seconds = time.perf_counter() - t0
    return verdict


class FloorSet:
    """A building's floors for the node: each floor's spec and localizer, and which one the
    camera is on now.

    Args:
        floors: (spec, localizer) per floor, in the floors file's order.
        current: the floor to start on (None: recognise it).
        recheck_after: after this many failed refinements in a row on the current floor,
            recognise the floor again (0: never).
        ambiguity_ratio: see :func:`recognise_floor`.

    Raises:
        ConfigError: no floors, or ``current`` is not one of them.
    """

    def __init__(self, floors: list[tuple[FloorSpec, Localizer]], *,
                 current: str | None = None, recheck_after: int = 5,
                 ambiguity_ratio: float = 0.0) -> None:
        if not floors:
            raise ConfigError("a floor set needs at least one floor")
        self.specs = {spec.id: spec for spec, _ in floors}
        self.localizers = {spec.id: loc for spec, loc in floors}
        self.recheck_after = int(recheck_after)
        self.ambiguity_ratio = float(ambiguity_ratio)
        self._lock = threading.Lock()
        self._current: str | None = None
        self._failures = 0
        self.select(current)

    @property
    def current(self) -> str | None:
        """The floor the camera is on, None until recognised."""
        return self._current

    @property
    def localizer(self) -> Localizer:
        """The current floor's localizer (the first floor's while none is known)."""
        cur = self._current
        return self.localizers[cur] if cur is not None else next(iter(self.localizers.values()))

    @property
    def lost(self) -> bool:
        """The floor is unknown, or refinement failed ``recheck_after`` times in a row."""
        return self._current is None or 0 < self.recheck_after <= self._failures

    def frame_id(self, floor: str | None) -> str:
        """The map frame of ``floor`` (the current one for None; "" when none is known)."""
        floor = floor or self._current
        return self.specs[floor].frame_id if floor in self.specs else ""

    def select(self, floor: str | None) -> bool:
        """Make ``floor`` current (None or "": unknown, to be recognised); True when it
        changed.

        Raises:
            ConfigError: an unknown floor (the current one stays).
        """
        floor = floor or None
        if floor is not None and floor not in self.specs:
            raise ConfigError(f"unknown floor {floor!r}; known: {', '.join(self.specs)}")
        with self._lock:
            changed, self._current, self._failures = floor != self._current, floor, 0
        return changed

    def refined(self, success: bool) -> None:
        """Count one refinement on the current floor (failures in a row make it lost)."""
        with self._lock:
            self._failures = 0 if success else self._failures + 1

    def recognise(self, image_rgb: np.ndarray, camera: PinholeCamera | None = None
                  ) -> FloorVerdict:
        """:func:`recognise_floor` over every floor with a refinement map."""
        refiners = {fid: loc.refiner for fid, loc in self.localizers.items()
                    if loc.refiner is not None}
        return recognise_floor(refiners, image_rgb, camera,
                               ambiguity_ratio=self.ambiguity_ratio)
