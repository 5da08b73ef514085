#!/usr/bin/env bash
# Install the ROS 2 Python pieces nre_ros uses into the active venv, without a ROS distro:
# rclpy + messages from PyPI wheels, and tf2_msgs built from its definitions when the
# recipe in ../shared/ros is available (needs cmake and g++), launch / launch_ros /
# launch_testing from the same recipe folder. Idempotent.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-${VIRTUAL_ENV:-$HERE/.venv}/bin/python}"
# absolute (not resolved: a venv's python is a symlink): the checks below run from /
[[ "$PY" == */* && "$PY" != /* ]] && PY="$(cd "$(dirname "$PY")" && pwd)/$(basename "$PY")"
echo "[install_ros] ROS 2 Kilted wheels"
"$PY" -m pip install -q -r "$HERE/requirements-ros.txt" 2> >(grep -v "^WARNING: Location" >&2)
SHARED_ROS="${SHARED_ROS:-$HERE/../shared/ros}"
if "$PY" -c 'import tf2_msgs.msg' 2>/dev/null; then
  echo "[install_ros] tf2_msgs already installed"
elif [[ -x "$SHARED_ROS/install.sh" ]]; then
  echo "[install_ros] building tf2_msgs with $SHARED_ROS (about 1 minute, cached afterwards)"
  VIRTUAL_ENV="$(dirname "$(dirname "$PY")")" PYTHON="$PY" "$SHARED_ROS/install.sh" --with-tf2-msgs | tail -2
else
  echo "[install_ros] WARNING: tf2_msgs not installed (no recipe at $SHARED_ROS); TF tests will skip"
fi
# nre_ros_interfaces (LoadMap.srv for ~/load_map): built once with the rosidl wheels, cached.
if (cd / && "$PY" -c 'from nre_ros_interfaces.srv import LoadMap') 2>/dev/null; then
  echo "[install_ros] nre_ros_interfaces already installed"
else
  CACHE="${ROS_WHEEL_CACHE:-$HOME/.cache/ros-wheels}"
  VERSION="$(sed -n 's:.*<version>\(.*\)</version>.*:\1:p' "$HERE/nre_ros_interfaces/package.xml")"
  WHEEL="$(ls "$CACHE"/ros_nre_ros_interfaces-"$VERSION"-*.whl 2>/dev/null | head -1 || true)"
  if [[ -z "$WHEEL" ]]; then
    echo "[install_ros] building nre_ros_interfaces (about 1-2 minutes, cached afterwards)"
    if PYTHON="$PY" "$HERE/nre_ros_interfaces/build_wheel.sh" "$CACHE" > /tmp/nre_ros_interfaces_build.log 2>&1; then
      WHEEL="$(ls "$CACHE"/ros_nre_ros_interfaces-"$VERSION"-*.whl | head -1)"
    else
      echo "[install_ros] WARNING: nre_ros_interfaces build failed (log: /tmp/nre_ros_interfaces_build.log); ~/load_map will be unavailable and its tests skip"
    fi
  fi
  if [[ -n "$WHEEL" ]]; then
    "$PY" -m pip install -q --no-deps "$WHEEL" 2> >(grep -v "^WARNING: Location" >&2)
    echo "[install_ros] nre_ros_interfaces installed from $WHEEL"
  fi
fi
# launch, launch_ros, launch_testing (not on PyPI: built from the sources next to the recipe).
if (cd / && "$PY" -c 'import launch, launch_ros') 2>/dev/null; then
  echo "[install_ros] launch / launch_ros already installed"
elif [[ -x "$SHARED_ROS/install_launch.sh" ]]; then
  echo "[install_ros] installing launch, launch_ros, launch_testing (about 30 s, cached afterwards)"
  PYTHON="$PY" "$SHARED_ROS/install_launch.sh"
else
  echo "[install_ros] WARNING: launch not installed (no recipe at $SHARED_ROS); launch tests will skip"
fi
