"""Tests of stripedump.mount (stripedump/mount/)."""
