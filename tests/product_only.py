"""Runs the `relay` command with the test and bench extras unimportable (numpy, Hypothesis,
psutil, relay_testkit): what `pip install .` alone must be enough for. Used by test_cli.py."""

from __future__ import annotations

import sys
from importlib.abc import MetaPathFinder

EXTRAS = ("numpy", "hypothesis", "psutil", "relay_testkit")


class NotInstalled(MetaPathFinder):
    def find_spec(self, name: str, path: object = None, target: object = None) -> None:
        if name.partition(".")[0] in EXTRAS:
            raise ModuleNotFoundError(f"No module named {name!r} (a test extra, not installed)", name=name)
        return None


if __name__ == "__main__":
    sys.meta_path.insert(0, NotInstalled())
    from relay.cli import main

    sys.exit(main())
