"""``panel serve apps/dashboard.py``: the workbench dashboard on the runs root $WORKBENCH_RUNS_ROOT (default ./runs).
Panel runs this script once per browser session, so each session gets its own widgets."""

import os

from workbench.app import create_app

create_app(runs_root=os.environ.get("WORKBENCH_RUNS_ROOT", "runs")).servable()
