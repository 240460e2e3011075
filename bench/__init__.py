"""Side-by-side benchmarks: latentsurgeon vs a peer on the same work, in one process run."""
