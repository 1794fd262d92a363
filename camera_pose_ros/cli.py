"""``camera-pose`` command line: parse arguments, build configs, call one stage.

Every user error is a :class:`~camera_pose_ros.errors.CameraPoseError`: printed as one line
without a traceback, exit status 2. So are an operating-system error (a full disk, a file
that cannot be read) and running out of memory. Outputs are checked before any work (a
folder where a file is wanted, a parent that is a file, no write permission). Ctrl-C exits
130 and SIGTERM 143, both after removing the temporaries of unfinished outputs; temporaries
left by a killed run (SIGKILL) are removed by the next run into the same folder. A failed
command removes an ``--out`` folder it created and left empty.
"""

from __future__ import annotations

import argparse
import logging
import re
import signal
import sys
from pathlib import Path
from typing import Any

from camera_pose_ros import __version__
from camera_pose_ros.errors import CameraPoseError

#: where ``synth --depth`` writes depth (io.bags.DEPTH_TOPICS[0]; not imported: fast --help)
DEPTH_TOPIC = "/camera/depth/image_raw"

__all__ = ["main", "build_parser"]

log = logging.getLogger("camera_pose_ros")


def _source_args(p: argparse.ArgumentParser, *, required: bool = True,
                 intrinsics: bool = True) -> None:
    src = p.add_mutually_exclusive_group(required=required)
    src.add_argument("--bag", type=Path, help="ROS 2 bag folder (MCAP or sqlite3)")
    src.add_argument("--video", type=Path, help="video file (any format OpenCV reads)")
    src.add_argument("--images", type=Path, help="folder of images, sorted by name")
    p.add_argument("--topic", default="/camera/image_raw",
                   help="image topic in the bag (Image or CompressedImage)")
    p.add_argument("--between", type=float, nargs=2, metavar=("START", "END"),
                   help="only the frames START to END seconds after the source's first frame "
                        "(one floor of a walk that rides a lift: a dataset per floor)")
    cam = p.add_mutually_exclusive_group()
    cam.add_argument("--camera-info", type=Path, metavar="YAML",
                     help="camera calibration (camera_calibration's ost.yaml); wins over the "
                          "bag's CameraInfo, and gives a video or photos their intrinsics")
    if intrinsics:
        cam.add_argument("--intrinsics", type=float, nargs=4, metavar=("FX", "FY", "CX", "CY"),
                         help="pinhole intrinsics in the frames' pixels (no distortion)")


def _source(args: argparse.Namespace):  # -> FrameSource, imported lazily (fast --help)
    from camera_pose_ros.dataset.frames import FrameSource

    values = getattr(args, "intrinsics", None)
    return FrameSource(bag=args.bag, topic=args.topic, video=args.video, images=args.images,
                       calibration=args.camera_info,
                       intrinsics=tuple(values) if values is not None else None,
                       between=tuple(args.between) if args.between is not None else None)


def _dataset_configs(args: argparse.Namespace) -> dict:
    """Stage configs from ``--config`` (sections frames/references/sfm/align/split) and
    flags (flags win)."""
    from camera_pose_ros.config import from_dict, load_yaml
    from camera_pose_ros.dataset.align import AlignConfig
    from camera_pose_ros.dataset.frames import KeyframeConfig
    from camera_pose_ros.dataset.references import ReferenceConfig
    from camera_pose_ros.dataset.sfm import SfMConfig
    from camera_pose_ros.dataset.split import SplitConfig
    from camera_pose_ros.errors import ConfigError

    raw = load_yaml(args.config) if getattr(args, "config", None) else {}
    sections = ("frames", "references", "sfm", "align", "split")
    unknown = set(raw) - set(sections)
    if unknown:
        raise ConfigError(f"{args.config}: unknown section(s) {', '.join(sorted(unknown))}; "
                          f"known: {', '.join(sections)}")
    for section in sections:
        if raw.get(section) is not None and not isinstance(raw[section], dict):
            raise ConfigError(f"{args.config}: section {section} must be a mapping of "
                              f"settings, got {raw[section]!r}")
    frames = dict(raw.get("frames") or {})
    sfm = dict(raw.get("sfm") or {})
    if getattr(args, "max_frames", None) is not None:
        frames["max_frames"] = args.max_frames
    if getattr(args, "min_time_step", None) is not None:
        frames["min_time_step"] = args.min_time_step
    if getattr(args, "matcher", None):
        sfm["matcher"] = args.matcher
    if getattr(args, "mapper", None):
        sfm["mapper"] = args.mapper
    refs = dict(raw.get("references") or {})
    for key in ("reference", "map_frame", "odom_frame", "base_frame", "camera_frame",
                "pose_topic", "base_to_camera", "tf_max_gap"):
        value = getattr(args, key, None)
        if value is not None:
            name = {"reference": "source", "tf_max_gap": "max_gap"}.get(key, key)
            refs[name] = list(value) if isinstance(value, list) else value
    align = dict(raw.get("align") or {})
    if getattr(args, "z_vertical", None):
        align["z_vertical"] = args.z_vertical
    if getattr(args, "allow_inconsistent", False):
        align["allow_inconsistent"] = True
    return {
        "keyframes": from_dict(KeyframeConfig, frames, where="frames"),
        "references": from_dict(ReferenceConfig, refs, where="references"),
        "sfm": from_dict(SfMConfig, sfm, where="sfm"),
        "align": from_dict(AlignConfig, align, where="align"),
        "split": from_dict(SplitConfig, raw.get("split"), where="split"),
    }


