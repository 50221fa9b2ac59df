"""`python -m snowcloud`: the same as the `snowcloud` command."""

import sys

from snowcloud.cli import main

sys.exit(main())
