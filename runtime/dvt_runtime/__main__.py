"""``python -m dvt_runtime SUBCOMMAND ...``: the same as the ``dvt-runtime`` command."""

import sys

from dvt_runtime.cli import main

sys.exit(main())