def _cmd_synth(args: argparse.Namespace) -> Path:
    from camera_pose_ros.dataset.synth import write_synthetic_building

    return write_synthetic_building(
        args.out, seed=args.seed, frames=args.frames, query_frames=args.query_frames,
        width=args.width, height=args.height, scale=args.scale, rate_hz=args.rate,
        loops=args.loops,
        control_points=args.control_points, control_point_noise=args.control_point_noise,
        bad_control_points=args.bad_control_points, storage=args.storage,
        distortion=tuple(args.distortion or ()), scenario=args.scenario,
        progress=not args.quiet, depth_topic=DEPTH_TOPIC if args.depth else None,
        rooms=args.rooms, room_designs=args.room_designs, floors=args.floors,
        alike_floors=args.alike_floors, lift=args.lift,
    )


def _cmd_dataset(args: argparse.Namespace) -> Path:
    from camera_pose_ros.dataset.pipeline import build_dataset

    cfg = _dataset_configs(args)
    return build_dataset(
        _source(args), args.out, control_points=args.control_points, floorplan=args.floorplan,
        test_poses=args.test_poses, ground_truth=args.ground_truth, overwrite=args.overwrite,
        progress=not args.quiet, depth_topic=args.depth_topic, **cfg,
    )


def _cmd_frames(args: argparse.Namespace) -> Path:
    from camera_pose_ros.dataset.align import read_control_points
    from camera_pose_ros.dataset.frames import extract_frames

    cfg = _dataset_configs(args)
    keep = [] if args.control_points is None else [
        cp.stamp_ns for cp in read_control_points(args.control_points)
        if cp.stamp_ns is not None]
    out = extract_frames(_source(args), args.out, cfg["keyframes"],
                         overwrite=args.overwrite, progress=not args.quiet,
                         keep_stamps_ns=keep, keep_window_s=cfg["align"].max_time_offset)
    _priors_if_any(args.out, cfg["references"])
    return out


def _priors_if_any(data: Path, references) -> None:  # references: ReferenceConfig
    """Write the robot's priors beside the frames (the SfM's loop pairs use them) when the
    bag has TF or a pose topic; a broken TF is reported by `align`, not here."""
    from camera_pose_ros.dataset.references import extract_priors
    from camera_pose_ros.errors import AlignmentError

    try:
        extract_priors(data, references)
    except AlignmentError as exc:
        log.warning("no priors from the robot's localization: %s", exc)


def _cmd_sfm(args: argparse.Namespace) -> Path:
    from camera_pose_ros.dataset.sfm import run_sfm

    return run_sfm(args.data, _dataset_configs(args)["sfm"], overwrite=args.overwrite)


def _cmd_align(args: argparse.Namespace) -> Path:
    from camera_pose_ros.dataset.align import align_dataset, read_control_points
    from camera_pose_ros.dataset.pipeline import robot_priors

    cfg = _dataset_configs(args)
    if args.control_points is not None:
        read_control_points(args.control_points)  # a bad file fails before any work
    robot_priors(args.data, cfg["references"], optional=args.control_points is not None)
    return align_dataset(args.data, args.control_points, cfg["align"])


