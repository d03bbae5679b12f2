"""Feature extraction: image tensor in, keypoints / descriptors out."""
