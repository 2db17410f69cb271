"""The fault matrix is long (real 2-rank launches, kills and re-runs of every stage, the demo chain): every test
in this folder is marked ``slow``, so the default ``make test`` (``-m 'not slow'``) leaves it out and
``make test-faults`` (``pytest -q -m slow tests/faults`` and the kill / resume checks marked slow beside the code
they test) or ``make test-slow`` runs it. ``NEURORIT_FAULT_SEED``
changes where the kills land (default 0; every test prints its draw)."""
import os

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))


def pytest_collection_modifyitems(config, items):
    for item in items:
        if str(item.fspath).startswith(HERE + os.sep):
            item.add_marker(pytest.mark.slow)
