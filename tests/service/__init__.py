"""Tests of stripedump.service (stripedump/service/) and the package files that wire it in (debian/, dist/)."""
