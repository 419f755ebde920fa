"""``python -m gslora``: the same as the ``gslora`` command."""

import sys

from .cli import main

sys.exit(main())
