"""upanets_lab: the library behind this repository's commands (main.py, predict.py, export.py, landscape.py,
compare.py), by job:

    data/        the data sets' vocabulary (catalog), their sources, decoding, the device loader, augmentation
    training/    the run and its epoch loop, the step, checkpoints of a run, optimizer and schedule, recipes,
                 the speed choice, logging, processes
    inference/   what using a trained checkpoint needs
    checkpoints  the one reader of every checkpoint format, and the one builder of a model from it
    commandline, errors, files, utils: what the commands share

The models themselves are in the repository's ``models`` package (a registry; ``models/upanets.py`` is UPANets).
See docs/architecture.md.
"""