def _cmd_split(args: argparse.Namespace) -> Path:
    from camera_pose_ros.dataset.split import split_dataset

    return split_dataset(args.data, _dataset_configs(args)["split"], test_poses=args.test_poses)


def _cmd_train(args: argparse.Namespace) -> Path:
    from camera_pose_ros.learning.train import load_train_config, train

    cfg = load_train_config(args.config, device=args.device, epochs=args.epochs,
                            seed=args.seed, pretrained=args.pretrained)
    return train(args.data, cfg, args.out, resume=args.resume, overwrite=args.overwrite,
                 progress=not args.quiet)


def _refiner(args: argparse.Namespace, *, required: bool):  # -> Refiner | None
    """The refiner for ``evaluate --mode``: map from ``--map`` or the checkpoint's dataset."""
    from camera_pose_ros.errors import RefinementError
    from camera_pose_ros.learning.checkpoint import load_checkpoint
    from camera_pose_ros.runtime.localizer import load_refiner

    provenance = load_checkpoint(args.checkpoint).meta.provenance.to_dict()
    try:
        refiner, path = load_refiner(args.checkpoint, args.map, args.refine_config,
                                     provenance=provenance)
    except RefinementError:
        if required:
            raise
        log.info("no refinement map found: evaluating the regressed poses only")
        return None
    log.info("refinement map: %s", path)
    return refiner


def _cmd_evaluate(args: argparse.Namespace) -> Path:
    from camera_pose_ros.learning.checkpoint import load_checkpoint
    from camera_pose_ros.learning.evaluate import evaluate
    from camera_pose_ros.learning.registry import ModelKind

    refiner = None
    if args.mode in ("auto", "refine", "both"):
        refiner = _refiner(args, required=args.mode != "auto")
    structure = load_checkpoint(args.checkpoint).meta.kind is ModelKind.STRUCTURE_AWARE
    if args.mode == "scr-pnp" and not structure:
        from camera_pose_ros.errors import ConfigError

        raise ConfigError("--mode scr-pnp needs a structure-aware checkpoint (model: "
                          "structure_aware); use regress, refine or both")
    return evaluate(args.checkpoint, args.data, split=args.split, out=args.out,
                    device=args.device, progress=not args.quiet, refiner=refiner,
                    scr_pnp=structure and args.mode in ("auto", "scr-pnp", "both"))


def _cmd_localize(args: argparse.Namespace) -> Path:
    from camera_pose_ros.io.floorplan import FloorPlan
    from camera_pose_ros.runtime.batch import localize_source
    from camera_pose_ros.runtime.localizer import Localizer

    source = _source(args)
    plan = FloorPlan.load(args.floorplan) if args.floorplan is not None else None
    localizer = Localizer(args.checkpoint, device=args.device, floorplan=plan,
                          solver="pnp" if args.mode == "scr-pnp" else "kabsch")
    camera = None
    if args.mode == "refine":
        log.info("refinement map: %s", localizer.enable_refinement(args.map,
                                                                   args.refine_config))
        camera = source.camera()  # --camera-info, else the bag's CameraInfo, else the map's
    else:  # the mapped views alone: each pose's distance to the nearest
        localizer.load_views(args.map, strict=args.map is not None)
    return localize_source(localizer, source, args.out, camera=camera,
                           ground_truth=args.ground_truth, max_dt=args.max_dt,
                           progress=not args.quiet).csv


def _cmd_calibrate(args: argparse.Namespace) -> Path:
    from camera_pose_ros.learning.calibrate import recalibrate_checkpoint

    return recalibrate_checkpoint(args.checkpoint, args.data, out=args.out, device=args.device)


def _cmd_refinement_map(args: argparse.Namespace) -> Path:
    from camera_pose_ros.dataset.refmap import build_refinement_map

    return build_refinement_map(args.data, out=args.out, descriptor_dims=args.descriptor_dims)


def _cmd_scene_labels(args: argparse.Namespace) -> Path:
    from camera_pose_ros.dataset.scene_labels import build_scene_labels

    return build_scene_labels(args.data, out=args.out, depth_topic=args.depth_topic)


