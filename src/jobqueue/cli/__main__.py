"""``python -m jobqueue.cli``: the server starts its --dashboard as ``python -m jobqueue.cli dashboard``."""

import sys

from . import main

sys.exit(main())
