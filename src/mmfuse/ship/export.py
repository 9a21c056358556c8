"""Old home of `mmfuse export`, kept only while cli/__init__.py still imports the command from
here; delete this file once it uses `mmfuse.cli.export` (this ship → cli import is a cycle)."""

from mmfuse.cli.export import add_arguments as add_export_arguments
from mmfuse.cli.export import run as export_command

__all__ = ["add_export_arguments", "export_command"]
