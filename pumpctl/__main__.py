"""``python -m pumpctl``: the same as the ``pumpctl`` command."""

import sys

from pumpctl.cli import main

sys.exit(main())
