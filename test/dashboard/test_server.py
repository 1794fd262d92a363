"""The dashboard's HTTP and WebSocket API against a real tiny checkpoint and dataset.

The checkpoint is trained for a few epochs on the session's SfM building (so its provenance,
training curve and calibration are real) and evaluated in both modes beside itself, which
is where the dashboard finds evaluations. No ROS here: the live state is fed directly.
"""

from __future__ import annotations

import base64
import json
import math
import re
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest

from camera_pose_ros.dashboard.server import STATIC, access_token, create_app
from camera_pose_ros.dashboard.sources import find_sources
from camera_pose_ros.dashboard.state import LiveState, pose_view
from camera_pose_ros.geometry import look_at_rotation, quat_wxyz_from_rotmat
from camera_pose_ros.io.posecsv import read_poses
from test.conftest import wait_for

with warnings.catch_warnings():  # starlette prefers httpx2, which the registry does not have
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient
    from starlette.websockets import WebSocketDisconnect

LOCAL = "http://localhost"  # the Host a loopback-bound dashboard answers


@pytest.fixture(scope="session")
def dashboard_run(sfm_building, tmp_path_factory) -> tuple[Path, Path, Path]:
    """A tiny PoseNet trained on the session building, evaluated (regress and refine) into
    ``eval_test/`` beside it. Built once per session (a second import of this fixture finds
    it on disk). Returns ``(synth, data, model.pt)``."""
    from camera_pose_ros.io.refmap import load_refinement_map
    from camera_pose_ros.learning.evaluate import evaluate
    from camera_pose_ros.learning.train import load_train_config, train
    from camera_pose_ros.runtime.refine import Refiner

    synth, data = sfm_building
    run = tmp_path_factory.getbasetemp() / "dashboard_run"
    model = run / "model.pt"
    if not (run / "eval_test" / "metrics.json").is_file():
        cfg = load_train_config(None, epochs=3, backbone="mobilenet_v3_small",
                                pretrained="none", hidden=64, input_height=48, input_width=64,
                                batch_size=8, mc_samples=8, device="cpu", augment_copies=0,
                                early_stopping_patience=100)
        train(data, cfg, run, progress=False)
        evaluate(model, data, split="test", out=run / "eval_test", device="cpu",
                 progress=False, refiner=Refiner(load_refinement_map(data)))
    return synth, data, model


@pytest.fixture(scope="module")
def client(dashboard_run):
    synth, data, model = dashboard_run
    sources = find_sources(model, floorplan=synth / "floorplan.yaml", strict=True)
    with TestClient(create_app(sources, device="cpu"), base_url=LOCAL) as c:
        yield c


def png_bytes(rgb: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(rgb[:, :, ::-1]))
    assert ok
    return buf.tobytes()


def test_pages_come_from_the_package_and_fetch_nothing_from_the_internet(client):
    assets = set()
    for page in ("/", "/localize", "/dataset", "/model"):
        r = client.get(page)
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
        refs = re.findall(r'(?:src|href)="([^"]+)"', r.text)
        assert refs, page
        for ref in refs:
            assert not re.match(r"^(?:[a-z]+:)?//", ref), f"{page} loads {ref} from elsewhere"
        assets |= {ref for ref in refs if ref.startswith("static/")}
    assert {"static/dashboard.js", "static/charts.js", "static/style.css"} <= assets
    for ref in assets:
        r = client.get("/" + ref)
        assert r.status_code == 200 and r.content, ref
    for js in STATIC.glob("*.js"):  # no fetch() or import of a remote URL in the scripts
        urls = re.findall(r"https?://[^\s\"')]+", js.read_text())
        assert all(u.startswith("http://www.w3.org/2000/svg") for u in urls), (js.name, urls)


