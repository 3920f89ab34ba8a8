"""Serving and scale-out on existing engines: a pipeline as a Triton model through PyTriton
(`triton.py`, `migm-serve`) and deterministic sharded batch generation, in one process or on
Ray (`batch.py`, `migm-generate`). What both share, rows checked one by one and generated in
padded groups with one seed per row, is in `rows.py`. PyTriton and Ray are optional extras
(`migm[serve]`, `migm[ray]`), imported only inside the functions that need them."""
