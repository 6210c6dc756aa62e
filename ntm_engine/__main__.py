"""``python -m ntm_engine`` = the ``ntm`` command line (:mod:`ntm_engine.cli`)."""
import sys

from .cli import main

sys.exit(main())
