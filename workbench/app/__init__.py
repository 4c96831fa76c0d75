"""The Panel dashboard: load a teacher, design a student, start / stop / resume distillation runs and watch them
live, and inspect what a student learned. Everything shown comes from run folders (events, checkpoints,
summaries), so runs started from the command line appear too and the page survives a reload or an app restart.

    workbench app [--port P] [--host H]          # or: panel serve apps/dashboard.py
    from workbench.app import create_app          # create_app(runs_root="runs").servable()
"""

from workbench._lazy import lazy_names

# Panel is imported only when the app is used: the ``workbench`` command imports ``workbench.app.cli`` for every
# subcommand, and machines without the ``app`` extra must still run the others.
_NAMES = {"Dashboard": "dashboard", "create_app": "dashboard"}
__all__ = list(_NAMES)

__getattr__, __dir__ = lazy_names(__name__, _NAMES)
