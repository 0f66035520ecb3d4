"""``python -m dvt_edge SUBCOMMAND ...``: the same as the ``dvt-edge`` command."""

import sys

from dvt_edge.cli import main

sys.exit(main())
