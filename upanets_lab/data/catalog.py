"""The data sets' vocabulary, in one place and without torch: their names and the original code's aliases, which
take an image size, class names and normalisation constants.

``compare.py`` and the command-line parsers read it without loading torch; ``sources`` loads the sets it names.
"""
from __future__ import annotations

DATASETS = ("cifar10", "cifar100", "tiny-imagenet", "folder", "synthetic")
ORIGINAL_DATASET_NAMES = {"cifar_10": "cifar10", "cifar_100": "cifar100", "tiny_imgnet": "tiny-imagenet"}
# The sets whose image size is a flag (--img-size); the others fix it (CIFAR 32, Tiny ImageNet 64 by default).
FREE_SIZE_DATASETS = ("folder", "synthetic")

# Each CIFAR's own per-channel statistics of its training images (torchvision's reference recipes).
CIFAR_NORMALIZATION = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}
# The original UPANets code normalised both CIFARs with this one mean/std: its weights expect those inputs.
ORIGINAL_CIFAR_NORMALIZATION = ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010))
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


# CIFAR-100's fine labels in label order (alphabetical, as in its meta file).
CIFAR100_CLASSES = (
    "apple", "aquarium_fish", "baby", "bear", "beaver", "bed", "bee", "beetle", "bicycle", "bottle",
    "bowl", "boy", "bridge", "bus", "butterfly", "camel", "can", "castle", "caterpillar", "cattle",
    "chair", "chimpanzee", "clock", "cloud", "cockroach", "couch", "crab", "crocodile", "cup", "dinosaur",
    "dolphin", "elephant", "flatfish", "forest", "fox", "girl", "hamster", "house", "kangaroo", "keyboard",
    "lamp", "lawn_mower", "leopard", "lion", "lizard", "lobster", "man", "maple_tree", "motorcycle", "mountain",
    "mouse", "mushroom", "oak_tree", "orange", "orchid", "otter", "palm_tree", "pear", "pickup_truck", "pine_tree",
    "plain", "plate", "poppy", "porcupine", "possum", "rabbit", "raccoon", "ray", "road", "rocket",
    "rose", "sea", "seal", "shark", "shrew", "skunk", "skyscraper", "snail", "snake", "spider",
    "squirrel", "streetcar", "sunflower", "sweet_pepper", "table", "tank", "telephone", "television", "tiger",
    "tractor", "train", "trout", "tulip", "turtle", "wardrobe", "whale", "willow_tree", "wolf", "woman", "worm",
)


CIFAR_CLASSES = {"cifar10": CIFAR10_CLASSES, "cifar100": CIFAR100_CLASSES}


# Class counts and image sizes of the sets that fix them; folder and synthetic sets take --img-size (default 32).
_CLASSES_AND_SIZE = {"cifar10": (10, 32), "cifar100": (100, 32), "tiny-imagenet": (200, 64), "synthetic": (10, 32)}


def classes_and_size(dataset: str, img_size: int | None = None) -> tuple[int, int]:
    """(classes, image size) a model for ``dataset`` is built with; a folder's classes are its own (10 here)."""
    classes, size = _CLASSES_AND_SIZE.get(canonical_dataset(dataset), (10, 32))
    return classes, img_size or size


def canonical_dataset(name: str | None) -> str | None:
    """A data set name as one of DATASETS: the original code's names mapped to ours, others unchanged."""
    return ORIGINAL_DATASET_NAMES.get(name, name)
