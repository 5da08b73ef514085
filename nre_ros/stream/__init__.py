"""ROS-free localization stream: the per-stream policy the node and the offline evaluation share
(``LocalizationStream``; settings ``StreamConfig``; ``FixGate``; ``CovarianceModel``)."""
from nre_ros.stream.config import StreamConfig
from nre_ros.stream.covariance import CovarianceModel
from nre_ros.stream.gate import FixGate, GateConfig
from nre_ros.stream.stats import StreamStats
from nre_ros.stream.stream import (ACCEPTED, BAD_INPUT, DROPPED_BUSY, DROPPED_RATE, FAILED, IDLE,
                                   PENDING, QUEUED, REJECTED, STALE, TF_MISSING, Decision, Fix,
                                   Frame, FrameInputs, LocalizationStream)

__all__ = ['StreamConfig', 'CovarianceModel', 'FixGate', 'GateConfig', 'StreamStats',
           'LocalizationStream', 'Decision', 'Fix', 'Frame', 'FrameInputs', 'ACCEPTED',
           'REJECTED', 'FAILED', 'BAD_INPUT', 'TF_MISSING', 'STALE', 'QUEUED', 'PENDING',
           'DROPPED_BUSY', 'DROPPED_RATE', 'IDLE']
