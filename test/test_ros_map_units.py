"""The node says when it serves a map without metric units: diagnostics value and level."""
from __future__ import annotations

import pytest

pytest.importorskip('diagnostic_msgs.msg', reason='ROS messages not installed')
pytestmark = pytest.mark.ros

from diagnostic_msgs.msg import DiagnosticStatus  # noqa: E402

from nre_ros.ros.diagnostics import to_status  # noqa: E402
from nre_ros.stream.stats import StreamStats  # noqa: E402


@pytest.mark.parametrize('warning', ['', 'map has units \'sfm\' and no map_T_model: ...'])
def test_diagnostics_flag_a_map_without_metric_units(warning):
    s = StreamStats(state='active', map_loaded=True, localized=True, ever_localized=True,
                    map_units_warning=warning)
    st = to_status(s, 'hw', lost_after=5)
    values = {kv.key: kv.value for kv in st.values}
    assert values['map units'] == (warning or 'metric')
    assert (st.level, st.message) == ((DiagnosticStatus.WARN,
                                       'Localized, in a map without metric units') if warning
                                      else (DiagnosticStatus.OK, 'Localized'))
