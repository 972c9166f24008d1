"""Data: the sets' vocabulary (catalog), where they come from (sources), decoding image files, the device loader and the
augmentation."""
