"""What `mmfuse compress` offers and writes, importable without torch (the parser reads it for
`--help`)."""

from __future__ import annotations

# How weights are ranked for pruning: across every prunable layer, or within each.
SCOPES = ("global", "layer")
# The summary `prune_model` writes beside the pruned model.
SUMMARY_FILE = "compression.json"
