"""`python -m qwen_mlx.convert`: the command users of mlx-lm expect, which is
`qwen-mlx convert` (an entry point is a front end, so this one module may import the CLI)."""

from ..cli.convert import main

raise SystemExit(main())
