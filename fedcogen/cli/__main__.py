"""``python -m fedcogen.cli``: the same as the ``fedcogen`` console script."""

import sys

from fedcogen.cli import main

sys.exit(main())
