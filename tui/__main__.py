"""`python -m tui`: the chat app."""

from .app import main

raise SystemExit(main())
