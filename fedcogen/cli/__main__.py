"""``python -m fedcogen.cli``: the console script without the installed entry point (spawned processes use it)."""

import sys

from fedcogen.cli import main

sys.exit(main())
