"""Ray Data pipelines around the clipsr library: corpus sources, storage, preprocessing."""
