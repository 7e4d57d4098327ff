"""Data: sources (registry by name), the prepare step, and loading prepared splits."""
