"""Tests of stripedump.dump (stripedump/dump/)."""
