import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from qubesd_harness import QubesdProcess  # noqa: E402


@pytest.fixture
def qubesd(tmp_path):
    """A fresh qubesd with an initial store, stopped after the test."""
    daemon = QubesdProcess(tmp_path / "q").start()
    yield daemon
    daemon.stop()


@pytest.fixture
def qubesd_fixture(qubesd):
    """The upstream test fixture of spec 8.1: test-template (qid 1), test-vm1 (qid 2)."""
    qubesd.ok("admin.property.Set", "dom0", "default_kernel", b"1.0")
    qubesd.ok("admin.vm.Create.TemplateVM", "dom0", "", b"name=test-template label=black")
    qubesd.ok("admin.property.Set", "dom0", "default_template", b"test-template")
    qubesd.ok("admin.vm.Create.AppVM", "dom0", "test-template", b"name=test-vm1 label=red")
    return qubesd
