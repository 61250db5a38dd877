"""Output formats, one package each (see ``quantjob.formats.registry``); every one is listed here.

Adding a format: its package (entry, rules, writer, reader) and one line below.
"""

from __future__ import annotations

from quantjob.formats import ascendv1, compressed_tensors
from quantjob.formats.registry import OutputFormatEntry, format_named, formats, register, unregister

register(ascendv1.FORMAT)
register(compressed_tensors.FORMAT)

__all__ = ["OutputFormatEntry", "format_named", "formats", "register", "unregister"]
