"""Benchmarks of the redirect: the workload runner (redirect.py), real peers (peers.py), tables and plots (report.py)."""
