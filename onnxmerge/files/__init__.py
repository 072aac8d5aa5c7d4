"""Models and images in and out, safely: model files (external data checked, probed, atomic writes) and
image folders, pools and ``.npz`` arrays."""
