"""Tests of workbench.distill."""
