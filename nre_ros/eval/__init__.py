"""eval of nre_ros."""
