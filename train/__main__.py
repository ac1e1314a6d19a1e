"""`python -m train CONFIG.yaml [--resume] [key=value ...]` (the entry the deepspeed launcher starts)."""

import sys

from train.cli import main

sys.exit(main())
