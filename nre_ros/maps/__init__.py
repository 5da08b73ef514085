"""maps of nre_ros."""
