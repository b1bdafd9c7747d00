"""Tests of stripedump.source (stripedump/source/)."""
