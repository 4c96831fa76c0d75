"""Tests of workbench.laughing."""
