"""Old home of `mmfuse compress`, kept only while cli/__init__.py still imports the command from
here; delete this file once it uses `mmfuse.cli.compress` (this ship → cli import is a cycle)."""

from mmfuse.cli.compress import add_arguments as add_compress_arguments
from mmfuse.cli.compress import run as compress_command

__all__ = ["add_compress_arguments", "compress_command"]
