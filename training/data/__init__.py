"""Training data: photo pools, synthetic homography pairs, photometric and stylized targets."""
