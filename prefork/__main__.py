"""Runs in the `prefork` command's process: `python -m prefork` is the `prefork` command."""

import sys

from prefork.cli import main

sys.exit(main())
