"""The reliability report: `python -m reliability` (report.py has the scenarios)."""
