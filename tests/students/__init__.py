"""Tests of workbench.students."""
