"""torch.hub entry points: ``torch.hub.load("<owner>/UPANets", "upanets16", num_classes=10)``."""
dependencies = ["torch"]

from models.upanets import UPANets, upanets16, upanets32, upanets64  # noqa: E402,F401
