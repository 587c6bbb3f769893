"""keyswap's benchmark: `python -m bench`. See bench/README.md."""
