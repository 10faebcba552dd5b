"""The CLI's commands, one module per group of them; `cli.py` puts them together."""
