"""`mmfuse detect` (a bridge while the command's code moves here from mmfuse.infer.detect)."""

from mmfuse.infer.detect import add_detect_arguments as add_arguments
from mmfuse.infer.detect import detect_command as run

__all__ = ["add_arguments", "run"]
