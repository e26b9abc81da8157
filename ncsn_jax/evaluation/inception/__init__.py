"""The FID Inception: network, preprocessing, weights, extractor, scores."""
