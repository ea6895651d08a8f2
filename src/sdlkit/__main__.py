"""`python -m sdlkit` is the `sdlkit` command."""

from sdlkit.cli.main import main

raise SystemExit(main())
