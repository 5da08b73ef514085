"""nre_ros: camera relocalization with the Neural Reprojection Error (ROS-free core).

Nothing in this package imports rclpy except ``nre_ros.ros``.
"""
__version__ = '0.1.0'
