"""``python -m graphprune``: the same as the ``graphprune`` command."""

import sys

from .cli import main

sys.exit(main())
