"""Published numbers to set beside ours: paper.py (the paper's Tables 1, 2 and 4–7), synthsaebench.py
(SynthSAEBench-16k's results)."""
