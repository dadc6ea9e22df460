"""Thin entry points: one module per `avtk <command>`, each with `get_parser()` and `main(args)`."""
