"""ROS 2 adapter: the only part of nre_ros that imports rclpy and message packages."""
