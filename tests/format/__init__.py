"""Tests of stripedump.format (stripedump/format/)."""
