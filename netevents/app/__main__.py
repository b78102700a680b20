"""``python -m netevents.app``: the `netevents` command."""

import sys

from .cli import main

sys.exit(main())
