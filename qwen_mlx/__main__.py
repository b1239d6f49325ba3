"""`python -m qwen_mlx <command>`: the `qwen-mlx` script without the script."""

from .cli.main import main

raise SystemExit(main())
