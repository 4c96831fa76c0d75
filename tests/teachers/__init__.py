"""Tests of workbench.teachers."""
