"""`python -m dermalens.cli ...` (torchrun and the tests start the command this way)."""
import sys

from . import main

sys.exit(main())
