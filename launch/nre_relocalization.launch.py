"""Start the nre_relocalization lifecycle node with config/nre_ros.yaml.

Usage (a ROS 2 install; without the ros2 CLI, run it with launch.LaunchService as
test/test_launch.py does):
    ros2 launch nre_ros nre_relocalization.launch.py map_path:=/path/lab.nremap \
        image:=/camera/color/image_raw autostart:=true

``camera_info`` is the sibling of ``image`` (…/camera_info) unless ``camera_info`` is given.
``depth:=TOPIC`` turns on RGB-D (``use_depth``); ``pose:=amcl_pose`` remaps ``~/pose`` for Nav2
tools (not remapped by default). Arguments left empty keep the parameter file's value. The
parameter file's section is ``/**`` so it also applies under ``namespace:=…``.
"""
import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import LifecycleNode

# name -> (default, description); '' = not set (the parameter file / node default applies)
ARGUMENTS = {
    'params_file': (None, 'parameter YAML (section /**); default: installed config/nre_ros.yaml'),
    'map_path': ('', 'map file to localize in (else the parameter file\'s map_path)'),
    'namespace': ('', 'node namespace'),
    'image': ('/camera/image_raw', 'image topic (…/compressed with image_transport:=compressed)'),
    'camera_info': ('', 'CameraInfo topic ("" = the sibling of image)'),
    'image_transport': ('', 'raw | compressed'),
    'depth': ('', 'registered depth topic; set = RGB-D (use_depth: true)'),
    'pipeline_config': ('', 'PipelineConfig YAML (config/pipeline.yaml)'),
    'threads': ('', 'CPU threads of the networks (num_threads: auto or N; "" = the params '
                'file\'s, default auto)'),
    'precision': ('', 'network precision: auto | fp32 | bf16 ("" = the params file\'s)'),
    'pose': ('', 'remap ~/pose to this topic, e.g. amcl_pose ("" = ~/pose)'),
    'autostart': ('false', 'configure + activate without a lifecycle manager'),
    'use_sim_time': ('false', 'use /clock (bag replay)'),
}


def _node(context):
    arg = {name: LaunchConfiguration(name).perform(context) for name in ARGUMENTS}
    overrides = {'autostart': arg['autostart'].lower() == 'true',
                 'use_sim_time': arg['use_sim_time'].lower() == 'true'}
    for name in ('map_path', 'image_transport', 'pipeline_config', 'precision'):
        if arg[name]:
            overrides[name] = arg[name]
    if arg['threads']:
        overrides['num_threads'] = arg['threads'] if arg['threads'] == 'auto' \
            else int(arg['threads'])
    remappings = [('image', arg['image'])]
    if arg['camera_info']:
        remappings.append(('camera_info', arg['camera_info']))
    if arg['depth']:
        overrides['use_depth'] = True
        remappings.append(('depth', arg['depth']))
    if arg['pose']:
        remappings.append(('~/pose', arg['pose']))
    return [LifecycleNode(
        package='nre_ros', executable='nre_relocalization', name='nre_relocalization',
        namespace=arg['namespace'], output='screen',
        parameters=[arg['params_file'], overrides], remappings=remappings)]


def generate_launch_description():
    share = get_package_share_directory('nre_ros')
    defaults = dict(ARGUMENTS, params_file=(os.path.join(share, 'config', 'nre_ros.yaml'),
                                            ARGUMENTS['params_file'][1]))
    args = [DeclareLaunchArgument(name, default_value=default, description=description)
            for name, (default, description) in defaults.items()]
    return LaunchDescription(args + [OpaqueFunction(function=_node)])
