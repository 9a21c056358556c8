"""`mmfuse serve` (a bridge while the command's code moves here from mmfuse.serve.app)."""

from mmfuse.serve.app import add_serve_arguments as add_arguments
from mmfuse.serve.app import serve_command as run

__all__ = ["add_arguments", "run"]
