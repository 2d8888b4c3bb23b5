"""The SRI24 atlas: its files (read from the installed wheels) and the maths that maps it onto a
study. Used by the ``nogo``, ``hotspot``, ``classification`` and ``radiogenomics`` analyzers and
the phantom generator.

- :mod:`.files`: locate and load the SRI24 T1 and structure masks (the only I/O here);
- :mod:`.alignment`: does a study already lie on the SRI24 grid with the SRI24 anatomy?
- :mod:`.registration`: register the atlas T1 to a study, warp the structure masks across;
- :mod:`.structures`: structure masks on a grid and mm distances to them (``StructureAtlas``);
- :mod:`.cache`: the build-once LRU that lets analyzers of one study share a registration;
- :mod:`.mapping`: ``structure_atlas_for``, the entry point that puts these together.

SimpleITK conversions live one layer down, in :mod:`cerebrascan.imaging.sitk_images`.
"""
