"""`python -m bench` -> bench.cli.main(); nothing else."""

import sys

from bench.cli import main

sys.exit(main())
