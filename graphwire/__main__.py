"""``python -m graphwire``: the same as the ``graphwire`` command."""

import sys

from graphwire.processors.cli.main import main

sys.exit(main())