def test_dataset_api_shows_what_the_dataset_command_wrote(client, dashboard_run):
    _, data, _ = dashboard_run
    r = client.get("/api/dataset")
    assert r.status_code == 200, r.text
    d = r.json()
    report = json.loads((data / "report.json").read_text())
    alignment = json.loads((data / "alignment.json").read_text())
    assert d["report"]["registration_rate"] == report["registration_rate"]
    assert [cp["residual_m"] for cp in d["control_points"]] == [
        cp["residual_m"] for cp in alignment["control_points"]]
    for split in ("train", "validation", "test"):
        assert d["splits"][split]["count"] == len(read_poses(data / f"{split}.csv"))
    poses = read_poses(data / "poses.csv")
    assert len(d["registered"]["xy"]) == len(poses)
    cov = d["coverage"]
    assert 0.3 < cov["walkable_seen"] <= 1.0 and 0.0 < cov["walls_seen"] <= 1.0
    grid = cov["grid"]
    codes = np.frombuffer(base64.b64decode(grid["codes"]), np.uint8).reshape(
        grid["height"], grid["width"])
    assert set(np.unique(codes)) <= {0, 1, 2, 3, 4}
    # every camera of the walk stands on floor the walk saw
    col = np.floor((poses.positions_N3[:, 0] - grid["origin"][0]) / grid["cell"]).astype(int)
    row = np.floor((poses.positions_N3[:, 1] - grid["origin"][1]) / grid["cell"]).astype(int)
    assert np.mean(codes[row, col] == 2) > 0.95


def test_model_api_shows_provenance_training_and_evaluation(client, dashboard_run):
    _, data, model = dashboard_run
    m = client.get("/api/model").json()
    assert Path(m["meta"]["provenance"]["dataset"]) == data.resolve()
    assert m["meta"]["pretrained"] is False
    assert [r["epoch"] for r in m["training_curve"]] == [1, 2, 3]
    assert m["modes"] == ["regress", "refine"]
    (ev,) = m["evaluations"]
    metrics = json.loads((model.parent / "eval_test" / "metrics.json").read_text())
    assert ev["split"] == "test" and ev["metrics"]["median_position_m"] == pytest.approx(
        metrics["median_position_m"])
    n = len(read_poses(data / "test.csv"))
    for mode in ("regress", "refine"):
        curve = ev["modes"][mode]
        errs = curve["position_errors_m"]
        assert len(errs) == n and errs == sorted(errs)
        assert np.median(errs) == pytest.approx(
            metrics["median_position_m"] if mode == "regress"
            else metrics["modes"]["refine"]["median_position_m"], abs=1e-4)
        cal = curve["calibration"]
        assert len(cal["position"]) == len(cal["levels"])
        assert all(0.0 <= v <= 1.0 for v in cal["position"] + cal["rotation"])
        assert cal["position"] == sorted(cal["position"])  # a CDF never decreases
    assert np.median(ev["modes"]["refine"]["position_errors_m"]) < 0.1  # refined: cm


def test_upload_is_localized_in_each_mode(client, dashboard_run):
    _, data, _ = dashboard_run
    test = read_poses(data / "test.csv")
    rgb = cv2.imread(str(data / "images" / test.images[2]))[:, :, ::-1]
    r = client.post("/api/localize", params={"name": "corridor photo.png"},
                    content=png_bytes(rgb))
    assert r.status_code == 200, r.text
    res = r.json()
    assert res["name"] == "corridor photo.png" and (res["width"], res["height"]) == (320, 240)
    reg, ref = res["modes"]["regress"], res["modes"]["refine"]
    assert reg["ellipse"]["a"] >= reg["ellipse"]["b"] > 0 and reg["ms"] > 0
    assert ref["refined"] and ref["inliers"] >= 30, ref
    truth = test.positions_N3[2]
    assert np.hypot(ref["x"] - truth[0], ref["y"] - truth[1]) < 0.2
    ok, jpg = cv2.imencode(".jpg", np.ascontiguousarray(rgb[:, :, ::-1]))
    r = client.post("/api/localize", params={"name": "x.jpg"}, content=jpg.tobytes())
    assert r.status_code == 200 and "refine" in r.json()["modes"]


def test_dataset_frame_is_localized_against_its_ground_truth(client, dashboard_run):
    _, data, _ = dashboard_run
    test = read_poses(data / "test.csv")
    frames = client.get("/api/frames/test").json()["frames"]
    assert [f["name"] for f in frames] == test.images
    assert client.get("/api/frames/test/1.jpg").headers["content-type"] == "image/jpeg"
    res = client.post("/api/localize/frame", params={"split": "test", "index": 1}).json()
    assert res["ground_truth"]["x"] == pytest.approx(test.positions_N3[1, 0])
    assert res["modes"]["refine"]["error_m"] < 0.2
    r = client.post("/api/localize/frame", params={"split": "test", "index": 10_000})
    assert r.status_code == 404 and "no frame 10000" in r.json()["error"]


