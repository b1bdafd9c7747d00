"""Tests of stripedump.kdump (stripedump/kdump/)."""
