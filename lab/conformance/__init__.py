"""Does an application survive the redirect? Socket behaviours compared with plain TCP (matrix.py),
the known kernel defects that explain differences (defects.py), real servers through it (apps.py)."""
