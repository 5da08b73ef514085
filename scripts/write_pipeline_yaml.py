"""Regenerate config/pipeline.yaml from the built-in PipelineConfig defaults.

    python scripts/write_pipeline_yaml.py

test_pipeline.py asserts the file equals ``PipelineConfig()``: run this after changing a default.
"""
from pathlib import Path

import yaml

from nre_ros.config import to_dict
from nre_ros.pipeline import PipelineConfig

HEADER = """\
# Relocalizer settings (nre_ros.pipeline.PipelineConfig); every key is optional and unknown
# keys are errors. Used by `nre-ros demo/localize/evaluate --config` and the node parameter
# `pipeline_config`. Values here are the built-in defaults
# (regenerate with `python scripts/write_pipeline_yaml.py`).
"""


def main() -> None:
    path = Path(__file__).resolve().parents[1] / 'config' / 'pipeline.yaml'
    body = yaml.safe_dump({'pipeline': to_dict(PipelineConfig())}, sort_keys=False)
    path.write_text(HEADER + body)
    print(f'wrote {path}')


if __name__ == '__main__':
    main()
