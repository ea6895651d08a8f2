"""`python -m sdlkit` is the `sdlkit` command."""

from sdlkit.cli import main

raise SystemExit(main())
