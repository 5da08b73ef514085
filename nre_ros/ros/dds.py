"""Fast DDS settings for camera-size images (no ROS imports here; safe before ``rclpy.init``).

Fast DDS's default shared-memory segment is 512 KB: a 640x480 rgb8 frame (0.92 MB) then falls
back to fragmented UDP, and best-effort readers lose most frames (docs/ros.md).
``LARGE_SHM_PROFILE`` is the profile shipped as ``config/fastdds_large_shm.xml`` (16 MB
segment, UDP fallback; a test keeps the two equal). It has to be in effect in
**every** process of the graph that sends or receives images, before its first participant.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

ENV_PROFILE = 'FASTDDS_DEFAULT_PROFILES_FILE'
LARGE_SHM_PROFILE = """<?xml version="1.0" encoding="UTF-8" ?>
<dds xmlns="http://www.eprosima.com">
  <profiles>
    <transport_descriptors>
      <transport_descriptor>
        <transport_id>shm_large</transport_id>
        <type>SHM</type>
        <segment_size>16777216</segment_size>
      </transport_descriptor>
      <transport_descriptor>
        <transport_id>udp</transport_id>
        <type>UDPv4</type>
      </transport_descriptor>
    </transport_descriptors>
    <participant profile_name="large_shm" is_default_profile="true">
      <rtps>
        <userTransports>
          <transport_id>shm_large</transport_id>
          <transport_id>udp</transport_id>
        </userTransports>
        <useBuiltinTransports>false</useBuiltinTransports>
      </rtps>
    </participant>
  </profiles>
</dds>
"""


def write_large_image_profile(path: str | Path | None = None) -> Path:
    """Write ``LARGE_SHM_PROFILE`` to ``path`` (default: a per-user file in the temp dir)."""
    out = Path(path) if path else Path(tempfile.gettempdir()) / \
        f'nre_ros_fastdds_large_shm_{os.getuid()}.xml'
    if not out.is_file() or out.read_text() != LARGE_SHM_PROFILE:
        tmp = out.with_name(out.name + f'.{os.getpid()}.tmp')
        tmp.write_text(LARGE_SHM_PROFILE)
        os.replace(tmp, out)
    return out


def ensure_large_image_profile(env: dict | None = None) -> str:
    """Set ``FASTDDS_DEFAULT_PROFILES_FILE`` in ``env`` (default ``os.environ``) unless set.

    Returns the profile path in effect. Call before ``rclpy.init`` and pass the same ``env``
    to subprocesses.
    """
    env = os.environ if env is None else env
    if not env.get(ENV_PROFILE):
        env[ENV_PROFILE] = str(write_large_image_profile())
    return env[ENV_PROFILE]


def ensure_isolation(env: dict | None = None, domain_id: int | None = None) -> None:
    """Localhost-only discovery and (if given or unset) a ROS_DOMAIN_ID, in ``env``."""
    env = os.environ if env is None else env
    env.setdefault('ROS_AUTOMATIC_DISCOVERY_RANGE', 'LOCALHOST')
    if domain_id is not None:
        env['ROS_DOMAIN_ID'] = str(int(domain_id))