def _files(*roots: Path) -> set[tuple[str, int]]:
    return {(str(p), p.stat().st_mtime_ns) for r in roots for p in r.rglob("*") if p.is_file()}


def test_bad_uploads_get_a_clear_answer_and_the_server_stays_up(dashboard_run, tmp_path,
                                                                 monkeypatch):
    synth, data, model = dashboard_run
    monkeypatch.chdir(tmp_path)
    sources = find_sources(model, floorplan=synth / "floorplan.yaml")
    app = create_app(sources, max_upload_bytes=300_000, max_upload_pixels=2_000_000)
    rgb = cv2.imread(str(data / "images" / read_poses(data / "test.csv").images[0]))[:, :, ::-1]
    good = png_bytes(rgb)
    before = _files(data, model.parent, tmp_path)
    bomb = bytearray(png_bytes(np.zeros((8, 8, 3), np.uint8)))
    bomb[16:24] = (30000).to_bytes(4, "big") * 2  # the header claims 30000 x 30000 pixels
    form = (b"--b\r\nContent-Disposition: form-data; name=\"f\"; filename=\"a.png\"\r\n\r\n"
            + good + b"\r\n--b--\r\n")
    cases = [
        ({"name": "notes.jpg"}, b"these are not the pixels you are looking for", {}, 415,
         "not a PNG or JPEG"),
        ({"name": "big.png"}, good[:8] + bytes(400_000), {}, 413, "limit of 300000 bytes"),
        ({"name": "../../etc/cron.d/x.png"}, good, {}, 400, "not a plain file name"),
        ({"name": "..\\x.png"}, good, {}, 400, "not a plain file name"),
        ({"name": "bomb.png"}, bytes(bomb), {}, 413, "30000x30000"),
        ({"name": "cut.png"}, good[:len(good) // 2], {}, 400, "cannot be decoded"),
        ({"name": "empty.png"}, b"", {}, 400, "empty"),
        ({}, form, {"content-type": "multipart/form-data; boundary=b"}, 415, "request body"),
    ]
    with TestClient(app, base_url=LOCAL) as c:
        for params, body, headers, status, text in cases:
            r = c.post("/api/localize", params=params, content=body, headers=headers)
            assert r.status_code == status, (params, r.text)
            assert text in r.json()["error"], (params, r.json())
            assert c.get("/api/info").status_code == 200  # still up
        r = c.post("/api/localize", params={"name": "fine.png"}, content=good)
        assert r.status_code == 200, r.text
    assert _files(data, model.parent, tmp_path) == before, "an upload left a file behind"


def test_missing_checkpoint_is_reported_and_the_server_stays_up(dashboard_run, tmp_path):
    synth, data, _ = dashboard_run
    missing = tmp_path / "nowhere" / "model.pt"
    sources = find_sources(missing, data, synth / "floorplan.yaml")
    assert any("not found" in p and "model.pt" in p for p in sources.problems)
    with TestClient(create_app(sources), base_url=LOCAL) as c:
        info = c.get("/api/info").json()
        assert info["modes"] == [] and any("model.pt" in p for p in info["problems"])
        r = c.post("/api/localize", params={"name": "a.png"},
                   content=png_bytes(np.full((48, 64, 3), 90, np.uint8)))
        assert r.status_code == 409 and "model.pt" in r.json()["error"], r.text
        assert c.get("/api/dataset").status_code == 200  # the dataset page still works
        assert any("cannot be used" in p for p in c.get("/api/model").json()["problems"])
        assert c.get("/model").status_code == 200


def test_cli_refuses_a_missing_checkpoint_in_one_line(tmp_path, capsys):
    from camera_pose_ros.cli import main

    assert main(["dashboard", "--checkpoint", str(tmp_path / "model.pt")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("camera-pose dashboard: error:") and "model.pt" in err
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert main(["dashboard"]) == 2
    assert "nothing to show" in capsys.readouterr().err


def test_access_token_beyond_loopback_on_http_and_websocket(dashboard_run):
    synth, _, _ = dashboard_run
    assert access_token("127.0.0.1", None) is None and access_token("::1", None) is None
    made = access_token("0.0.0.0", None)
    assert made and len(made) >= 24 and made != access_token("0.0.0.0", None)
    assert access_token("192.168.1.5", "given") == "given"
    app = create_app(find_sources(floorplan=synth / "floorplan.yaml"), token="s3cret",
                     loopback_only=False)
    with TestClient(app, base_url="http://robot.example") as c:
        r = c.get("/api/info")
        assert r.status_code == 401 and "access token" in r.json()["error"]
        assert c.get("/", params={"token": "wrong"}).status_code == 401
        assert c.get("/api/info", headers={"authorization": "Bearer s3cret"}).status_code == 200
        r = c.get("/", params={"token": "s3cret"})
        assert r.status_code == 200 and "HttpOnly" in r.headers["set-cookie"]
        assert c.get("/api/floorplan.png").status_code == 200  # the cookie carries it now
        with c.websocket_connect("ws://robot.example/ws/live") as ws:
            assert json.loads(ws.receive_text())["type"] == "snapshot"
        c.cookies.clear()
        with pytest.raises(WebSocketDisconnect) as exc, \
                c.websocket_connect("ws://robot.example/ws/live"):
            pass
        assert exc.value.code == 1008
        with c.websocket_connect("ws://robot.example/ws/live?token=s3cret") as ws:
            assert json.loads(ws.receive_text())["type"] == "snapshot"


def test_loopback_dashboard_refuses_other_hosts_and_origins(dashboard_run):
    synth, _, _ = dashboard_run
    app = create_app(find_sources(floorplan=synth / "floorplan.yaml"))
    with TestClient(app, base_url="http://attacker.example") as c:
        r = c.get("/api/info")
        assert r.status_code == 400 and "loopback" in r.json()["error"]
    with TestClient(app, base_url="http://127.0.0.1:8080") as c:
        assert c.get("/api/info").status_code == 200
        with pytest.raises(WebSocketDisconnect), c.websocket_connect(
                "ws://127.0.0.1:8080/ws/live", headers={"origin": "http://attacker.example"}):
            pass
        with c.websocket_connect("ws://127.0.0.1:8080/ws/live",
                                 headers={"origin": "http://127.0.0.1:8080"}) as ws:
            assert json.loads(ws.receive_text())["status"]["state"] == "offline"


def _quat_looking(dx: float, dy: float) -> np.ndarray:
    return quat_wxyz_from_rotmat(look_at_rotation(np.array([dx, dy, 0.0])))


def test_pose_view_draws_the_covariance_and_the_viewing_direction():
    cov = np.diag([0.04, 0.01, 0.0025, 1e-4, 1e-4, 1e-4])
    v = pose_view(np.array([1.0, 2.0, 1.5]), _quat_looking(0.0, 1.0), cov)
    assert v["heading"] == pytest.approx(math.pi / 2)
    assert (v["ellipse"]["a"], v["ellipse"]["b"]) == pytest.approx((0.2, 0.1))
    assert abs(math.sin(v["ellipse"]["angle"])) == pytest.approx(0.0, abs=1e-9)
    rot = np.eye(6)
    rot[:2, :2] = [[0.0, -1.0], [1.0, 0.0]]  # the same ellipse turned by 90 degrees
    v = pose_view(np.zeros(3), _quat_looking(-1.0, 0.0), rot @ cov @ rot.T)
    assert abs(math.cos(v["ellipse"]["angle"])) == pytest.approx(0.0, abs=1e-9)
    assert abs(v["heading"]) == pytest.approx(math.pi)
    assert v["sigma"][:3] == pytest.approx([0.1, 0.2, 0.05])
    assert pose_view(np.zeros(3), _quat_looking(1, 0), np.full((6, 6), np.nan))["ellipse"] \
        is None


class FakeClock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_live_websocket_pushes_poses_and_says_when_the_robot_goes_quiet(dashboard_run):
    synth, _, _ = dashboard_run
    clock = FakeClock()
    live = LiveState("/relocalization", stale_after=3.0, clock=clock)
    app = create_app(find_sources(floorplan=synth / "floorplan.yaml"), live)
    cov = np.diag([0.04, 0.01, 0.01, 1e-3, 1e-3, 1e-3])
    with TestClient(app, base_url=LOCAL) as c, c.websocket_connect(
            "ws://localhost/ws/live") as ws:
        snap = json.loads(ws.receive_text())
        assert snap["status"]["state"] == "waiting"
        assert "no pose received from /relocalization" in snap["status"]["message"]
        assert live.subscribers == 1

        def feed() -> None:
            live.on_pose(10**18, np.array([2.0, 3.0, 1.5]), _quat_looking(1, 0), cov)
            live.on_pose(10**18, np.array([2.1, 3.1, 1.5]), _quat_looking(1, 0), cov,
                         refined=True)
            live.on_pose(10**18, np.array([2.1, 3.1, 1.5]), _quat_looking(1, 0), cov)

        feeder = threading.Thread(target=feed)  # poses come from another thread (ROS)
        feeder.start()
        events: list[dict] = []
        while len(events) < 2:
            e = json.loads(ws.receive_text())
            if e["type"] == "pose":
                events.append(e)
        feeder.join()
        assert [(e["pose"]["kind"], e["pose"]["x"]) for e in events] == [
            ("regressed", 2.0), ("refined", 2.1)]
        assert events[1]["status"]["state"] == "live"
        snap = c.get("/api/live").json()
        assert snap["counts"] == {"regressed": 1, "refined": 1, "repeats": 1}
        assert [(p["kind"], p["x"]) for p in snap["path"]] == [("refined", 2.1)]
        clock.t += 10.0  # the robot stops publishing
        deadline = time.monotonic() + 5
        while True:
            e = json.loads(ws.receive_text())
            if e["type"] == "status" and e["status"]["state"] == "stale":
                break
            assert time.monotonic() < deadline, e
        assert "stopped publishing" in e["status"]["message"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str, headers: dict | None = None) -> tuple[int, dict]:
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())
    except OSError:  # not listening yet
        return 0, {}


def test_cli_serves_beyond_loopback_only_with_a_token(dashboard_run, venv_bin):
    synth, data, _ = dashboard_run
    port = _free_port()
    proc = subprocess.Popen(
        [str(venv_bin / "camera-pose"), "dashboard", "--data", str(data), "--floorplan",
         str(synth / "floorplan.yaml"), "--host", "0.0.0.0", "--port", str(port)],
        stderr=subprocess.PIPE, text=True)
    try:
        lines: list[str] = []
        reader = threading.Thread(target=lambda: lines.extend(iter(proc.stderr.readline, "")),
                                  daemon=True)
        reader.start()
        assert wait_for(lambda: any("?token=" in ln for ln in lines), 60), lines
        token = re.search(r"\?token=(\S+)", "".join(lines)).group(1)
        url = f"http://127.0.0.1:{port}/api/info"
        assert wait_for(lambda: _get(url)[0] == 401, 30)
        status, body = _get(url, {"authorization": f"Bearer {token}"})
        assert status == 200 and body["token_required"] and body["splits"] == [
            "train", "validation", "test"]
        from websockets.sync.client import connect

        with connect(f"ws://127.0.0.1:{port}/ws/live?token={token}") as ws:
            assert json.loads(ws.recv(timeout=5))["status"]["state"] == "offline"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 143
        reader.join(timeout=5)
        assert "camera-pose dashboard: terminated" in "".join(lines)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_launch_file_starts_the_dashboard_on_request():
    import ast

    tree = ast.parse((Path(__file__).resolve().parents[2] / "launch"
                      / "relocalization.launch.py").read_text())
    declared = {c.args[0].value for c in ast.walk(tree) if isinstance(c, ast.Call)
                and getattr(c.func, "id", None) == "DeclareLaunchArgument"}
    assert {"dashboard", "dashboard_port", "dashboard_host", "dashboard_token"} <= declared
    nodes = [c for c in ast.walk(tree) if isinstance(c, ast.Call)
             and getattr(c.func, "id", None) == "Node"
             and any(k.arg == "executable" and getattr(k.value, "value", None) == "dashboard_node"
                     for k in c.keywords)]
    assert len(nodes) == 1
    cond = next(k.value for k in nodes[0].keywords if k.arg == "condition")
    assert ast.unparse(cond) == "IfCondition(LaunchConfiguration('dashboard'))"


def test_frames_api_refuses_unknown_splits(client):
    r = client.get("/api/frames/secret")
    assert r.status_code == 404 and "unknown split" in r.json()["error"]
    r = client.get("/api/frames/test/-1.jpg")
    assert r.status_code == 404 and "no frame -1" in r.json()["error"]
