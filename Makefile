# camera_pose_ros: one command to set up, one to test, one to demo.
#   make test    creates .venv when missing, then runs the test suite (ruff included); as
#                root it installs Chromium + chromedriver (apt-get) for the browser test
#   make test-fast  the inner loop: the tests that neither train, run SfM, start DDS nodes
#                nor run subprocesses (pytest -m "not slow"; test/conftest.py marks them)
#   make lint    ruff and mypy
#   make demo    creates .venv when missing, then runs the whole pipeline on a synthetic building
#   make venv    the environment alone; a second run on a complete environment does nothing
# USE_SYSTEM_ROS=1 uses a sourced system ROS 2 (apt/robostack) instead of the PyPI wheels.

PYTHON ?= python3
VENV ?= .venv
UV_VERSION ?= 0.13.8
USE_SYSTEM_ROS ?= 0
PYTEST_ARGS ?=
ARGS ?=

PY := $(VENV)/bin/python
STAMP := $(VENV)/.camera_pose_ros-complete
DEPS := requirements.lock setup.py setup.cfg package.xml tools/build_tf2_msgs.sh \
        tools/tf2_msgs/CMakeLists.txt tools/tf2_msgs/msg/TFMessage.msg

# Keep DDS discovery on this machine (tests and demo talk over loopback only).
export ROS_AUTOMATIC_DISCOVERY_RANGE ?= LOCALHOST

.PHONY: venv test test-fast demo bench lint lock clean-venv browser

venv: $(STAMP)

$(STAMP): $(DEPS)
	@set -e; \
	if [ "$(USE_SYSTEM_ROS)" = "1" ]; then \
	  $(PY) -c "import rclpy" 2>/dev/null || [ ! -d $(VENV) ] || { echo "remove $(VENV) first"; exit 1; }; \
	  [ -d $(VENV) ] || $(PYTHON) -m venv --system-site-packages $(VENV); \
	else \
	  [ -x $(PY) ] || $(PYTHON) -m venv $(VENV); \
	fi; \
	$(PY) -m pip --version >/dev/null 2>&1 || $(PY) -m ensurepip -q; \
	[ -x $(VENV)/bin/uv ] && [ "$$($(VENV)/bin/uv --version | cut -d' ' -f2)" = "$(UV_VERSION)" ] \
	  || $(PY) -m pip install -q --disable-pip-version-check "uv==$(UV_VERSION)"; \
	if [ "$(USE_SYSTEM_ROS)" = "1" ]; then \
	  grep -vE '^(ros-|    # via ros-)' requirements.lock > $(VENV)/requirements-no-ros.txt; \
	  $(VENV)/bin/uv pip install --python $(PY) -r $(VENV)/requirements-no-ros.txt; \
	else \
	  $(VENV)/bin/uv pip install --python $(PY) -r requirements.lock; \
	fi; \
	tools/build_tf2_msgs.sh $(VENV); \
	$(VENV)/bin/uv pip install --python $(PY) --no-deps --config-settings editable_mode=compat -e .; \
	$(PY) -c "import torch, torchvision, pycolmap, rosbags, cv2, rclpy; from tf2_msgs.msg import TFMessage"; \
	touch $(STAMP); \
	echo "environment ready: $(VENV) ($$(du -sh $(VENV) | cut -f1))"

# The dashboard's browser test drives the system's Chromium through its chromedriver (same
# package version, nothing downloaded at test time). As root (CI) they are installed with
# apt-get when missing and the test must run; elsewhere it is skipped, saying how to install.
BROWSER_PKGS ?= chromium chromium-driver

browser:
	@if command -v chromedriver >/dev/null 2>&1 && { command -v chromium \
	  || command -v chromium-browser || command -v google-chrome; } >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  echo "installing $(BROWSER_PKGS) for the dashboard's browser test (apt-get)"; \
	  export DEBIAN_FRONTEND=noninteractive; \
	  { apt-get update -qq && apt-get install -y -qq --no-install-recommends \
	    $(BROWSER_PKGS) >/dev/null; } </dev/null \
	  || { echo "apt-get could not install $(BROWSER_PKGS)" >&2; exit 1; }; \
	else \
	  echo "note: Chromium and chromedriver not found: the dashboard's browser test is" \
	    "skipped; install them with: sudo apt-get install $(BROWSER_PKGS)" \
	    "(Ubuntu: chromium-browser chromium-chromedriver), or run make test as root"; \
	fi

test: venv browser
	@if [ "$$(id -u)" = 0 ]; then export CAMERA_POSE_REQUIRE_BROWSER=1; fi; \
	$(PY) -m pytest $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests" >&2; exit 1; fi; exit $$rc

test-fast: venv
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

demo: venv
	$(PY) -m camera_pose_ros.demo $(ARGS)

bench: venv
	$(PY) -m benchmarks.run_all $(ARGS)

lint: venv
	$(VENV)/bin/ruff check .
	$(PY) -m mypy

lock: venv
	$(VENV)/bin/uv pip compile requirements.in -o requirements.lock \
	  --python-version 3.11 --python-platform x86_64-manylinux_2_28 -q

clean-venv:
	rm -rf $(VENV)
