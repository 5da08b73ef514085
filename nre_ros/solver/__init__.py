"""NRE solver core (ROS-free): MSAC+P3P initialization, GNC refinement, covariance, verdict.

Public API::

    solve(points_world, coarse, K_coarse, config=SolverConfig(), fine=None, T_init=None)
        -> Result | Failure             # = the three below
    solve_coarse(points_world, coarse, K_coarse, config, T_init=None) -> Solution | Failure
    refine_level(solution, FineLevel, config) -> Solution | Failure  # fine GNC
    verdict(solution, VerdictConfig) -> Result | Failure
    msac(points_world, maps, K, MsacConfig) -> MsacResult           # stage 1
    prealign(points_world, maps, K, T_init, PrealignConfig) -> T      # tracking, before 2
    refine(points_world, maps, K, T_init, GncConfig) -> RefineResult  # stage 2 (any level)
    information(points_world, maps, K, T, sigma, GncConfig, kind) -> (6, 6)
    p3p(bearings, points) -> R, t, valid                              # batched P3P
    baselines.re_opencv_magsac(...), baselines.re_poselib(...)      # RE on argmax matches
"""
from nre_ros.solver.core import (FineLevel, Level, Solution, SolverConfig, VerdictConfig,
                                 evaluate_pose, point_nre, refine_level, solve, solve_coarse,
                                 verdict)
from nre_ros.solver.gnc import GncConfig, RefineResult, information, refine
from nre_ros.solver.msac import MsacConfig, MsacResult, msac
from nre_ros.solver.p3p import p3p
from nre_ros.solver.prealign import PrealignConfig, prealign

__all__ = ['solve', 'solve_coarse', 'refine_level', 'verdict', 'Level', 'Solution',
           'SolverConfig', 'VerdictConfig', 'FineLevel', 'GncConfig', 'MsacConfig',
           'MsacResult', 'RefineResult', 'msac', 'refine', 'information', 'p3p', 'point_nre',
           'evaluate_pose', 'PrealignConfig', 'prealign']
