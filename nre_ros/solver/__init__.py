"""solver of nre_ros."""
