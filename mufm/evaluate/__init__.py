"""`python -m mufm.evaluate`: the evaluation job over a cascade (mufm/eval/job.py)."""
