#!/usr/bin/env bash
# Build the tf2_msgs interface package (TFMessage) into a PyPI-only ROS 2 environment.
# tf2_msgs has no PyPI wheel; without it TF cannot be published or received.
# Usage: tools/build_tf2_msgs.sh VENV_DIR
set -euo pipefail
venv=$(cd "$1" && pwd)
here=$(cd "$(dirname "$0")" && pwd)
py="$venv/bin/python"

if "$py" -c "from tf2_msgs.msg import TFMessage" 2>/dev/null; then
  echo "tf2_msgs already importable; nothing to build"
  exit 0
fi

# The message wheels' exported CMake targets name the wheel builder's Python and NumPy include
# directories, which do not exist here: point them at this environment's own.
py_inc=$("$py" -c "import sysconfig; print(sysconfig.get_paths()['include'])")
np_inc=$("$py" -c "import numpy; print(numpy.get_include())")
grep -rlE '/opt/python/cp3[0-9]+-cp3[0-9]+' "$venv/share" --include='*.cmake' 2>/dev/null \
  | while read -r f; do
      sed -i -E \
        -e "s#/opt/python/cp3[0-9]+-cp3[0-9]+/lib/python3\.[0-9]+/site-packages/numpy/_core/include#${np_inc}#g" \
        -e "s#/opt/python/cp3[0-9]+-cp3[0-9]+/include/python3\.[0-9]+#${py_inc}#g" "$f"
    done

build=$(mktemp -d)
trap 'rm -rf "$build"' EXIT
export PATH="$venv/bin:$PATH"
export AMENT_PREFIX_PATH="$venv${AMENT_PREFIX_PATH:+:$AMENT_PREFIX_PATH}"
export CMAKE_PREFIX_PATH="$venv"
cmake -S "$here/tf2_msgs" -B "$build" \
  -DCMAKE_INSTALL_PREFIX="$venv" -DCMAKE_PREFIX_PATH="$venv" -DBUILD_TESTING=OFF \
  -DPython3_EXECUTABLE="$py" -DPYTHON_EXECUTABLE="$py" -DCMAKE_BUILD_TYPE=Release >"$build/configure.log" 2>&1 \
  || { tail -40 "$build/configure.log"; echo "tf2_msgs: cmake configure failed" >&2; exit 1; }
cmake --build "$build" -j "$(nproc)" >"$build/build.log" 2>&1 \
  || { tail -40 "$build/build.log"; echo "tf2_msgs: build failed" >&2; exit 1; }
cmake --install "$build" >"$build/install.log" 2>&1 \
  || { tail -20 "$build/install.log"; echo "tf2_msgs: install failed" >&2; exit 1; }
"$py" -c "from tf2_msgs.msg import TFMessage; TFMessage()" \
  || { echo "tf2_msgs: built but does not import" >&2; exit 1; }
echo "tf2_msgs built into $venv"
