"""`python -m dgan ...` (and so `accelerate launch -m dgan ...`, `torchrun -m dgan ...`)."""

import sys

from dgan.cli import main

sys.exit(main())
