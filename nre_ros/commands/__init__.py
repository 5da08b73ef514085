"""Sub-commands of ``nre-ros`` (one module each, discovered by ``nre_ros.cli``)."""
