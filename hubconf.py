"""torch.hub entry points, e.g. ``torch.hub.load("path/to/this/repo", "upanets16", source="local", num_classes=10)``."""
dependencies = ["torch"]

from models.upanets import UPANets, upanets16, upanets32, upanets64  # noqa: E402,F401
