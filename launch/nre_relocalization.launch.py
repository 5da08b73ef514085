"""Start nre_relocalization with config/nre_ros.yaml (for ROS installs with launch_ros).

Usage:
    ros2 launch nre_ros nre_relocalization.launch.py map_path:=/path/lab.nremap \
        image:=/camera/color/image_raw autostart:=true

``camera_info`` is taken as the sibling of ``image`` (…/camera_info) unless remapped
explicitly. ``pose`` defaults to amcl_pose so Nav2 tools find it (ros-interface.md §8 A).
This file is never imported by the tests (launch is not installable from PyPI).
"""
import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import LifecycleNode


def generate_launch_description():
    share = get_package_share_directory('nre_ros')
    default_params = os.path.join(share, 'config', 'nre_ros.yaml')
    args = [
        DeclareLaunchArgument('params_file', default_value=default_params,
                              description='parameter YAML (node section nre_relocalization)'),
        DeclareLaunchArgument('map_path', description='map file to localize in'),
        DeclareLaunchArgument('image', default_value='/camera/image_raw',
                              description='input image topic'),
        DeclareLaunchArgument('depth', default_value='/camera/aligned_depth_to_color/image_raw',
                              description='depth topic (used only with use_depth: true)'),
        DeclareLaunchArgument('pose', default_value='amcl_pose',
                              description='output PoseWithCovarianceStamped topic'),
        DeclareLaunchArgument('autostart', default_value='false',
                              description='configure + activate without a lifecycle manager'),
        DeclareLaunchArgument('use_sim_time', default_value='false',
                              description='use /clock (bag replay)'),
        DeclareLaunchArgument('namespace', default_value='', description='node namespace'),
    ]
    node = LifecycleNode(
        package='nre_ros',
        executable='nre_relocalization',
        name='nre_relocalization',
        namespace=LaunchConfiguration('namespace'),
        output='screen',
        parameters=[
            LaunchConfiguration('params_file'),
            {'map_path': LaunchConfiguration('map_path'),
             'autostart': LaunchConfiguration('autostart'),
             'use_sim_time': LaunchConfiguration('use_sim_time')},
        ],
        remappings=[
            ('image', LaunchConfiguration('image')),
            ('depth', LaunchConfiguration('depth')),
            ('~/pose', LaunchConfiguration('pose')),
        ],
    )
    return LaunchDescription(args + [node])
