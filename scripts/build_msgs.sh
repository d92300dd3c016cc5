#!/usr/bin/env bash
# Build ros2_opentrack's messages (msg/*.msg) against the ROS 2 PyPI wheels in a venv, so that
#   python -c "from ros2_opentrack.msg import Instance3DArray"
# works beside the editable (pip install -e) source package. Usage: scripts/build_msgs.sh [VENV]
# Idempotent: skips the build when msg/, CMakeLists.txt and package.xml are unchanged and the import works.
#
# Why the messages go to their own folder and not to site-packages/ros2_opentrack/:
#   a site-packages/ros2_opentrack/ without the sources would be a namespace-package portion, and Python's
#   PathFinder (which runs before setuptools' editable finder) would return that namespace package from any
#   directory but the checkout, hiding the real sources. So the generated package (msg/ + the typesupport
#   extension modules) is installed to $VENV/lib/ros2_opentrack_msgs/ros2_opentrack, which is not on
#   sys.path, and site-packages/ros2_opentrack.pkg names that folder. pkgutil.extend_path, which
#   ros2_opentrack/__init__.py calls, appends every folder listed in a <package>.pkg file on sys.path to the
#   package's __path__ (documented pkgutil behaviour): the sources stay first, ros2_opentrack.msg resolves
#   to the generated modules. A colcon build does not need this (it installs one merged package).
#
# tf2_msgs has no wheel: when `import tf2_msgs` fails, a minimal TFMessage-only package from
# test/ros_support/tf2_msgs is built too (tests publish /tf with it; real robots have the real one); likewise a
# Detection3DArray-only vision_msgs from test/ros_support/vision_msgs when `import vision_msgs` fails.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
VENV=$(cd "${1:-${OPENTRACK_VENV:-$ROOT/.venv}}" && pwd)
PY="$VENV/bin/python"
BUILD="$ROOT/build/venv_msgs"
MSG_PYDIR="lib/ros2_opentrack_msgs"  # relative to $VENV
SITE=$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
export PATH="$VENV/bin:$PATH"
log() { echo "[build_msgs] $*"; }

# 1. The wheels' exported CMake files name the wheel builder's Python and numpy include folders: point them
#    at this venv's (a no-op once done).
fix_wheel_cmake_paths() {
  local pyinc npinc files
  pyinc=$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')
  npinc=$("$PY" -c 'import numpy; print(numpy.get_include())')
  files=$(grep -rlE '/opt/python/cp3' "$VENV/share" --include='*.cmake' 2>/dev/null || true)
  [ -z "$files" ] && return 0
  log "fixing wheel-builder paths in $(echo "$files" | wc -l) CMake files"
  echo "$files" | xargs -r sed -i -E \
    -e "s#/opt/python/cp3[0-9]+-cp3[0-9]+/include/python3\.[0-9]+#$pyinc#g" \
    -e "s#/opt/python/cp3[0-9]+-cp3[0-9]+/lib/python3\.[0-9]+/site-packages/numpy/_core/include#$npinc#g"
}

# cmake configure + build + install of one package into the venv prefix.
cmake_install() {  # src build_dir extra-args...
  local src=$1 bdir=$2
  shift 2
  cmake -S "$src" -B "$bdir" -DCMAKE_INSTALL_PREFIX="$VENV" -DCMAKE_PREFIX_PATH="$VENV" \
    -DPython3_EXECUTABLE="$PY" -DBUILD_TESTING=OFF -DCMAKE_BUILD_TYPE=Release "$@" >"$bdir.log" 2>&1 &&
    cmake --build "$bdir" -j "$(nproc)" >>"$bdir.log" 2>&1 &&
    cmake --install "$bdir" >>"$bdir.log" 2>&1 ||
    { tail -40 "$bdir.log" >&2; log "FAILED building $src (full log: $bdir.log)"; return 1; }
}

inputs_hash() {
  cat "$ROOT"/msg/*.msg "$ROOT"/srv/*.srv "$ROOT/CMakeLists.txt" "$ROOT/package.xml" "$0" | sha256sum | cut -c1-16
  "$PY" -c 'import sys; print(sys.version)'
}

import_check() {  # from outside the checkout, so the editable finder (not the cwd) provides the sources
  (cd / && "$PY" - <<'EOF'
import ros2_opentrack, ros2_opentrack.config  # the sources, not a namespace package
from rclpy.serialization import serialize_message, deserialize_message
from ros2_opentrack.msg import Instance3D, Instance3DArray, QueryResult
from ros2_opentrack.srv import LoadMap, Query, SetVocabulary
assert hasattr(Instance3D(), 'presence')
msg = Instance3DArray(instances=[Instance3D(id=7, label="mug")])
assert deserialize_message(serialize_message(msg), Instance3DArray).instances[0].label == "mug"
EOF
  ) >/dev/null 2>&1
}

mkdir -p "$ROOT/build"
fix_wheel_cmake_paths
STAMP="$VENV/$MSG_PYDIR/.inputs"
HASH=$(inputs_hash)
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$HASH" ] && import_check; then
  log "ros2_opentrack messages up to date"
else
  log "building ros2_opentrack messages"
  rm -rf "$VENV/$MSG_PYDIR"
  cmake_install "$ROOT" "$BUILD" -DOPENTRACK_MSGS_ONLY=ON -DPYTHON_INSTALL_DIR="$MSG_PYDIR"
  echo "$VENV/$MSG_PYDIR/ros2_opentrack" > "$SITE/ros2_opentrack.pkg"
  echo "$HASH" > "$STAMP"
  import_check || { log "FAILED: 'from ros2_opentrack.msg import Instance3DArray' does not work after the build"; exit 1; }
fi

if ! (cd / && "$PY" -c 'import tf2_msgs.msg' >/dev/null 2>&1); then
  log "tf2_msgs not installed: building the TFMessage-only stand-in from test/ros_support/tf2_msgs"
  cmake_install "$ROOT/test/ros_support/tf2_msgs" "$ROOT/build/venv_tf2_msgs"
  (cd / && "$PY" -c 'from tf2_msgs.msg import TFMessage') || { log "FAILED: tf2_msgs does not import"; exit 1; }
fi
if ! (cd / && "$PY" -c 'import vision_msgs.msg' >/dev/null 2>&1); then
  log "vision_msgs not installed: building the Detection3DArray stand-in from test/ros_support/vision_msgs"
  cmake_install "$ROOT/test/ros_support/vision_msgs" "$ROOT/build/venv_vision_msgs"
  (cd / && "$PY" -c 'from vision_msgs.msg import Detection3DArray') || { log "FAILED: vision_msgs does not import"; exit 1; }
fi
log "done"
