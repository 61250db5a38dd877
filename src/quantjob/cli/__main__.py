"""``python -m quantjob.cli``: how the local launcher re-enters the CLI in each rank."""

from quantjob.cli import entry

entry()
