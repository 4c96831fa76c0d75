"""``python -m workbench ...`` works like the ``workbench`` console script."""

from workbench.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
