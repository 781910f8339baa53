"""``python -m daemon.upstream`` = ``mycoedge upstream``."""

import sys

from daemon.upstream.server import main

sys.exit(main())
