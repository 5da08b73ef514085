"""Reading robot recordings (rosbag2, sqlite3 or mcap) with ``rosbags``, no ROS install needed.

- ``reader``: open a bag, find topics (errors name the topic and list what is there), stream
  messages, decode images and CameraInfo.
- ``tf``: the bag's static and dynamic TF as a tree; chains looked up at any stamp.
- ``poses``: where poses come from (a pose topic, a TF chain or a TUM file), taken to the
  camera's optical frame and interpolated at image stamps.
"""
