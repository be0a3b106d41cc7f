"""``python -m lfxai_utils.book``: see :mod:`lfxai_utils.book`."""
import sys

from .cli import main

sys.exit(main())
