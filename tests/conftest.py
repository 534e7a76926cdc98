import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from qubesd_harness import QubesdProcess, seed_upstream_fixture


@pytest.fixture
def qubesd(tmp_path):
    """A fresh qubesd with an initial store, stopped after the test."""
    daemon = QubesdProcess(tmp_path / "q").start()
    yield daemon
    daemon.stop()


@pytest.fixture
def qubesd_fixture(qubesd):
    """The upstream test fixture of spec 8.1: test-template (qid 1), test-vm1 (qid 2)."""
    return seed_upstream_fixture(qubesd)
