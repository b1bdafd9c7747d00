"""Tests of stripedump.read (stripedump/read/)."""
