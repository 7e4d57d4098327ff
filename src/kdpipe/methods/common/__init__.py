"""Machinery shared by the methods: the base class, feature taps, common losses."""
