"""`mmfuse export` (a bridge while the command's code moves here from mmfuse.ship.export)."""

from mmfuse.ship.export import add_export_arguments as add_arguments
from mmfuse.ship.export import export_command as run

__all__ = ["add_arguments", "run"]
