"""The four tabs and their parts."""
