"""Tests of workbench.data."""
