"""The FID Inception network, its preprocessing, weights, feature extractor
and the sample scores (IS, FID, KID) built on it."""
