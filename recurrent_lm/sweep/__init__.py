"""Depth sweeps as an instrument: collect a sweep's run directories into iso-FLOP tables, plots and the
compute-optimal mean recurrence (``recurrent-lm-sweep``)."""