def _cmd_export(args: argparse.Namespace) -> Path:
    from camera_pose_ros.learning.export import export_model

    return export_model(args.checkpoint, args.format, args.out)


def _cmd_dashboard(args: argparse.Namespace) -> None:
    from camera_pose_ros.dashboard.server import run_dashboard

    run_dashboard(checkpoint=args.checkpoint, data=args.data, floorplan=args.floorplan,
                  evaluations=args.eval or (), refinement_map=args.map,
                  refine_config=args.refine_config, host=args.host, port=args.port,
                  token=args.token, device=args.device, max_upload_mb=args.max_upload_mb)


def _cmd_bag_repair(args: argparse.Namespace) -> Path:
    from camera_pose_ros.io.bagrepair import repair_bag

    return repair_bag(args.bag, args.out).out


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser (sub-commands as in docs/ARCHITECTURE.md)."""
    parser = argparse.ArgumentParser(
        prog="camera-pose",
        description="Single-image camera relocalization: build datasets, train, evaluate, "
                    "localize and export PoseNet/MapNet models.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("synth", help="render a synthetic building (bags, ground truth, map)")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--frames", type=int, default=300, help="mapping frames")
    p.add_argument("--query-frames", type=int, default=100)
    p.add_argument("--width", type=int, default=640)
    p.add_argument("--height", type=int, default=480)
    p.add_argument("--scale", type=float, default=1.0, help="building size factor (1: 16x10 m)")
    p.add_argument("--rate", type=float, default=10.0, help="frame rate of the bags, Hz")
    p.add_argument("--loops", type=float, default=2.0, help="corridor loops of the mapping walk")
    p.add_argument("--control-points", type=int, default=6)
    p.add_argument("--control-point-noise", type=float, default=0.01,
                   help="metres (std. dev. per axis) of the simulated survey error")
    p.add_argument("--bad-control-points", type=int, default=0)
    p.add_argument("--storage", choices=("mcap", "sqlite3"), default="mcap")
    p.add_argument("--distortion", type=float, nargs="+", metavar="K",
                   help="lens distortion, plumb_bob k1 k2 p1 p2 [k3] (default: none)")
    p.add_argument("--scenario", choices=("standard", "offpath", "lookalike", "twin"),
                   default="standard",
                   help="standard: the query walk between the mapping lanes; offpath: "
                        "another lane, the camera turned away, other heights and light; "
                        "lookalike: offpath in a building whose posters repeat; twin: "
                        "lookalike whose far corridor repeats the near one (SfM folds "
                        "without the robot's priors)")
    p.add_argument("--rooms", type=int, default=0, metavar="N",
                   help="0: the corridor loop; N >= 2: a corridor with N rooms (6x5 m at "
                        "scale 1) on either side, the mapping walk touring every room, the "
                        "query walk touring them backwards on other paths (--loops ignored)")
    p.add_argument("--room-designs", type=int, default=0, metavar="K",
                   help="with --rooms: repeat K room designs along each side of the "
                        "corridor (rooms that look alike inside); 0: every room its own")
    p.add_argument("--floors", type=int, default=1, metavar="F",
                   help="F >= 2: F floors, each in OUT/floor_<f>/ with its own look, layout "
                        "and walks, and OUT/floors.yaml listing them (map one dataset per "
                        "floor; the node's floors_file)")
    p.add_argument("--alike-floors", action="store_true",
                   help="with --rooms and --floors: every floor has the same rooms (doors, "
                        "walls) behind different corridors, as office floors do")
    p.add_argument("--lift", action="store_true",
                   help="with --rooms: a lift cabin at the corridor's west end, the same on "
                        "every floor; every walk starts and ends in it (with --floors, one "
                        "floor's walk and the next make a lift ride)")
    p.add_argument("--depth", action="store_true",
                   help=f"also write each mapping frame's exact depth, registered to the "
                        f"colour camera, on {DEPTH_TOPIC} (16UC1 mm; dense labels for "
                        "structure-aware models)")
    p.set_defaults(func=_cmd_synth)

    def depth_opt(p: argparse.ArgumentParser) -> None:
        p.add_argument("--depth-topic", default="auto",
                       help="depth image topic registered to the colour camera, for dense "
                            "scene labels (auto: a known depth topic when the bag has one; "
                            "none: sparse SfM labels only)")

    def stage_opts(p: argparse.ArgumentParser) -> None:
        p.add_argument("--config", type=Path,
                       help="YAML with sections frames/sfm/align/split (config/dataset.yaml)")
        p.add_argument("--overwrite", action="store_true", help="redo completed steps")

    def reference_opts(p: argparse.ArgumentParser) -> None:
        g = p.add_argument_group(
            "alignment references", "the robot's own localization in the bag (TF or a pose "
            "topic) and/or surveyed control points; the defaults follow REP 105")
        g.add_argument("--control-points", type=Path,
                       help="CSV stamp,x,y,z[,sigma] (or image,x,y,z[,sigma]) in the map frame; "
                            "needed when the bag has no TF and no pose topic")
        g.add_argument("--reference", choices=("auto", "tf", "pose", "none"),
                       help="robot references: auto (TF, else the pose topic, else none), "
                            "tf, pose, or none (control points only)")
        g.add_argument("--map-frame", help="map frame of TF and the pose topic (map)")
        g.add_argument("--odom-frame", help="odometry frame (odom)")
        g.add_argument("--base-frame", help="robot base frame (base_link)")
        g.add_argument("--camera-frame",
                       help="camera frame (default: the images' header.frame_id)")
        g.add_argument("--pose-topic", help="map-frame pose topic (/amcl_pose)")
        g.add_argument("--base-to-camera", type=float, nargs=7,
                       metavar=("X", "Y", "Z", "QX", "QY", "QZ", "QW"),
                       help="camera mount in the base frame, for a bag without /tf_static")
        g.add_argument("--tf-max-gap", type=float,
                       help="seconds; TF samples farther apart are not interpolated (0.5)")
        g.add_argument("--allow-inconsistent", action="store_true",
                       help="finish even when the reconstruction contradicts its references "
                            "(folded stretches, control points metres off); still reported")
        g.add_argument("--z-vertical", choices=("auto", "yes", "no"),
                       help="keep the map's z axis vertical: fit scale, yaw and translation "
                            "only (auto: yes with robot references)")

    p = sub.add_parser("dataset", help="bag/video/images -> frames, SfM, alignment, splits")
    _source_args(p)
    reference_opts(p)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--floorplan", type=Path,
                   help="map_server YAML: drawn under trajectory.png and saved into the "
                        "dataset (DATA/floorplan.yaml) for evaluate and the dashboard")
    p.add_argument("--test-poses", type=Path,
                   help="another session's poses.csv to use as the test split")
    p.add_argument("--ground-truth", type=Path,
                   help="pose CSV of the same frames (synthetic data): report pose errors")
    p.add_argument("--max-frames", type=int)
    p.add_argument("--min-time-step", type=float)
    p.add_argument("--matcher", choices=("auto", "sequential", "exhaustive"))
    p.add_argument("--mapper", choices=("incremental", "global"),
                   help="SfM mapping: incremental (COLMAP, default) or global (GLOMAP)")
    depth_opt(p)
    stage_opts(p)
    p.set_defaults(func=_cmd_dataset)

    p = sub.add_parser("frames", help="stage 1: keyframes into DATA/images and frames.csv")
    _source_args(p)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--max-frames", type=int)
    p.add_argument("--min-time-step", type=float)
    p.add_argument("--control-points", type=Path,
                   help="CSV stamp,x,y,z: keep the nearest frame of each stamp (as `dataset` "
                        "does), even where the walk paused")
    stage_opts(p)
    p.set_defaults(func=_cmd_frames)

    p = sub.add_parser("sfm", help="stage 2: pycolmap reconstruction of DATA/images")
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--matcher", choices=("auto", "sequential", "exhaustive"))
    p.add_argument("--mapper", choices=("incremental", "global"),
                   help="incremental (COLMAP, default) or global (GLOMAP); a changed mapper "
                        "maps again from the matches already made")
    stage_opts(p)
    p.set_defaults(func=_cmd_sfm)

    p = sub.add_parser("align", help="stage 3: SfM -> map similarity from the bag's TF / pose "
                                     "topic and/or control points")
    p.add_argument("--data", type=Path, required=True)
    reference_opts(p)
    stage_opts(p)
    p.set_defaults(func=_cmd_align)

    p = sub.add_parser("split", help="stage 4: train/validation/test blocks")
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--test-poses", type=Path)
    stage_opts(p)
    p.set_defaults(func=_cmd_split)

    device: dict[str, Any] = {"default": "auto", "choices": ("auto", "cpu", "cuda")}
    def refine_opts(p: argparse.ArgumentParser) -> None:
        p.add_argument("--map", type=Path,
                       help="refinement map or dataset folder (default: beside the checkpoint, "
                            "then the dataset it was trained on); its frames are also the "
                            "mapped views each pose's nearest-view distance is measured to")
        p.add_argument("--refine-config", type=Path,
                       help="YAML of refinement settings (config/refine.yaml)")

    p = sub.add_parser("train", help="train a PoseNet/MapNet regressor on a dataset")
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--config", type=Path, required=True,
                   help="YAML (config/train_posenet.yaml, config/train_mapnet.yaml)")
    p.add_argument("--out", type=Path, required=True, help="run folder (model.pt, metrics)")
    p.add_argument("--resume", action="store_true",
                   help="continue from OUT/last.pt (same config; mc_samples, num_workers "
                        "and device may change)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the run in OUT (model.pt, last.pt, metrics); without it, "
                        "or --resume, a folder holding a run is refused")
    p.add_argument("--epochs", type=int, help="override the config's epochs")
    p.add_argument("--seed", type=int)
    p.add_argument("--pretrained",
                   help="auto (cache, else download) | cache | none | path to torchvision "
                        "weights")
    p.add_argument("--device", choices=device["choices"])
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("evaluate", help="errors of a checkpoint on a dataset split")
    p.add_argument("--checkpoint", type=Path, required=True)
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--split", default="test", choices=("train", "validation", "test"))
    p.add_argument("--out", type=Path,
                   help="folder for metrics.json, the predictions CSVs and the figures "
                        "(default DATA/eval_SPLIT/)")
    p.add_argument("--device", **device)
    p.add_argument("--mode", default="auto",
                   choices=("auto", "regress", "refine", "both", "scr-pnp"),
                   help="regress: the network alone; refine/both: also refine against the "
                        "SfM map and report both side by side; scr-pnp (structure-aware "
                        "models): also PnP + RANSAC on the predicted scene coordinates; "
                        "auto: every mode the checkpoint and a found refinement map allow")
    refine_opts(p)
    p.set_defaults(func=_cmd_evaluate)

    p = sub.add_parser("localize", help="poses of every frame of a bag, video or folder")
    p.add_argument("--checkpoint", type=Path, required=True)
    _source_args(p, intrinsics=False)
    p.add_argument("--out", type=Path, required=True, help="prediction CSV")
    p.add_argument("--device", **device)
    p.add_argument("--mode", default="regress", choices=("regress", "refine", "scr-pnp"),
                   help="regress: the network alone, fast; refine: refine each pose against "
                        "the SfM map (intrinsics from --camera-info, else the bag's "
                        "camera_info, else the map's); scr-pnp: a structure-aware model's "
                        "scene coordinates solved by PnP + RANSAC (no map needed)")
    p.add_argument("--ground-truth", type=Path,
                   help="pose CSV of the same frames: match by stamp and write "
                        "OUT.metrics.json (errors, covariance honesty, refined share)")
    p.add_argument("--max-dt", type=float, default=1e-3,
                   help="largest stamp difference (s) matched with --ground-truth")
    p.add_argument("--floorplan", type=Path,
                   help="map_server YAML: poses off the walkable floor are moved onto it, as "
                        "the node does (column snapped); default: no snapping")
    refine_opts(p)
    p.set_defaults(func=_cmd_localize)

    p = sub.add_parser("refinement-map",
                       help="SfM model + alignment -> DATA/refinement_map.npz (for refine)")
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--out", type=Path, help="default DATA/refinement_map.npz")
    p.add_argument("--descriptor-dims", type=int, default=64, metavar="D",
                   help="PCA components kept of each point's SIFT descriptor, 1-128 "
                        "(default 64: accuracy unchanged on the benchmark scenes)")
    p.set_defaults(func=_cmd_refinement_map)

    p = sub.add_parser("scene-labels",
                       help="SfM model + alignment -> DATA/scene_labels.npz (sparse scene "
                            "coordinates and depths, for structure-aware models)")
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--out", type=Path, help="default DATA/scene_labels.npz")
    depth_opt(p)
    p.set_defaults(func=_cmd_scene_labels)

    p = sub.add_parser("calibrate",
                       help="fit a checkpoint's covariance calibration again (off-path views "
                            "of the validation split, novelty of the features)")
    p.add_argument("--checkpoint", type=Path, required=True)
    p.add_argument("--data", type=Path, required=True, help="the dataset it was trained on")
    p.add_argument("--out", type=Path, help="default: overwrite the checkpoint")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.set_defaults(func=_cmd_calibrate)

    p = sub.add_parser("export", help="export a checkpoint to TorchScript or ONNX")
    p.add_argument("--checkpoint", type=Path, required=True)
    p.add_argument("--format", required=True, choices=("torchscript", "onnx"))
    p.add_argument("--out", type=Path, required=True)
    p.set_defaults(func=_cmd_export)

    p = sub.add_parser("bag-repair",
                       help="recover a recording cut off by SIGKILL/OOM/power loss into a "
                            "complete bag")
    p.add_argument("bag", type=Path, help="the unfinished bag folder (MCAP or sqlite3)")
    p.add_argument("--out", type=Path, help="repaired bag folder (default BAG_repaired)")
    p.set_defaults(func=_cmd_bag_repair)

    p = sub.add_parser("dashboard",
                       help="web dashboard: floor plan, image localization, dataset and model "
                            "pages (the live robot: dashboard_node)")
    p.add_argument("--checkpoint", type=Path, help="model.pt (the dataset, floor plan and "
                   "evaluations are found from its provenance)")
    p.add_argument("--data", type=Path, help="dataset folder (camera-pose dataset output)")
    p.add_argument("--floorplan", type=Path,
                   help="map_server YAML (default DATA/floorplan.yaml)")
    p.add_argument("--eval", type=Path, action="append",
                   help="camera-pose evaluate output folder (repeatable; default DATA/eval_* "
                        "and eval_* beside the checkpoint)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to serve on; another than loopback needs an access token")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--token", help="access token (made and printed when serving beyond "
                                   "loopback without one)")
    p.add_argument("--device", **device)
    p.add_argument("--max-upload-mb", type=float, default=20.0, help="largest image upload")
    refine_opts(p)
    p.set_defaults(func=_cmd_dashboard)
    return parser


def _check_synth_args(args: argparse.Namespace) -> None:
    """Ranges of ``synth``'s numeric options (argparse only checks their types)."""
    from camera_pose_ros.config import check_range

    for key, low, high in (("frames", 10, 1_000_000), ("query_frames", 1, 1_000_000),
                           ("width", 64, 8192), ("height", 48, 8192), ("seed", 0, 2**32 - 1),
                           ("control_points", 3, args.frames),
                           ("bad_control_points", 0, args.control_points),
                           ("rooms", 0, 64), ("room_designs", 0, 64), ("floors", 1, 16)):
        check_range(f"--{key.replace('_', '-')}", getattr(args, key), low=low, high=high)
    check_range("--scale", args.scale, low=0, high=100, low_open=True)
    check_range("--rate", args.rate, low=0, high=1000, low_open=True)
    check_range("--loops", args.loops, low=0, high=1000, low_open=True)
    check_range("--control-point-noise", args.control_point_noise, low=0, high=100)
    if args.rooms == 1:
        from camera_pose_ros.errors import ConfigError

        raise ConfigError("--rooms must be 0 (the corridor loop) or at least 2")
    if args.distortion is not None:
        if len(args.distortion) not in (4, 5):
            from camera_pose_ros.errors import ConfigError

            raise ConfigError(f"--distortion takes 4 or 5 coefficients (k1 k2 p1 p2 [k3]), "
                              f"got {len(args.distortion)}")
        for k in args.distortion:
            check_range("--distortion", k, low=-100, high=100)


