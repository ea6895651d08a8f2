"""The paper's Table 2 on a labelled activation store: scoring.py (the protocol and its reference rows),
run.py (trains the table and writes it down)."""
