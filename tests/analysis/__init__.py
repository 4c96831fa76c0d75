"""Tests of workbench.analysis."""
