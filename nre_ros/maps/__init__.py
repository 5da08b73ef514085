"""Relocalization maps: format (safetensors + JSON), builders, retrieval.

Public API::

    load_map(path, expected_spec) -> Map          # validated, memory-mapped
    Map.save(path)
    global_descriptor(features) -> (G,)           # build and query time
    RetrievalIndex(map.global_descriptors).query(desc, k) -> (indices, scores)
    build_rgbd_map / build_posed_map / build_colmap_map / build_sfm_map
"""
from __future__ import annotations

from nre_ros.maps.build_common import BuildOptions
from nre_ros.maps.colmap import build_colmap_map, build_sfm_map
from nre_ros.maps.features import global_descriptor, sample_descriptors, select_keypoints
from nre_ros.maps.format import (FORMAT_VERSION, Keyframe, KeyframeObservations, Map,
                                 MapMetadata, Sim3, load_map, map_size_bytes, validate_map,
                                 with_command)
from nre_ros.maps.retrieval import RetrievalIndex
from nre_ros.maps.rgbd import build_rgbd_map
from nre_ros.maps.triangulate import build_posed_map

__all__ = ['BuildOptions', 'FORMAT_VERSION', 'Keyframe', 'KeyframeObservations', 'Map',
           'MapMetadata', 'RetrievalIndex', 'Sim3', 'build_colmap_map', 'build_posed_map',
           'build_rgbd_map', 'build_sfm_map', 'global_descriptor', 'load_map', 'map_size_bytes',
           'sample_descriptors', 'select_keypoints', 'validate_map', 'with_command']
