"""``python -m zerosmooth …`` runs the ``zerosmooth`` command line (see ``zerosmooth.cli``)."""

from zerosmooth.cli import main

raise SystemExit(main())
