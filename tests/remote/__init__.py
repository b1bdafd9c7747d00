"""Tests of stripedump.remote (stripedump/remote/)."""
