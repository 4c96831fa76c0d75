"""Distillation: run folders, the event stream, atomic checkpoints (and, later, losses, stages and recipes)."""
