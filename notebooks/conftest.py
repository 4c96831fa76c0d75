"""The notebooks as tests (nbval, run by scripts/test.sh): when the test script gave them a temporary runs folder
(``WORKBENCH_RUNS_TEMPORARY=1`` beside ``WORKBENCH_RUNS``), the runs a notebook made are deleted once its last cell
has run, so the suite needs the disk of one notebook's runs at a time (about 1 GB of checkpoints per run of the
default teacher) rather than of all of them. A ``WORKBENCH_RUNS`` given by the user is left alone."""

import os
import shutil
from pathlib import Path


def pytest_runtest_teardown(item, nextitem):
    if os.environ.get("WORKBENCH_RUNS_TEMPORARY") != "1" or not os.environ.get("WORKBENCH_RUNS"):
        return
    if nextitem is not None and nextitem.path == item.path:      # the same notebook goes on
        return
    for run in Path(os.environ["WORKBENCH_RUNS"]).glob("*"):
        if run.is_dir():
            shutil.rmtree(run)
        else:
            run.unlink()
