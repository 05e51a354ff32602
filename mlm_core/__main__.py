"""``python -m mlm_core``: the command line (``mlm_core.cli``)."""

import sys

from mlm_core.cli import main

sys.exit(main())
