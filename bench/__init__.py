"""MobileSD's benchmark suite: `python -m bench` (or `./dev bench`) prints one table.

Not tests: figures are measured against a peer (a direct httpx loop to the same simulator) or a
limit from the issue, in the same run, and printed; nothing here asserts.
"""
