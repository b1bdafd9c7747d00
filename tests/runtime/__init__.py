"""Tests of stripedump.runtime (stripedump/runtime/)."""
