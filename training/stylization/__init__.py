"""Photorealistic stylization of training photos (HNDesc's stylized pairs, after Li et al.).

A content photo takes the colour look of a reference photo through a whitening-colouring
transform (WCT), then an edge-aware smoothing guided by the content image restores its
local structure, so the stylized image stays aligned with the content pixel for pixel.
"""
