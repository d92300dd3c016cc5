"""python -m ros2_opentrack == opentrack."""

import sys

from .cli import main

sys.exit(main())
