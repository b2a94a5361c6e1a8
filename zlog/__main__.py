"""``python -m zlog``: the same as the ``zlog`` command."""

import sys

from zlog.cli import main

sys.exit(main())
