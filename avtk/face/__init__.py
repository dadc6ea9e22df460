"""Faces: 5-point alignment to the insightface 112x112 template; later detection and iresnet."""
