"""Synthetic building: a textured indoor floor rendered with exact camera poses.

The floor is a corridor loop around a central block of rooms, with pillars, under a ceiling.
Walls are axis-aligned vertical rectangles; floor and ceiling are horizontal planes. Every
surface carries its own procedurally drawn texture (noise, posters, signs with text,
doors, tiles), so SfM finds distinctive features everywhere and no two places look alike.

Rendering is per-pixel ray casting against the few planes (numpy), then one bilinear
``cv2.remap`` from a texture atlas, with a pre-blurred copy used for distant surfaces (a
two-level mipmap against aliasing). A 640x480 frame takes tens of milliseconds on a CPU.

``write_synthetic_building`` writes the layout of docs/ARCHITECTURE.md's ``synth`` command: mapping
and query bags, ground-truth CSVs, control points, and the floor plan.
"""

from __future__ import annotations

import csv
import io
import logging
import os
import string
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from camera_pose_ros.camera import PinholeCamera
from camera_pose_ros.dataset.synth_robot import RobotSpec, robot_messages
from camera_pose_ros.errors import CameraModelError, ConfigError
from camera_pose_ros.fileio import atomic_dir, write_text_atomic
from camera_pose_ros.geometry import look_at_rotation, quat_wxyz_from_rotmat
from camera_pose_ros.io.bags import BagImageWriter, depth_image_message
from camera_pose_ros.io.floorplan import FloorPlan
from camera_pose_ros.io.posecsv import PoseTable, format_stamp, write_poses

__all__ = [
    "BuildingSpec",
    "Building",
    "SCENARIOS",
    "Renderer",
    "Room",
    "walk_trajectory",
    "path_trajectory",
    "write_synthetic_building",
]

log = logging.getLogger(__name__)

#: the mapping walk's robot localization (``/tf``, ``/amcl_pose``) is drawn with seed
#: ``seed + ROBOT_SEED_OFFSET``
ROBOT_SEED_OFFSET = 7


@dataclass(frozen=True)
class BuildingSpec:
    """Size and look of the synthetic floor; all lengths in metres.

    Attributes:
        scale: multiplies every horizontal length (1.0: a 16 m x 10 m floor).
        wall_height: floor to ceiling.
        texels_per_metre: texture resolution of walls (floor and ceiling use half).
        seed: drives every texture and every random choice.
        lookalike_posters: 0 draws every poster anew (no two places look alike); N > 0
            draws the posters of every wall from one pool of N designs, repeated across the
            floor as real buildings repeat doors, signs and posters.
        twin_corridors: the walls along the far corridor repeat those along the near one,
            turned 180 degrees about the floor's centre, as a building's symmetric wings
            do: walking the far corridor looks like walking the near one.
        rooms: 0 is the corridor loop around a central block (16 m x 10 m at scale 1);
            N >= 2 is a straight corridor with N rooms (6 m x 5 m each at scale 1) on
            either side, each entered through a door (:meth:`Building.room_tour`).
        room_designs: with ``rooms``: 0 gives every room its own walls; K > 0 repeats K
            designs along each side of the corridor (room slot ``j`` has the walls and the
            door of slot ``j % K``), so that rooms look alike inside as real floors do.
        design_seed: with ``rooms``: -1 draws the rooms' doors and walls from ``seed``;
            >= 0 draws each room design's door, walls and brightness from this seed alone,
            so that buildings (floors) sharing it have rooms that look alike, while their
            corridors differ.
        lift: with ``rooms``: the corridor's west end is a lift cabin (``LIFT_DEPTH_M``
            deep at scale 1, the corridor's width, entered through a ``LIFT_DOOR_M`` door
            in its cross wall); its walls, floor and ceiling are drawn from the lift's own
            seed, so the cabin looks the same on every floor, as a lift does.
    """

    scale: float = 1.0
    wall_height: float = 2.8
    texels_per_metre: int = 160
    seed: int = 0
    lookalike_posters: int = 0
    twin_corridors: bool = False
    rooms: int = 0
    room_designs: int = 0
    design_seed: int = -1
    lift: bool = False


#: the lift cabin of ``BuildingSpec.lift`` (metres at scale 1) and the seed of its look
LIFT_DEPTH_M, LIFT_DOOR_M, LIFT_SEED = 1.8, 1.1, 20_171


@dataclass
class _Wall:
    """Vertical rectangle: ``axis`` 0 means the plane x = c, 1 means y = c."""

    axis: int
    c: float
    lo: float
    hi: float
    atlas_u0: float
    atlas_v0: float
    brightness: float
    #: walls with the same design key carry the same texture (rooms that look alike)
    design: tuple | None = None
    #: a partition between rooms (drawn in the floor plan; the loop's are block faces)
    partition: bool = False


@dataclass(frozen=True)
class Room:
    """One room of the ``rooms`` layout: its floor rectangle and its door in the corridor
    wall (``door`` x range; ``side`` -1 south of the corridor, +1 north)."""

    x0: float
    y0: float
    x1: float
    y1: float
    door: tuple[float, float]
    side: int


#: half the thickness of the walls between rooms (the corridor loop's walls are faces of
#: its blocks)
_HALF_WALL = 0.06


