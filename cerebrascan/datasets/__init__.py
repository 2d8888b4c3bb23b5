"""A lab's own BraTS-style datasets: check a folder, add it under DVC (``cerebrascan dataset``).

``check.py`` holds the naming conventions and the rules (no I/O), ``scan.py`` reads the files
(headers, and voxels where the rules need them), ``add.py`` copies, converts and versions a
checked folder, ``cli.py`` is the command group.
"""
