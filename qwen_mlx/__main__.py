"""`python -m qwen_mlx <command>`: the `qwen-mlx` script without the script."""

from .cli import main

raise SystemExit(main())
