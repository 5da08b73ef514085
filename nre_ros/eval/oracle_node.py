"""The lifecycle node with the ground-truth oracle instead of the pipeline (harness self-check).

    python -m nre_ros.eval.oracle_node BAG SIGMA_T_M SIGMA_R_DEG [--delay S] [--fail-rate P] \
        [--gt-topic T | --gt-tf PARENT CHILD | --gt-poses TUM_FILE] --ros-args ...

Used by ``nre-ros evaluate BAG --live --oracle ...`` and the live tests: everything between the
bag and the recorded poses (DDS, pairing, TF, covariance conversion, gating, the recorder) is
the real node; only ``localize`` looks the image up in the bag's ground truth. Never a
relocalization result.
"""
from __future__ import annotations

import argparse
import sys

from nre_ros.commands import _bag_options
from nre_ros.eval.fakes import OracleLocalizer


def oracle_factory(bag: str, sigma_t_m: float, sigma_r_deg: float, delay_s: float = 0.0,
                   fail_rate: float = 0.0, ground_truth_source=None):
    """relocalizer_factory for ``nre_ros.ros.node.main`` (ignores map_path); the truth is the
    bag's /ground_truth, or ``ground_truth_source`` (a ``PoseSource``) at the image stamps."""
    def factory(map_path, cfg):
        from nre_ros.eval.bags import TOPIC_IMAGE, read_bag
        truth = None
        if ground_truth_source is not None:
            from nre_ros.bagio.poses import ground_truth_by_stamp
            truth, _ = ground_truth_by_stamp(bag, TOPIC_IMAGE, ground_truth_source)
        return OracleLocalizer.from_frames(read_bag(bag, with_depth=False, ground_truth=truth),
                                           sigma_t_m=sigma_t_m, sigma_r_deg=sigma_r_deg,
                                           delay_s=delay_s, fail_rate=fail_rate)
    return factory


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    ros_args = argv[argv.index('--ros-args'):] if '--ros-args' in argv else []
    own = argv[:len(argv) - len(ros_args)]
    p = argparse.ArgumentParser(prog='python -m nre_ros.eval.oracle_node')
    p.add_argument('bag')
    p.add_argument('sigma_t_m', type=float)
    p.add_argument('sigma_r_deg', type=float)
    p.add_argument('--delay', type=float, default=0.0, help='simulated processing time (s)')
    p.add_argument('--fail-rate', type=float, default=0.0,
                   help='fraction of frames answered with a Failure (seeded)')
    _bag_options.add_ground_truth_arguments(p)
    args = p.parse_args(own)
    from nre_ros.ros.node import main as node_main
    return node_main([sys.argv[0]] + ros_args, relocalizer_factory=oracle_factory(
        args.bag, args.sigma_t_m, args.sigma_r_deg, args.delay, args.fail_rate,
        _bag_options.ground_truth_source(args)))


if __name__ == '__main__':
    sys.exit(main())
