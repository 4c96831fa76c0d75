"""Tests of workbench.viz."""
