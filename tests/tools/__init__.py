"""Tests of stripedump.tools (stripedump/tools/)."""
