"""`python -m lakeforge` is the `lakeforge` command."""

from lakeforge.cli import main

raise SystemExit(main())
