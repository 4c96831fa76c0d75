"""Tests of workbench.generation."""
