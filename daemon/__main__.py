"""``python -m daemon`` is the ``mycoedge`` command."""

from daemon.cli import main

raise SystemExit(main())
