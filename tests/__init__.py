"""Tests, mirroring the package: tests/<package>/ holds the tests of workbench/<package>/."""