def _outputs(args: argparse.Namespace) -> tuple[list[Path], list[Path]]:
    """The folders and files a command writes (checked before any work)."""
    cmd, dirs, files = args.command, [], []
    if cmd in ("synth", "dataset", "frames", "train"):
        dirs.append(args.out)
    elif cmd in ("sfm", "align", "split"):
        dirs.append(args.data)
    elif cmd == "evaluate":
        dirs.append(args.out or args.data / f"eval_{args.split}")
    elif cmd == "refinement-map":
        if args.out is not None:
            files.append(args.out)
        else:
            dirs.append(args.data)
    elif cmd in ("localize", "export"):
        files.append(args.out)
    elif cmd == "bag-repair" and args.out is not None:
        dirs.append(args.out)
    if cmd == "dataset":
        dirs.append(args.out / "sfm")
    return dirs, files


def _preflight(args: argparse.Namespace) -> list[Path]:
    """Check outputs and options before any work; remove a killed run's temporaries.

    Returns the output folders that do not exist yet (removed again if the command fails
    and leaves them empty).
    """
    from camera_pose_ros.fileio import (
        check_output_dir,
        check_output_file,
        remove_stale_temporaries,
    )

    if args.command == "synth":
        _check_synth_args(args)
    if args.command == "evaluate" and args.out is not None and args.out.suffix == ".json" \
            and not args.out.is_dir():
        from camera_pose_ros.errors import ConfigError

        raise ConfigError(f"--out names a folder (metrics.json, the predictions and the "
                          f"figures go inside it), got {args.out}: use --out "
                          f"{args.out.with_suffix('')}")
    dirs, files = _outputs(args)
    for d in dirs:
        check_output_dir(d)
    for f in files:
        check_output_file(f)
    created = [d for d in dirs if not d.exists()]
    for folder in [*dirs, *(f.parent for f in files)]:
        remove_stale_temporaries(folder)
    return created


