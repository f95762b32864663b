"""``python -m repq``."""

import sys

from repq.cli import main

sys.exit(main())
