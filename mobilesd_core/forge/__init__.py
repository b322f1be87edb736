"""Forge / A1111 `/sdapi/v1` client, checkpoint matching, infotext, and the simulator."""
