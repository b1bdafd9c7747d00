"""Tests of stripedump.levels (stripedump/levels/)."""
