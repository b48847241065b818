"""ZeroSmooth's lab: the procedural world, tiny offline pipelines, the embedded model's training,
the evaluation and its metrics.

The library (``zerosmooth`` outside this package) never imports the lab; the command line reaches
it lazily (``zerosmooth train-tiny``, ``zerosmooth evaluate``, the default input frame). Plots need
the ``lab`` extra (``pip install zerosmooth[lab]``).
"""
