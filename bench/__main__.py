"""``python -m bench``: every section of the benchmark (see :mod:`bench`)."""

import sys

from bench.cli import main

sys.exit(main())
