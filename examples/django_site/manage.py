#!/usr/bin/env python
"""Django's command-line utility for this project (its settings package is `config`, a name the toolkit
uses for its own: rqkit.Toolkit keeps the two apart)."""

import os
import sys

if __name__ == "__main__":
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)
