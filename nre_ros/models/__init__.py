"""models of nre_ros."""
