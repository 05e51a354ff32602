import sys

from mlm_core.cli import main

sys.exit(main())
