"""coscale bench: the paper's evaluation (Table 2, Figures 2 and 3) on real work, and its report."""
