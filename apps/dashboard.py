"""``panel serve apps/dashboard.py --address 127.0.0.1``: the workbench dashboard on the runs root
$WORKBENCH_RUNS_ROOT (default ./runs). Panel runs this script once per browser session, so each session gets its
own widgets. A browser on another machine gets a refusal page unless WORKBENCH_ALLOW_REMOTE=1
(workbench.app.dashboard.script_app): the page starts processes and has no authentication."""

import os

import workbench.laughing.student  # noqa: F401  (registers the laughing-* mixers the Student tab lists)
from workbench.app.dashboard import ALLOW_REMOTE_ENV, script_app, session_client

app = script_app(os.environ.get("WORKBENCH_RUNS_ROOT", "runs"), session_client(),
                 allow_remote=os.environ.get(ALLOW_REMOTE_ENV) == "1")
app.servable()
