"""The one command-line tool, ``nre-ros``, with one sub-command per module in ``commands/``.

Each module in ``nre_ros.commands`` defines ``NAME``, ``HELP``, ``add_arguments(parser)`` and
``run(args) -> int``; the CLI only parses and forwards, the work lives in the core modules.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import pkgutil
import sys

from nre_ros import __version__, commands
from nre_ros.errors import NreError

logger = logging.getLogger('nre_ros')


def _command_modules() -> list:
    mods = [importlib.import_module(f'{commands.__name__}.{m.name}')
            for m in pkgutil.iter_modules(commands.__path__) if not m.name.startswith('_')]
    return sorted(mods, key=lambda m: getattr(m, 'ORDER', 100))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog='nre-ros', description='Camera relocalization with the Neural Reprojection Error.')
    parser.add_argument('--version', action='version', version=f'nre_ros {__version__}')
    parser.add_argument('-v', '--verbose', action='count', default=0,
                        help='more log output (-v info from every stage, -vv debug)')
    sub = parser.add_subparsers(dest='command', metavar='COMMAND')
    for mod in _command_modules():
        p = sub.add_parser(mod.NAME, help=mod.HELP, description=mod.HELP)
        mod.add_arguments(p)
        p.set_defaults(run=mod.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = [logging.WARNING, logging.INFO, logging.DEBUG][min(args.verbose, 2)]
    logging.basicConfig(level=level, format='%(asctime)s %(levelname)s %(name)s: %(message)s',
                        datefmt='%H:%M:%S')
    if not getattr(args, 'run', None):
        parser.print_help()
        return 2
    try:
        return int(args.run(args) or 0)
    except NreError as exc:
        print(f'nre-ros {args.command}: error: {exc}', file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print('interrupted', file=sys.stderr)
        return 130


if __name__ == '__main__':
    sys.exit(main())
