#!/usr/bin/env bash
# Install the ROS 2 Python pieces nre_ros uses into the active venv, without a ROS distro:
# rclpy + messages from PyPI wheels, and tf2_msgs built from its definitions when the
# recipe in ../shared/ros is available (needs cmake and g++). Idempotent.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-${VIRTUAL_ENV:-$HERE/.venv}/bin/python}"
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
