"""backends of nre_ros."""
