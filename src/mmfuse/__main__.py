from mmfuse.cli import entry_point

entry_point()