def _remove_if_empty(folders: list[Path]) -> None:
    for folder in sorted(folders, key=lambda p: len(p.parts), reverse=True):
        try:
            folder.rmdir()  # only succeeds when empty
        except OSError:
            pass


class _Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread like Ctrl-C so that cleanups run."""


def _on_sigterm(signum: int, frame: object) -> None:
    raise _Terminated()


def _preload_native(args: argparse.Namespace) -> None:
    """Import pycolmap before SIGTERM is handled: importing it installs a C++ failure
    handler for SIGTERM that would replace ours (and print a stack dump)."""
    if args.command in ("dataset", "sfm", "refinement-map", "scene-labels", "dashboard",
                        "train", "calibrate") or (
            args.command in ("evaluate", "localize") and args.mode != "regress"):
        try:
            import pycolmap  # noqa: F401
        except ImportError:
            pass


_TMP_NAME = re.compile(r"\.([^/]+?)\.tmp-\d+-[0-9a-f]{8}(?:\.[^/]*)?$")


def _os_error_line(exc: OSError) -> str:
    """One line for an OSError, naming the final path rather than its temporary."""
    name = exc.filename if exc.filename is not None else ""
    name = _TMP_NAME.sub(lambda m: m.group(1), str(name))
    reason = exc.strerror or str(exc) or type(exc).__name__
    return f"{reason}: {name}" if name else reason


def _one_line(text: str) -> str:
    return "; ".join(line.strip() for line in str(text).splitlines() if line.strip()) or (
        "(no message)")


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``camera-pose``; returns the exit status."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    prefix = f"camera-pose {args.command}"
    created: list[Path] = []
    handled, previous = False, None
    try:
        _preload_native(args)
        previous = signal.signal(signal.SIGTERM, _on_sigterm)
        handled = True
    except ValueError:  # not the main thread (an embedding application): leave it be
        pass
    ok = False
    try:
        created = _preflight(args)
        out = args.func(args)
        ok = True
    except CameraPoseError as exc:
        sys.stderr.write(f"{prefix}: error: {_one_line(str(exc))}\n")
        return 2
    except _Terminated:
        sys.stderr.write(f"{prefix}: terminated\n")
        return 128 + signal.SIGTERM
    except KeyboardInterrupt:
        sys.stderr.write(f"{prefix}: interrupted\n")
        return 130
    except MemoryError:
        sys.stderr.write(f"{prefix}: error: out of memory (smaller inputs, batch or image "
                         "size?)\n")
        return 2
    except OSError as exc:  # the system refused: disk full, permissions, a vanished file
        sys.stderr.write(f"{prefix}: error: {_one_line(_os_error_line(exc))}\n")
        return 2
    finally:
        if handled:
            signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)
        if not ok:
            _remove_if_empty(created)
    if out is not None:  # None: a command that writes nothing (dashboard)
        log.info("wrote %s", out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
