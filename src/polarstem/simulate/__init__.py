"""Labeled KNN 4D-STEM data from abTEM multislice (dynamical: only it encodes the sign of P).

- :mod:`.structures`: KNN supercells with a polarization variant, domains and defects (ase Atoms).
- :mod:`.multislice`: abTEM probe, frozen phonons, exit planes, patterns in numpy [row=y, col=x] order.
- :mod:`.corruptions`: experiment-like, seedable transforms (also training augmentation).
- :mod:`.config`: the YAML config, checked, with every default written into the manifest.
- :mod:`.runner`: chunked, resumable, dask-parallel generation of a labeled dataset folder.

abTEM, ase and dask.distributed are imported inside functions so ``import polarstem`` stays fast.
"""
