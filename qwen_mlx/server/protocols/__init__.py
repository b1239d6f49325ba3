"""The protocols the server speaks, side by side over the shared parts (see `..protocol`)."""
