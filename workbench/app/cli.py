"""``workbench app``: serve the dashboard. Bound to 127.0.0.1 unless --host names another interface, which also
needs --allow-remote (the page starts processes and reads run folders: it is not for open networks)."""

from __future__ import annotations

import ipaddress
from pathlib import Path

LOCAL_HOSTS = ("localhost",)


def is_loopback(host: str) -> bool:
    if host in LOCAL_HOSTS:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def cmd_app(args) -> int:
    from workbench.generation.cli import check_flag, quiet_transformers

    check_flag("--port", args.port, 0 <= args.port <= 65535, "must be a port number from 0 to 65535")
    check_flag("--runs-root", args.runs_root, not Path(args.runs_root).exists() or Path(args.runs_root).is_dir(),
               "must be a folder (or a path where one can be made), not a file")
    if not is_loopback(args.host) and not args.allow_remote:
        raise ValueError(f"--host {args.host} serves the dashboard beyond this machine; add --allow-remote if you "
                         f"mean it")
    quiet_transformers()
    import panel as pn

    import workbench.laughing.student  # noqa: F401  (registers the laughing-* mixers the Student tab offers)
    from workbench.app.dashboard import TITLE, create_app

    root = Path(args.runs_root).resolve()
    root.mkdir(parents=True, exist_ok=True)
    origins = ["*"] if args.allow_remote else [f"localhost:{args.port}", f"127.0.0.1:{args.port}"]
    print(f"workbench app: http://{args.host}:{args.port}/ (runs root {root})", flush=True)
    def session():
        return create_app(runs_root=root)

    pn.serve({"/": session}, address=args.host, port=args.port, show=args.show,
             websocket_origin=origins, title=TITLE, threaded=False)
    return 0


def add_subcommand(sub) -> None:
    from workbench.generation.cli import example

    p = sub.add_parser("app", help="the Panel dashboard: teachers, students, live runs, inspection",
                       epilog=example("workbench app", "workbench app --port 8080 --runs-root ~/runs --show"))
    p.add_argument("--port", type=int, default=5006, help="port to serve on")
    p.add_argument("--host", default="127.0.0.1", help="interface to bind (127.0.0.1: this machine only)")
    p.add_argument("--allow-remote", action="store_true", help="allow --host to be a non-loopback interface")
    p.add_argument("--runs-root", default="runs", help="folder holding the run folders")
    p.add_argument("--show", action="store_true", help="open a browser tab")
    p.set_defaults(func=cmd_app)
