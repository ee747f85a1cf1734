"""`python -m dermalens ...`: the same command line as `dermalens ...`."""
import sys

from .cli import main

sys.exit(main())
