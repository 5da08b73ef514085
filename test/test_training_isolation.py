"""The node package never imports the offline training package."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_importing_the_node_never_imports_nre_training():
    code = '''
import importlib, pkgutil, sys
import nre_ros, nre_ros.pipeline, nre_ros.cli, nre_ros.commands, nre_ros.models
for m in pkgutil.iter_modules(nre_ros.commands.__path__):
    importlib.import_module('nre_ros.commands.' + m.name)
try:
    import rclpy  # noqa: F401
except ImportError:
    pass
else:
    importlib.import_module('nre_ros.ros.node')
from nre_ros.models import load_model
import nre_ros.models.xfeat_nre
nre_ros.cli.build_parser()
bad = sorted(m for m in sys.modules if m == 'nre_training' or m.startswith('nre_training.'))
print('LEAK' if bad else 'CLEAN', bad)
'''
    out = subprocess.run([sys.executable, '-c', code], cwd=ROOT, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.startswith('CLEAN'), out.stdout


def _imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(), str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.append((node.lineno, node.module))
    return found


def test_only_the_train_command_names_nre_training_in_an_import():
    offenders = []
    for path in sorted((ROOT / 'nre_ros').rglob('*.py')):
        rel = path.relative_to(ROOT).as_posix()
        for lineno, mod in _imports(path):
            if mod == 'nre_training' or mod.startswith('nre_training.'):
                if rel != 'nre_ros/commands/train.py':
                    offenders.append(f'{rel}:{lineno} imports {mod}')
                else:
                    # inside run() only, never at module level
                    top = {n.lineno for n in ast.parse(path.read_text()).body}
                    assert lineno not in top, f'{rel}:{lineno} imports {mod} at module level'
    assert not offenders, offenders


def _module_graph(package: str) -> dict[str, set[str]]:
    """Module -> modules of the same package it imports anywhere (function bodies too)."""
    graph = {}
    for path in sorted((ROOT / package).rglob('*.py')):
        name = '.'.join(path.relative_to(ROOT).with_suffix('').parts)
        name = name.removesuffix('.__init__')
        graph[name] = {mod for _, mod in _imports(path) if mod.startswith(package + '.')}
    return graph


def test_no_import_cycle_between_modules():
    """A cycle is a strongly connected component of more than one module; package
    ``__init__`` re-exports of their own submodules are not edges back."""
    for package in ('nre_ros', 'nre_training'):
        graph = _module_graph(package)
        edges = {m: {d for d in deps if d in graph and not m.startswith(d + '.')}
                 for m, deps in graph.items()}
        index, low, stack, on, cycles = {}, {}, [], set(), []

        def visit(v, counter=[0]):
            index[v] = low[v] = counter[0]
            counter[0] += 1
            stack.append(v)
            on.add(v)
            for w in edges[v]:
                if w not in index:
                    visit(w)
                    low[v] = min(low[v], low[w])
                elif w in on:
                    low[v] = min(low[v], index[w])
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop()
                    on.discard(w)
                    comp.append(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    cycles.append(sorted(comp))

        for v in graph:
            if v not in index:
                visit(v)
        assert not cycles, f'{package}: import cycles {cycles}'