class Building:
    """Geometry, textures and floor plan of one synthetic floor."""

    def __init__(self, spec: BuildingSpec = BuildingSpec()) -> None:
        if spec.scale <= 0.3 or spec.scale > 10:
            raise ConfigError(f"building scale must be in (0.3, 10], got {spec.scale}")
        if spec.rooms == 1 or not 0 <= spec.rooms <= 64 or spec.room_designs < 0:
            raise ConfigError(f"rooms must be 0 (the corridor loop) or 2 to 64 and "
                              f"room_designs >= 0, got {spec.rooms} and {spec.room_designs}")
        self.spec = spec
        s = spec.scale
        self.height = spec.wall_height
        #: the rooms of the ``rooms`` layout (none in the corridor loop)
        self.rooms: list[Room] = []
        #: the lift cabin (x0, y0, x1, y1) inside its walls, or None (``BuildingSpec.lift``)
        self.lift: tuple[float, float, float, float] | None = None
        self._rng = np.random.default_rng(spec.seed)
        if spec.rooms:
            self._layout_rooms()
        else:
            self.width, self.depth = 16.0 * s, 10.0 * s
            #: boxes that block walking and sight: (xmin, ymin, xmax, ymax)
            self.blocks = [
                (4.0 * s, 3.5 * s, 12.0 * s, 6.5 * s),  # central block of rooms
                (0.6 * s, 5.7 * s, 1.2 * s, 6.3 * s),  # pillar in the left corridor
                (14.8 * s, 3.7 * s, 15.4 * s, 4.3 * s),  # pillar in the right corridor
            ]
            #: rectangles of floor that are not walkable but do not block sight (a planter)
            self.no_walk = [(7.0 * s, 0.2 * s, 9.0 * s, 0.8 * s)]
        self._poster_pool = [
            self._rng.integers(0, 256, size=(int(self._rng.integers(6, 12)),
                                             int(self._rng.integers(6, 12)), 3)).astype(np.uint8)
            for _ in range(max(0, spec.lookalike_posters))
        ]
        self._build_walls()
        self._build_atlas()

    # -- geometry -------------------------------------------------------------------------
    def _layout_rooms(self) -> None:
        """A corridor along x with rooms on both sides; walls 12 cm thick, doors 1.3 m."""
        s, spec = self.spec.scale, self.spec
        rw, rd, cw, door_w = 6.0 * s, 5.0 * s, 2.6 * s, 1.3 * s
        slots = (spec.rooms + 1) // 2
        self.width, self.depth = slots * rw, 2 * rd + cw
        self.corridor = (rd, rd + cw)
        self.blocks, self.no_walk = [], []
        h = _HALF_WALL
        lift = LIFT_DEPTH_M * s if spec.lift else 0.0
        self.lift = (0.0, rd + h, lift - h, rd + cw - h) if spec.lift else None
        door_of = {d: float((self._design_rng(d) or self._rng).uniform(
            max(0.7 * s, lift + 0.4 * s) if d == 0 else 0.7 * s, rw - door_w - 0.7 * s))
            for d in range(slots)}
        faces: list[tuple[int, float, float, float, tuple | None, bool]] = []
        for j in range(slots):
            x0, x1 = j * rw, (j + 1) * rw
            design = j % spec.room_designs if spec.room_designs else j
            for side, y_wall, y_back in ((-1, rd, 0.0), (1, rd + cw, self.depth)):
                room = 2 * j + (side > 0)
                key = (design, side)
                dx0 = x0 + door_of[design]
                y_in, y_out = y_wall + side * h, y_wall - side * h  # room / corridor face
                ylo, yhi = sorted((y_back, y_in))
                jlo, jhi = sorted((y_in, y_out))
                faces += [(1, y_back, x0, x1, (*key, "back"), False),
                          (0, x0 + (h if j else 0.0), ylo, yhi, (*key, "west"), j > 0),
                          (0, x1 - (h if j < slots - 1 else 0.0), ylo, yhi, (*key, "east"),
                           j < slots - 1)]
                if room >= spec.rooms:  # an odd count: this slot is closed storage
                    self.blocks.append((x0, ylo, x1, yhi))
                    faces += [(1, y_out, x0, x1, None, True)]
                    continue
                self.rooms.append(Room(x0, ylo, x1, yhi, (dx0, dx0 + door_w), side))
                faces += [(1, y_in, x0, dx0, (*key, "front-left"), True),
                          (1, y_in, dx0 + door_w, x1, (*key, "front-right"), True),
                          (1, y_out, x0 + (lift if j == 0 else 0.0), dx0, None, True),
                          (1, y_out, dx0 + door_w, x1, None, True),
                          (0, dx0, jlo, jhi, None, True),  # the door's jambs
                          (0, dx0 + door_w, jlo, jhi, None, True)]
        faces += [(0, 0.0, rd - h, rd + cw + h, ("lift", "back") if lift else None, False),
                  (0, self.width, rd - h, rd + cw + h, None, False)]  # the corridor's ends
        if lift:  # the cabin's sides, and its cross wall with the door (both faces)
            yc, half = rd + cw / 2, LIFT_DOOR_M * s / 2
            faces += [(1, rd + h, 0.0, lift - h, ("lift", "south"), True),
                      (1, rd + cw - h, 0.0, lift - h, ("lift", "north"), True),
                      (0, lift - h, rd + h, yc - half, ("lift", "front-south"), True),
                      (0, lift - h, yc + half, rd + cw - h, ("lift", "front-north"), True),
                      (0, lift + h, rd + h, yc - half, None, True),
                      (0, lift + h, yc + half, rd + cw - h, None, True),
                      (1, yc - half, lift - h, lift + h, None, True),  # the door's jambs
                      (1, yc + half, lift - h, lift + h, None, True)]
        self.walls = [_Wall(a, c, lo, hi, 0.0, 0.0, float(self._rng.uniform(0.8, 1.1)),
                            design, partition)
                      for a, c, lo, hi, design, partition in faces]
        for wall in self.walls:  # a shared design's brightness is the design's
            rng = self._shared_rng(wall.design) if wall.design is not None else None
            if rng is not None:
                wall.brightness = float(rng.uniform(0.8, 1.1))

    #: faces of a room design (their order keys the design's random draws)
    _FACES = ("back", "west", "east", "front-left", "front-right")

    _LIFT_FACES = ("back", "south", "north", "front-south", "front-north", "floor",
                   "ceiling")

    def _lift_rng(self, face: str) -> np.random.Generator:
        """The generator of one face of the lift cabin (the same in every building)."""
        return np.random.default_rng([LIFT_SEED, self._LIFT_FACES.index(face)])

    def _shared_rng(self, design: tuple) -> np.random.Generator | None:
        """The generator of a wall whose look is shared (``_Wall.design``), or None."""
        if design[0] == "lift":
            return self._lift_rng(design[1])
        return self._design_rng(*design)

    def _design_rng(self, design: int, side: int = 0, face: str = ""
                    ) -> np.random.Generator | None:
        """The generator of one room design's face (``design_seed``), or None without one."""
        if self.spec.design_seed < 0:
            return None
        key = [self.spec.design_seed, design, side + 1]
        if face:
            key.append(1 + self._FACES.index(face))
        return np.random.default_rng(key)

    def _build_walls(self) -> None:
        if self.spec.rooms:
            return  # _layout_rooms made them
        w, d = self.width, self.depth
        faces = [(0, 0.0, 0.0, d), (0, w, 0.0, d), (1, 0.0, 0.0, w), (1, d, 0.0, w)]
        for x0, y0, x1, y1 in self.blocks:
            faces += [(0, x0, y0, y1), (0, x1, y0, y1), (1, y0, x0, x1), (1, y1, x0, x1)]
        self.walls = [
            _Wall(a, c, lo, hi, 0.0, 0.0, float(self._rng.uniform(0.8, 1.1)))
            for a, c, lo, hi in faces
        ]

    # -- textures -------------------------------------------------------------------------
    def _texture(self, w_px: int, h_px: int, kind: str) -> np.ndarray:
        """Draw one surface's texture (RGB uint8): distinct content at several scales."""
        rng = self._rng
        base = rng.uniform(90, 200, size=3)
        # low-frequency colour variation
        coarse = rng.normal(0, 18, size=(max(2, h_px // 40), max(2, w_px // 40), 3))
        tex = base + cv2.resize(coarse, (w_px, h_px), interpolation=cv2.INTER_CUBIC)
        # fine grain (plaster, carpet)
        grain = cv2.GaussianBlur(rng.normal(0, 14, size=(h_px, w_px)), (0, 0), 1.2)
        tex = np.clip(tex + grain[:, :, None], 0, 255).astype(np.uint8)
        tex = np.ascontiguousarray(tex)
        area_m2 = w_px * h_px / self.spec.texels_per_metre**2
        n_shapes = int(rng.poisson(28 * area_m2 if kind == "wall" else 10 * area_m2)) + 4
        for _ in range(n_shapes):
            color = tuple(int(c) for c in rng.integers(0, 256, 3))
            x, y = int(rng.integers(0, w_px)), int(rng.integers(0, h_px))
            r = int(rng.integers(4, max(6, h_px // 6)))
            shape = rng.integers(0, 5)
            if shape == 0:
                cv2.circle(tex, (x, y), r, color, -1, cv2.LINE_AA)
            elif shape == 1:
                x2 = x + int(rng.integers(-2 * r, 2 * r))
                y2 = y + int(rng.integers(-2 * r, 2 * r))
                cv2.rectangle(tex, (x, y), (x2, y2), color, -1, cv2.LINE_AA)
            elif shape == 2:
                pts = (rng.normal(0, r, size=(int(rng.integers(3, 7)), 2)) + (x, y)).astype(
                    np.int32)
                cv2.fillPoly(tex, [pts], color, cv2.LINE_AA)
            elif shape == 3:
                x2, y2 = x + int(rng.integers(-3 * r, 3 * r)), y + int(rng.integers(-r, r))
                cv2.line(tex, (x, y), (x2, y2), color, int(rng.integers(2, 6)), cv2.LINE_AA)
            else:
                text = "".join(rng.choice(list(string.ascii_uppercase + string.digits),
                                          int(rng.integers(2, 7))))
                scale = float(rng.uniform(0.6, 2.2))
                cv2.putText(tex, text, (x, y), int(rng.integers(0, 8)), scale, color,
                            int(rng.integers(1, 4)), cv2.LINE_AA)
        if kind == "wall":  # posters with a frame: large, well localised corners
            n_posters = int(rng.poisson(0.6 * w_px / self.spec.texels_per_metre)) + 1
            for _ in range(n_posters):
                pw = int(rng.integers(h_px // 6, h_px // 2))
                ph = int(pw * rng.uniform(0.7, 1.5))
                x = int(rng.integers(0, max(1, w_px - pw)))
                y = int(rng.integers(h_px // 8, max(h_px // 8 + 1, h_px - ph - h_px // 4)))
                design = -1
                if self._poster_pool:  # one of a few designs, repeated across the floor
                    design = int(rng.integers(len(self._poster_pool)))
                    sub = self._poster_pool[design]
                    pw = h_px // 3  # same design, same size: truly alike
                    ph = int(pw * sub.shape[0] / sub.shape[1])
                    x = int(rng.integers(0, max(1, w_px - pw)))
                    y = int(rng.integers(h_px // 8, max(h_px // 8 + 1, h_px - ph - h_px // 4)))
                else:
                    sub = rng.integers(0, 256, size=(max(2, ph // 12), max(2, pw // 12), 3)
                                       ).astype(np.uint8)
                poster = cv2.resize(sub.astype(np.uint8), (pw, ph),
                                    interpolation=cv2.INTER_NEAREST)
                y1, x1 = min(h_px, y + ph), min(w_px, x + pw)
                tex[y:y1, x:x1] = poster[: y1 - y, : x1 - x]
                self._drawn_posters.append((x, y, x1, y1, design))
                cv2.rectangle(tex, (x, y), (x1 - 1, y1 - 1), (20, 20, 20), 3)
            # skirting board: a cue for the floor line, as in real corridors
            tex[-max(2, h_px // 28):] = (tex[-max(2, h_px // 28):] * 0.4).astype(np.uint8)
        elif kind == "floor":  # tiles with a grout line every 0.5 m
            step = self.spec.texels_per_metre // 4
            tex[::step] = (tex[::step] * 0.55).astype(np.uint8)
            tex[:, ::step] = (tex[:, ::step] * 0.55).astype(np.uint8)
        else:  # ceiling panels and lights
            step = int(self.spec.texels_per_metre * 0.3)
            tex[::step] = 60
            tex[:, ::step] = 60
        return tex

    def _build_atlas(self) -> None:
        """Pack every surface's texture into one atlas (remap needs < 32767 px a side)."""
        ppm = self.spec.texels_per_metre
        h_wall = int(np.ceil(self.height * ppm))
        row_width = 8192
        x, y = 0, 0
        placements = []
        for wall in self.walls:
            w_px = int(np.ceil((wall.hi - wall.lo) * ppm)) + 2
            if x + w_px > row_width:
                x, y = 0, y + h_wall + 2
            placements.append((x, y, w_px))
            x += w_px + 2
        floor_ppm = ppm // 2
        fw = int(np.ceil(self.width * floor_ppm)) + 2
        fh = int(np.ceil(self.depth * floor_ppm)) + 2
        floor_y = y + h_wall + 2
        atlas_w = max(row_width, 2 * fw + 4)
        atlas_h = floor_y + fh + 2
        if atlas_w >= 32767 or atlas_h >= 32767:
            raise ConfigError("building too large for the texture atlas; lower scale or "
                              "texels_per_metre")
        atlas = np.zeros((atlas_h, atlas_w, 3), np.uint8)
        #: posters on the walls: atlas rectangle (u0, v0, u1, v1) and design (-1: unique)
        self.posters: list[tuple[int, int, int, int, int]] = []
        for wall, (ax, ay, w_px) in zip(self.walls, placements, strict=True):
            self._drawn_posters: list[tuple[int, int, int, int, int]] = []
            shared = self._shared_rng(wall.design) if wall.design is not None else None
            own, self._rng = self._rng, shared or self._rng  # a shared design's own draws
            tex = self._texture(w_px, h_wall, "wall")
            self._rng = own
            self.posters += [(ax + x0, ay + y0, ax + x1, ay + y1, d)
                             for x0, y0, x1, y1, d in self._drawn_posters]
            atlas[ay:ay + h_wall, ax:ax + w_px] = (tex * wall.brightness).clip(0, 255)
            wall.atlas_u0, wall.atlas_v0 = float(ax), float(ay)
        atlas[floor_y:floor_y + fh, :fw] = self._texture(fw, fh, "floor")
        atlas[floor_y:floor_y + fh, fw + 2:2 * fw + 2] = (
            self._texture(fw, fh, "ceiling") * 1.15).clip(0, 255)
        self.floor_origin = (0.0, float(floor_y))
        self.ceiling_origin = (float(fw + 2), float(floor_y))
        self.floor_ppm = float(floor_ppm)
        if self.lift is not None:  # the cabin's floor and ceiling: the lift's own
            x0, y0, x1, y1 = (int(round(v * floor_ppm)) + 1 for v in self.lift)
            for kind, (u, v), gain in (("floor", self.floor_origin, 1.0),
                                       ("ceiling", self.ceiling_origin, 1.15)):
                own, self._rng = self._rng, self._lift_rng(kind)
                tex = self._texture(x1 - x0, y1 - y0, kind)
                self._rng = own
                atlas[int(v) + y0:int(v) + y1, int(u) + x0:int(u) + x1] = (tex * gain).clip(0, 255)
        if self.spec.twin_corridors:
            self._twin_corridor_walls(atlas, h_wall)
        self._alike_room_walls(atlas, h_wall)
        self.atlas = atlas
        # pre-blurred copy for distant surfaces (texture minified more than ~1.5x)
        self.atlas_far = cv2.GaussianBlur(atlas, (0, 0), 1.6)

    def _alike_room_walls(self, atlas: np.ndarray, h_wall: int) -> None:
        """Give every wall the texture (and brightness) of the first wall of its design."""
        ppm = self.spec.texels_per_metre
        first: dict[tuple, _Wall] = {}
        for wall in self.walls:
            if wall.design is None:
                continue
            src = first.setdefault(wall.design, wall)
            if src is wall:
                continue
            w_px = int(np.ceil(min(wall.hi - wall.lo, src.hi - src.lo) * ppm)) + 2
            u, v = int(wall.atlas_u0), int(wall.atlas_v0)
            su, sv = int(src.atlas_u0), int(src.atlas_v0)
            atlas[v:v + h_wall, u:u + w_px] = atlas[sv:sv + h_wall, su:su + w_px]

    def _twin_corridor_walls(self, atlas: np.ndarray, h_wall: int) -> None:
        """Give each wall along x (y = c) whose 180-degree turn about the floor's centre is
        another wall that wall's texture, mirrored along it (seen from the turned side)."""
        ppm = self.spec.texels_per_metre
        key = {(w.axis, round(w.c, 6), round(w.lo, 6), round(w.hi, 6)): w for w in self.walls}
        for wall in self.walls:
            twin = key.get((1, round(self.depth - wall.c, 6), round(self.width - wall.hi, 6),
                            round(self.width - wall.lo, 6)))
            if wall.axis != 1 or twin is None or wall.c >= twin.c:
                continue
            w_px = int(np.ceil((wall.hi - wall.lo) * ppm)) + 2
            u, v = int(wall.atlas_u0), int(wall.atlas_v0)
            tu, tv = int(twin.atlas_u0), int(twin.atlas_v0)
            # texel 1 + k of the twin is texel w_px - 1 - k of the wall (column 0 is padding)
            atlas[tv:tv + h_wall, tu:tu + w_px] = atlas[v:v + h_wall, u + 1:u + w_px + 1][:, ::-1]

    # -- walks ----------------------------------------------------------------------------
    def room_tour(self, *, inset: float = 1.2, lane: float = 0.0, reverse: bool = False,
                  spacing: float = 0.02) -> np.ndarray:
        """A walk through every room of the ``rooms`` layout, resampled every ``spacing`` m.

        Along the corridor (``lane`` metres north of its centre line), through each room's
        door, once round the room ``inset`` metres from its walls, out again; at the far
        end the walk turns on a half circle and comes back along the corridor on the other
        side of the centre line. With a lift it starts and ends in the cabin. ``reverse`` walks
        it backwards. Corners are rounded (Chaikin).

        Raises:
            ConfigError: the building has no rooms.
        """
        if not self.rooms:
            raise ConfigError("room_tour needs a building with rooms (BuildingSpec.rooms)")
        s = self.spec.scale
        yc = sum(self.corridor) / 2
        x_start = 0.9 * s if self.lift is None else self.lift[2] + 0.9 * s
        # with a lift the walk leaves the cabin first and ends in it (a ride to another floor)
        cabin = [] if self.lift is None else [(self.lift[2] / 2, yc)]
        pts = [*cabin, (x_start, yc + lane)]
        for room in sorted(self.rooms, key=lambda r: (r.x0, r.side)):
            xd = sum(room.door) / 2
            y_wall = self.corridor[0] if room.side < 0 else self.corridor[1]
            y_front = y_wall + room.side * inset  # the room-loop's edge nearest the door
            y_far = (room.y0 + inset) if room.side < 0 else (room.y1 - inset)
            xa, xb = room.x0 + inset, room.x1 - inset
            xs = min(max(xd, xa), xb)
            loop = [(xs, y_front), (xb, y_front), (xb, y_far), (xa, y_far), (xa, y_front),
                    (xs, y_front)]
            inside = (xd, y_wall + room.side * 0.6)
            outside = (xd, y_wall - room.side * 0.5)
            pts += [(xd, yc + lane), outside, inside, *loop, inside, outside, (xd, yc + lane)]
        # turn back on a half circle at the far end (a U-turn on the spot would turn the
        # camera too fast for consecutive frames to overlap), then walk back along the
        # corridor looking the other way
        r = min(0.9 * s, (self.corridor[1] - self.corridor[0]) / 2 - 0.35)
        xe = self.width - 0.9 * s - r
        turn = np.linspace(np.pi / 2, -np.pi / 2, 9)
        pts += [*zip(xe + r * np.cos(turn), yc + r * np.sin(turn), strict=True),
                (x_start, yc - r), *cabin]
        path = np.array(pts, float)
        if reverse:
            path = path[::-1]
        for _ in range(3):  # Chaikin: cut each corner a quarter of each side
            near = 0.75 * path[:-1] + 0.25 * path[1:]
            far_ = 0.25 * path[:-1] + 0.75 * path[1:]
            path = np.concatenate([path[:1], np.stack([near, far_], 1).reshape(-1, 2),
                                   path[-1:]])
        seg = np.linalg.norm(np.diff(path, axis=0), axis=1)
        cum = np.concatenate([[0.0], np.cumsum(seg)])
        s_new = np.arange(0.0, cum[-1], spacing)
        return np.stack([np.interp(s_new, cum, path[:, 0]), np.interp(s_new, cum, path[:, 1])],
                        axis=1)

    # -- floor plan -----------------------------------------------------------------------
    def floor_plan(self, resolution: float = 0.05, margin: float = 1.0) -> FloorPlan:
        """map_server occupancy grid: walls and blocks occupied, walkable floor free."""
        w_cells = int(np.ceil((self.width + 2 * margin) / resolution))
        h_cells = int(np.ceil((self.depth + 2 * margin) / resolution))
        origin = (-margin, -margin)
        # row 0 of the array is y = origin_y (flipped to the PGM's top-down order on write)
        occ = np.full((h_cells, w_cells), -1, np.int8)
        xs = origin[0] + (np.arange(w_cells) + 0.5) * resolution
        ys = origin[1] + (np.arange(h_cells) + 0.5) * resolution
        gx, gy = np.meshgrid(xs, ys)
        inside = (gx > 0) & (gx < self.width) & (gy > 0) & (gy < self.depth)
        occ[inside] = 0
        wall_t = 0.1
        near_outer = inside & ((gx < wall_t) | (gx > self.width - wall_t) | (gy < wall_t)
                               | (gy > self.depth - wall_t))
        occ[near_outer] = 100
        outer_wall = ~inside & (gx > -wall_t) & (gx < self.width + wall_t) & (
            gy > -wall_t) & (gy < self.depth + wall_t)
        occ[outer_wall] = 100
        for x0, y0, x1, y1 in self.blocks + self.no_walk:
            occ[(gx >= x0) & (gx <= x1) & (gy >= y0) & (gy <= y1)] = 100
        g = (gx, gy)
        for wall in self.walls:
            if wall.partition:  # 12 cm walls, and 3 cm either side (the cell size)
                near = np.abs(g[wall.axis] - wall.c) <= 0.03 + resolution / 2
                along = g[1 - wall.axis]
                occ[near & (along >= wall.lo) & (along <= wall.hi)] = 100
        return FloorPlan(occ, resolution, origin)


class Renderer:
    """Ray-casting renderer of a :class:`Building` for a pinhole camera (with distortion)."""

    def __init__(self, building: Building, camera: PinholeCamera, *, cull: bool = True
                 ) -> None:
        """``cull``: skip walls behind the camera or beside the image (False: test every
        wall for every pixel; the same image, slower)."""
        self.building = building
        self.camera = camera
        self.cull = cull
        u, v = np.meshgrid(np.arange(camera.width, dtype=np.float32),
                           np.arange(camera.height, dtype=np.float32))
        # ray directions in the camera optical frame, one per pixel centre, as contiguous
        # rows (3, N): row-wise float32 arithmetic is several times faster than columns
        # (a distorted camera sees, at each pixel, the ray of the undistorted coordinates)
        xy = camera.undistort_normalized(
            np.stack([(u - camera.cx) / camera.fx, (v - camera.cy) / camera.fy], axis=-1))
        self._rays_cam_3N = np.stack(
            [xy[..., 0], xy[..., 1], np.ones_like(u)]
        ).reshape(3, -1).astype(np.float32)

    def _visible_walls(self, map_from_cam: np.ndarray) -> list[int]:
        """Walls not entirely behind the camera nor entirely beside one edge of the image
        (a cheap, conservative cull: a quarter of the image's margin for distortion)."""
        b, cam = self.building, self.camera
        if not self.cull:
            return list(range(len(b.walls)))
        cam_from_map = np.linalg.inv(map_from_cam)
        mu, mv = 0.25 * cam.width, 0.25 * cam.height
        keep = []
        for i, w in enumerate(b.walls):
            corners = np.zeros((4, 3))
            corners[:, w.axis] = w.c
            corners[:, 1 - w.axis] = [w.lo, w.hi, w.lo, w.hi]
            corners[:, 2] = [0.0, 0.0, b.height, b.height]
            p = corners @ cam_from_map[:3, :3].T + cam_from_map[:3, 3]
            if not (p[:, 2] > 1e-3).any():
                continue
            if (p[:, 2] > 1e-3).all():
                u = cam.fx * p[:, 0] / p[:, 2] + cam.cx
                v = cam.fy * p[:, 1] / p[:, 2] + cam.cy
                if ((u < -mu).all() or (u > cam.width + mu).all() or (v < -mv).all()
                        or (v > cam.height + mv).all()):
                    continue
            keep.append(i)
        return keep

    def render(self, map_from_cam: np.ndarray, *, noise_sigma: float = 0.0,
               rng: np.random.Generator | None = None,
               light: tuple[float, float, float] = (1.0, 1.0, 1.0)) -> np.ndarray:
        """RGB uint8 image seen by a camera at ``map_from_cam`` (4x4).

        ``light`` multiplies the red, green and blue channels (other lighting: dimmer,
        warmer or colder than the mapping walk's).
        """
        return self.render_with_depth(map_from_cam, noise_sigma=noise_sigma, rng=rng,
                                      light=light)[0]

    def render_with_depth(self, map_from_cam: np.ndarray, *, noise_sigma: float = 0.0,
                          rng: np.random.Generator | None = None,
                          light: tuple[float, float, float] = (1.0, 1.0, 1.0)
                          ) -> tuple[np.ndarray, np.ndarray]:
        """The RGB image (as :meth:`render`) and its exact depth: (H, W) float32 metres
        along the optical axis (z in the camera frame) of the surface each pixel sees, as
        a depth camera registered to this one would measure it without noise."""
        b = self.building
        cam = self.camera
        rot = map_from_cam[:3, :3].astype(np.float32)
        o = map_from_cam[:3, 3].astype(np.float32)
        dx, dy, dz = rot @ self._rays_cam_3N  # ray directions in the map frame
        d = (dx, dy)
        n = dx.shape[0]
        with np.errstate(divide="ignore", invalid="ignore"):
            inv_dz = np.float32(1.0) / dz
            t_floor = np.where(dz < 0, -o[2] * inv_dz, np.inf).astype(np.float32)
            t_ceil = np.where(dz > 0, (b.height - o[2]) * inv_dz, np.inf).astype(np.float32)
            t_best = np.minimum(t_floor, t_ceil)
            surf = np.where(t_floor <= t_ceil, -1, -2).astype(np.int16)
            for i in self._visible_walls(map_from_cam):
                wall = b.walls[i]
                a, other = wall.axis, 1 - wall.axis
                t = (wall.c - o[a]) / d[a]
                ok = (t > 1e-4) & (t < t_best)
                hit_o = o[other] + t * d[other]
                ok &= (hit_o >= wall.lo) & (hit_o <= wall.hi)
                z = o[2] + t * dz
                ok &= (z >= 0) & (z <= b.height)
                np.copyto(t_best, t, where=ok)
                surf[ok] = i
        hx, hy, hz = o[0] + t_best * dx, o[1] + t_best * dy, o[2] + t_best * dz
        hit_h = (hx, hy)
        ppm = np.float32(b.spec.texels_per_metre)
        map_u = np.empty(n, np.float32)
        map_v = np.empty(n, np.float32)
        texel_scale = np.empty(n, np.float32)  # texels per metre of the hit surface
        for i, wall in enumerate(b.walls):
            m = surf == i
            if not m.any():
                continue
            map_u[m] = wall.atlas_u0 + 1 + (hit_h[1 - wall.axis][m] - wall.lo) * ppm
            map_v[m] = wall.atlas_v0 + (b.height - hz[m]) * ppm
            texel_scale[m] = ppm
        for code, origin in ((-1, b.floor_origin), (-2, b.ceiling_origin)):
            m = surf == code
            map_u[m] = origin[0] + 1 + hx[m] * b.floor_ppm
            map_v[m] = origin[1] + 1 + hy[m] * b.floor_ppm
            texel_scale[m] = b.floor_ppm
        shape = (cam.height, cam.width)
        map_u, map_v = map_u.reshape(shape), map_v.reshape(shape)
        near = cv2.remap(b.atlas, map_u, map_v, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
        far = cv2.remap(b.atlas_far, map_u, map_v, cv2.INTER_LINEAR,
                        borderMode=cv2.BORDER_REFLECT)
        t_img = t_best.reshape(shape)
        footprint = t_img * texel_scale.reshape(shape) / np.float32(cam.fx)  # texels per pixel
        w_far = np.clip((footprint - 1.0) / 1.5, 0.0, 1.0)
        # light falls off a little with distance, as under ceiling lights
        shade = 1.0 / (1.0 + 0.02 * t_img)
        img = np.asarray(cv2.blendLinear(far.astype(np.float32), near.astype(np.float32),
                                         w_far, 1.0 - w_far), np.float32)
        img *= shade[:, :, None]
        if tuple(light) != (1.0, 1.0, 1.0):
            img *= np.asarray(light, np.float32)
        if noise_sigma > 0:
            rng = rng or np.random.default_rng()
            img += rng.standard_normal(img.shape, dtype=np.float32) * np.float32(noise_sigma)
        # the rays are (x, y, 1) in the camera frame: the hit distance t is the depth z
        return np.clip(img, 0, 255).astype(np.uint8), t_img.astype(np.float32)


def _loop_path(building: Building, offset: float,
               spacing: float = 0.02) -> tuple[np.ndarray, np.ndarray]:
    """Closed path along the corridor loop's centre line, moved ``offset`` metres outwards,
    with rounded corners, resampled every ``spacing`` metres.

    Returns:
        Points (M, 2) travelled counter-clockwise, and their arc length from the start.
    """
    s = building.spec.scale
    x0, x1 = 2.0 * s - offset, 14.0 * s + offset
    y0, y1 = 1.75 * s - offset, 8.25 * s + offset
    corners = np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]])
    r = 1.2 * s
    pts = []
    for k in range(4):
        a, b_, c = corners[k - 1], corners[k], corners[(k + 1) % 4]
        u_in, _u_out = (b_ - a) / np.linalg.norm(b_ - a), (c - b_) / np.linalg.norm(c - b_)
        p0 = b_ - r * u_in
        center = p0 + r * np.array([-u_in[1], u_in[0]])  # left normal (counter-clockwise)
        a0 = np.arctan2(*(p0 - center)[::-1])
        arc = np.linspace(a0, a0 + np.pi / 2, 32)
        pts.append(center + r * np.stack([np.cos(arc), np.sin(arc)], 1))
    poly = np.concatenate(pts + [pts[0][:1]])  # straight segments join consecutive arcs
    seg = np.linalg.norm(np.diff(poly, axis=0), axis=1)
    cum = np.concatenate([[0.0], np.cumsum(seg)])
    s_new = np.arange(0.0, cum[-1], spacing)
    path = np.stack([np.interp(s_new, cum, poly[:, 0]), np.interp(s_new, cum, poly[:, 1])], 1)
    return path, s_new


def _head_pose(pos2: np.ndarray, travel_yaw: float, f: float, *, height: float,
               yaw_amplitude_deg: float, pitch_amplitude_deg: float, phase: float,
               yaw_offset_deg: float, yaw_cycles: float, height_amplitude: float
               ) -> np.ndarray:
    """``map_from_cam`` of a hand-held or head camera at ``pos2`` travelling along
    ``travel_yaw``, ``f`` loops (of about 40 m) into the walk: the yaw swings
    ``yaw_cycles`` times per loop, pitch and height sway, footsteps bob."""
    swing = np.sin(2 * np.pi * (f * yaw_cycles + phase))
    # turned away: to one side for a while, then to the other (never straight ahead)
    side = float(np.clip(3.0 * np.sin(2 * np.pi * (f * 1.5 + phase)), -1.0, 1.0))
    yaw = (travel_yaw + np.radians(yaw_offset_deg) * side
           + np.radians(yaw_amplitude_deg) * swing)
    pitch = np.radians(pitch_amplitude_deg) * np.sin(2 * np.pi * (f * 3.0 + phase + 0.3))
    forward = np.array([np.cos(yaw) * np.cos(pitch), np.sin(yaw) * np.cos(pitch),
                        np.sin(pitch)])
    z = height + 0.03 * np.sin(2 * np.pi * f * 40)  # footsteps
    z += height_amplitude * np.sin(2 * np.pi * (f * 2.0 + phase))
    pose = np.eye(4)
    pose[:3, :3] = look_at_rotation(forward)
    pose[:3, 3] = [pos2[0], pos2[1], z]
    return pose


def walk_trajectory(
    building: Building, n_frames: int, *, loops: float = 2.0, offsets: tuple[float, ...] = (0.0,),
    height: float = 1.5, yaw_amplitude_deg: float = 18.0, pitch_amplitude_deg: float = 5.0,
    phase: float = 0.0, start_fraction: float = 0.0, reverse: bool = False,
    yaw_offset_deg: float = 0.0, yaw_cycles: float = 5.0, height_amplitude: float = 0.0,
) -> list[np.ndarray]:
    """``map_from_cam`` poses of a walk around the corridor loop.

    The camera looks along the direction of travel, swinging its yaw and pitch slowly (a
    hand-held or head camera), so the frames see the walls from varied angles. Each loop
    uses the next lateral offset in ``offsets`` (cycling), so repeated loops see new views.
    ``reverse`` walks the loop clockwise; ``yaw_offset_deg`` turns the camera away from the
    direction of travel, alternately left and right (``yaw_cycles`` swings of yaw per loop
    around that offset); ``height_amplitude`` raises and lowers the camera (metres).
    """
    if n_frames < 1:
        raise ConfigError(f"need at least 1 frame, got {n_frames}")
    head = dict(height=height, yaw_amplitude_deg=yaw_amplitude_deg,
                pitch_amplitude_deg=pitch_amplitude_deg, phase=phase,
                yaw_offset_deg=yaw_offset_deg, yaw_cycles=yaw_cycles,
                height_amplitude=height_amplitude)
    poses = []
    paths = [_loop_path(building, off * building.spec.scale) for off in offsets]
    for i in range(n_frames):
        f = start_fraction + loops * i / n_frames  # loops travelled so far
        frac = f % 1.0
        this, nxt = paths[int(np.floor(f)) % len(paths)][0], paths[int(np.floor(f) + 1) %
                                                                    len(paths)][0]
        # change lanes gently over the last 15% of a loop (no sideways jump between frames)
        w = float(np.clip((frac - 0.85) / 0.15, 0.0, 1.0))
        w = w * w * (3 - 2 * w)

        def at(path: np.ndarray, fraction: float) -> np.ndarray:
            return path[int(round(fraction * len(path))) % len(path)]

        u = (1.0 - frac) % 1.0 if reverse else frac  # position along the loop
        pos2 = (1 - w) * at(this, u) + w * at(nxt, u)
        step = 0.8 / (len(this) * 0.02)  # look 0.8 m ahead: smooth heading
        look = u - step if reverse else u + step
        ahead = (1 - w) * at(this, look) + w * at(nxt, look) - pos2
        poses.append(_head_pose(pos2, float(np.arctan2(ahead[1], ahead[0])), f, **head))
    return poses


def path_trajectory(path: np.ndarray, n_frames: int, *, height: float = 1.5,
                    yaw_amplitude_deg: float = 18.0, pitch_amplitude_deg: float = 5.0,
                    phase: float = 0.0, yaw_offset_deg: float = 0.0, yaw_cycles: float = 5.0,
                    height_amplitude: float = 0.0) -> list[np.ndarray]:
    """``map_from_cam`` poses of ``n_frames`` evenly spaced along ``path`` ((M, 2) points
    every 2 cm, e.g. :meth:`Building.room_tour`), the head moving as in
    :func:`walk_trajectory` (its swings counted per 40 m, the corridor loop's length)."""
    if n_frames < 1:
        raise ConfigError(f"need at least 1 frame, got {n_frames}")
    seg = np.linalg.norm(np.diff(path, axis=0), axis=1)
    cum = np.concatenate([[0.0], np.cumsum(seg)])
    poses = []
    for i in range(n_frames):
        k = min(int(round(i * (len(path) - 1) / max(1, n_frames - 1))), len(path) - 1)
        j = min(int(np.searchsorted(cum, cum[k] + 0.8)), len(path) - 1)  # 0.8 m ahead
        ahead = path[j] - path[k] if j > k else path[k] - path[max(0, k - 1)]
        poses.append(_head_pose(path[k], float(np.arctan2(ahead[1], ahead[0])),
                                cum[k] / 40.0, height=height,
                                yaw_amplitude_deg=yaw_amplitude_deg,
                                pitch_amplitude_deg=pitch_amplitude_deg, phase=phase,
                                yaw_offset_deg=yaw_offset_deg, yaw_cycles=yaw_cycles,
                                height_amplitude=height_amplitude))
    return poses


#: Scenes: the building's look and the query walk (the mapping walk is the same in all).
#: ``standard``: the query walk runs between the mapping lanes, 10 cm lower, with another
#: head motion. ``offpath``: it runs 0.8 m inside the loop (0.45 m beyond the inner mapping
#: lane), the camera turned 35 deg +- 10 deg to either side of the direction of travel
#: (the mapping walk swings +-18 deg), 1.25-1.75 m high, under dimmer, warmer light.
#: ``lookalike``: the offpath query in a building whose posters repeat three designs.
#: ``twin``: ``lookalike`` whose far corridor's walls repeat the near one's (turned 180 deg
#: about the centre): SfM without priors joins the two corridors (a folded model).
SCENARIOS: dict[str, dict] = {
    "standard": {"building": {}, "light": (1.0, 1.0, 1.0),
                 "query": {"offsets": (0.0,), "height": 1.4, "yaw_amplitude_deg": 12.0}},
    "offpath": {"building": {}, "light": (0.8, 0.74, 0.62),
                "query": {"offsets": (-0.8,), "height": 1.5, "height_amplitude": 0.25,
                          "yaw_offset_deg": 35.0, "yaw_amplitude_deg": 10.0,
                          "yaw_cycles": 3.0}},
    "lookalike": {"building": {"lookalike_posters": 3}, "light": (0.8, 0.74, 0.62),
                  "query": {"offsets": (-0.8,), "height": 1.5, "height_amplitude": 0.25,
                            "yaw_offset_deg": 35.0, "yaw_amplitude_deg": 10.0,
                            "yaw_cycles": 3.0}},
    "twin": {"building": {"lookalike_posters": 3, "twin_corridors": True},
             "light": (0.8, 0.74, 0.62),
             "query": {"offsets": (-0.8,), "height": 1.5, "height_amplitude": 0.25,
                       "yaw_offset_deg": 35.0, "yaw_amplitude_deg": 10.0, "yaw_cycles": 3.0}},
}


def _pose_table(stamps_ns: list[int], poses: list[np.ndarray]) -> PoseTable:
    return PoseTable(
        np.array(stamps_ns, dtype=np.int64),
        np.array([p[:3, 3] for p in poses]),
        np.array([quat_wxyz_from_rotmat(p[:3, :3]) for p in poses]),
    )


def write_synthetic_building(
    out: str | os.PathLike, *, seed: int = 0, frames: int = 300, query_frames: int = 100,
    width: int = 640, height: int = 480, rate_hz: float = 10.0, scale: float = 1.0,
    loops: float = 2.0,
    control_points: int = 6, control_point_noise: float = 0.01, bad_control_points: int = 0,
    noise_sigma: float = 2.0, storage: str = "mcap", image_topic: str = "/camera/image_raw",
    distortion: tuple[float, ...] = (), scenario: str = "standard", progress: bool = True,
    robot: RobotSpec | None = RobotSpec(),
    depth_topic: str | None = None, rooms: int = 0, room_designs: int = 0, floors: int = 1,
    start_s: float = 0.0, alike_floors: bool = False, design_seed: int = -1,
    lift: bool = False,
) -> Path:
    """Render a synthetic building and write it as docs/ARCHITECTURE.md's ``synth`` layout.

    Writes ``mapping/`` and ``query/`` bags, ``gt_mapping.csv``, ``gt_query.csv``,
    ``control_points.csv`` (``stamp,x,y,z`` of mapping frames, with ``control_point_noise``
    metres of Gaussian error and ``bad_control_points`` grossly wrong ones), and
    ``floorplan.yaml`` + ``floorplan.pgm``. The mapping walk goes ``loops`` times round the
    corridor loop, alternately on either side of its centre line. ``distortion`` (plumb_bob
    ``k1 k2 p1 p2 [k3]``) renders a lens with that distortion and writes it in CameraInfo.
    ``scenario`` (a key of :data:`SCENARIOS`) picks the building's look and the query walk.
    ``robot`` (None: none) adds the robot's own localization to the mapping bag: ``/tf``
    (``map -> odom -> base_link``), ``/tf_static`` (``base_link -> camera_optical_frame``)
    and ``/amcl_pose``, with the noise, drift and jumps of :mod:`.synth_robot`.
    ``depth_topic`` (None: none) adds each mapping frame's exact depth, registered to the
    colour camera, as a ``16UC1`` millimetre image on that topic (a depth camera's).
    ``rooms`` (N >= 2) renders a corridor with N rooms instead of the loop
    (:class:`BuildingSpec`; ``room_designs`` repeats room designs): the mapping walk tours
    every room (``loops`` is ignored), the query walk tours them backwards on other paths
    (1.7 m from the room walls instead of 1.2 m, 0.4 m off the corridor's centre line),
    with the scenario's head motion and light.
    ``floors`` (F >= 2) writes F such floors instead, each in ``floor_<f>/`` with its own
    look and layout (seed ``seed + 101 f``: other textures, other doors) and its own walks,
    stamped one after the other, plus :data:`~camera_pose_ros.io.floors.FLOORS_FILE` (ids,
    elevations 3.2 m apart, floor plans). The floors are joined only by ``lift``: then every
    floor's corridor starts at a lift cabin that looks the same on every floor
    (:class:`BuildingSpec`), where each walk starts and ends, so that one floor's walk
    followed by the next is a ride in the lift (``lift`` needs ``rooms``; with one floor it
    adds the cabin alone). No stairs are rendered. ``alike_floors`` gives every floor the
    same rooms (doors, walls: ``BuildingSpec.design_seed`` = ``seed``) behind different
    corridors, as office floors are. ``start_s`` delays every stamp; ``design_seed`` is
    :class:`BuildingSpec`'s.
    Returns ``out``.
    """
    if floors < 1 or floors > 16:
        raise ConfigError(f"floors must be in [1, 16], got {floors}")
    if floors > 1:
        return _write_floors(out, floors, seed=seed, frames=frames, query_frames=query_frames,
                             width=width, height=height, rate_hz=rate_hz, scale=scale,
                             loops=loops, control_points=control_points,
                             control_point_noise=control_point_noise,
                             bad_control_points=bad_control_points, noise_sigma=noise_sigma,
                             storage=storage, image_topic=image_topic, distortion=distortion,
                             scenario=scenario, progress=progress, robot=robot,
                             depth_topic=depth_topic, rooms=rooms, room_designs=room_designs,
                             design_seed=seed if alike_floors else -1, lift=lift)
    if scenario not in SCENARIOS:
        raise ConfigError(f"unknown scenario {scenario!r}; known: {', '.join(SCENARIOS)}")
    scene = SCENARIOS[scenario]
    if frames < 10 or query_frames < 1:
        raise ConfigError("need at least 10 mapping frames and 1 query frame")
    if width < 64 or height < 48:
        raise ConfigError(f"image size {width}x{height} is too small (min 64x48)")
    if control_points < 3 or control_points > frames:
        raise ConfigError(f"control_points must be in [3, frames], got {control_points}")
    rng = np.random.default_rng(seed)
    if lift and not rooms:
        raise ConfigError("a lift needs the rooms layout (rooms >= 2)")
    building = Building(BuildingSpec(scale=scale, seed=seed, rooms=rooms,
                                     room_designs=room_designs, design_seed=design_seed,
                                     lift=lift, **scene["building"]))
    f = 0.82 * width
    try:
        camera = PinholeCamera(width, height, f, f, width / 2 - 0.5, height / 2 - 0.5,
                               tuple(distortion))
    except CameraModelError as exc:
        raise ConfigError(str(exc)) from exc
    renderer = Renderer(building, camera)
    # mapping: two loops on either side of the corridor centre; query: one loop on a path
    # never walked while mapping (the scenario says which)
    if rooms:
        head = {k: v for k, v in scene["query"].items() if k != "offsets"}
        mapping = path_trajectory(building.room_tour(inset=1.2 * scale), frames)
        query = path_trajectory(building.room_tour(inset=1.7 * scale, lane=0.4 * scale,
                                                   reverse=True), query_frames, phase=0.37,
                                **head)
    else:
        mapping = walk_trajectory(building, frames, loops=loops, offsets=(0.35, -0.35))
        query = walk_trajectory(building, query_frames, loops=1.0, phase=0.37,
                                start_fraction=0.05, **scene["query"])
    t0_ns = 1_700_000_000_000_000_000 + seed * 1_000_000_000 + int(start_s * 1e9)
    period_ns = int(round(1e9 / rate_hz))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    gts = {}
    for name, poses, start_ns in (
        ("mapping", mapping, t0_ns),
        ("query", query, t0_ns + (frames + 100) * period_ns),
    ):
        stamps = [start_ns + i * period_ns + int(rng.integers(-2_000_000, 2_000_000))
                  for i in range(len(poses))]
        extra = (list(robot_messages(stamps, poses,
                                     np.random.default_rng(seed + ROBOT_SEED_OFFSET), robot))
                 if robot is not None and name == "mapping" else [])
        with atomic_dir(out / name) as tmp:
            bag_dir = tmp / "bag"
            frame_id = robot.camera_frame if robot else "camera_optical_frame"
            with BagImageWriter(bag_dir, image_topic=image_topic, storage=storage,
                                frame_id=frame_id) as writer:
                k = 0
                for stamp, pose in tqdm(list(zip(stamps, poses, strict=True)),
                                        desc=f"render {name}", disable=not progress,
                                        unit="frame"):
                    while k < len(extra) and extra[k][2] <= stamp:  # in time order
                        topic, msgtype, t, msg, latched = extra[k]
                        writer.write_message(topic, msgtype, t, msg, latched=latched)
                        k += 1
                    light = scene["light"] if name == "query" else (1.0, 1.0, 1.0)
                    img, depth = renderer.render_with_depth(pose, noise_sigma=noise_sigma,
                                                            rng=rng, light=light)
                    writer.write(stamp, img, camera)
                    if depth_topic and name == "mapping":
                        writer.write_message(depth_topic, "sensor_msgs/msg/Image", stamp,
                                             depth_image_message(stamp, frame_id, depth))
                for topic, msgtype, t, msg, latched in extra[k:]:
                    writer.write_message(topic, msgtype, t, msg, latched=latched)
            for item in bag_dir.iterdir():
                item.rename(tmp / item.name)
            bag_dir.rmdir()
        table = _pose_table(stamps, poses)
        write_poses(out / f"gt_{name}.csv", table)
        gts[name] = table
    # control points: evenly spread mapping frames, each measured with a little error
    gt = gts["mapping"]
    idx = np.linspace(frames * 0.05, frames * 0.95, control_points).astype(int)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["stamp", "x", "y", "z"])
    bad = set(rng.choice(len(idx), size=min(bad_control_points, len(idx)), replace=False))
    for j, i in enumerate(idx):
        p = gt.positions_N3[i] + rng.normal(0, control_point_noise, 3)
        if j in bad:
            p = p + rng.uniform(1.5, 3.0, 3) * rng.choice([-1, 1], 3)
        w.writerow([format_stamp(gt.stamps_ns[i]), *(f"{v:.4f}" for v in p)])
    write_text_atomic(out / "control_points.csv", buf.getvalue())
    building.floor_plan().save(out / "floorplan.yaml")
    log.info("synthetic building written to %s", out)
    return out


#: storey height of ``synth --floors`` (the floors' elevations are this far apart)
FLOOR_HEIGHT_M = 3.2
#: floor f of ``synth --floors`` is drawn with seed ``seed + FLOOR_SEED_STEP * f``
FLOOR_SEED_STEP = 101


def _write_floors(out: str | os.PathLike, floors: int, *, seed: int, frames: int,
                  query_frames: int, rate_hz: float, **kwargs: object) -> Path:
    """``write_synthetic_building`` for each of ``floors`` floors, and the floors file."""
    from camera_pose_ros.io.floors import FLOORS_FILE, FloorSpec, write_floors

    out = Path(out)
    specs = []
    for f in range(floors):
        where = write_synthetic_building(  # each floor's walks after the previous floor's
            out / f"floor_{f}", seed=seed + FLOOR_SEED_STEP * f, frames=frames,
            query_frames=query_frames, rate_hz=rate_hz,
            start_s=f * (frames + query_frames + 200) / rate_hz,
            **kwargs)  # type: ignore[arg-type]
        specs.append(FloorSpec(str(f), round(FLOOR_HEIGHT_M * f, 3), f"map_{f}",
                               floorplan_yaml=str(where / "floorplan.yaml")))
    write_floors(out / FLOORS_FILE, specs)
    log.info("%d floors written to %s", floors, out)
    return out
