"""`python -m prefork` is the `prefork` command."""

import sys

from .cli import main

sys.exit(main())
