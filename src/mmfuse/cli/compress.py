"""`mmfuse compress` (a bridge while the command's code moves here from mmfuse.ship.compress)."""

from mmfuse.ship.compress import add_compress_arguments as add_arguments
from mmfuse.ship.compress import compress_command as run

__all__ = ["add_arguments", "run"]
