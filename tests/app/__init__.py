"""Tests of workbench.app."""
