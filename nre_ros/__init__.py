"""nre_ros: camera relocalization with the Neural Reprojection Error (ROS-free core).

Nothing in this package imports rclpy except ``nre_ros.ros``.
"""
__version__ = '0.1.0'

from nre_ros.allocator import keep_freed_memory as _keep_freed_memory
from nre_ros.threads import prefer_passive_openmp as _prefer_passive_openmp

# before anything imports torch: its OpenMP workers sleep instead of spinning (nre_ros.threads)
_prefer_passive_openmp()
# big tensors are reused from the heap instead of page-faulted in every query (nre_ros.allocator)
_keep_freed_memory()
