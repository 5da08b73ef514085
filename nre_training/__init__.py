"""Offline training of nre_ros descriptors with the NRE loss. Never imported by nre_ros."""
