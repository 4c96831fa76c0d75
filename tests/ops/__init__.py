"""Tests of workbench.ops."""
