"""The FID Inception network, its weights, the feature extractor and scores."""
