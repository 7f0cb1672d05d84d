"""``python -m modelsec_fast``: the ``modelsec-fast`` command."""

import sys

from modelsec_fast.app.cli import main

sys.exit(main())
