"""The lifecycle node with the ground-truth oracle instead of the pipeline (harness self-check).

    python -m nre_ros.eval.oracle_node BAG SIGMA_T_M SIGMA_R_DEG [--delay S] [--fail-rate P] \
        --ros-args ...

Used by ``nre-ros evaluate BAG --live --oracle ...`` and the live tests: everything between the
bag and the recorded poses (DDS, pairing, TF, covariance conversion, gating, the recorder) is
the real node; only ``localize`` looks the image up in the bag's ground truth. Never a
relocalization result.
"""
from __future__ import annotations

import argparse
import sys

from nre_ros.eval.fakes import OracleLocalizer


def oracle_factory(bag: str, sigma_t_m: float, sigma_r_deg: float, delay_s: float = 0.0,
                   fail_rate: float = 0.0):
    """relocalizer_factory for ``nre_ros.ros.node.main`` (ignores map_path)."""
    def factory(map_path, cfg):
        from nre_ros.eval.bags import read_bag
        return OracleLocalizer.from_frames(read_bag(bag, with_depth=False), sigma_t_m=sigma_t_m,
                                           sigma_r_deg=sigma_r_deg, delay_s=delay_s,
                                           fail_rate=fail_rate)
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
    args = p.parse_args(own)
    from nre_ros.ros.node import main as node_main
    return node_main([sys.argv[0]] + ros_args, relocalizer_factory=oracle_factory(
        args.bag, args.sigma_t_m, args.sigma_r_deg, args.delay, args.fail_rate))


if __name__ == '__main__':
    sys.exit(main())
