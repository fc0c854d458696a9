"""``python -m sandboxfs``: the command line."""

import sys

from sandboxfs.cli.main import main

sys.exit(main())
