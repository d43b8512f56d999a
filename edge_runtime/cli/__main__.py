"""``python -m edge_runtime.cli``: the ``edgert`` console script."""

import sys

from edge_runtime.cli.main import main

sys.exit(main())
