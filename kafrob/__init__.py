"""kafrob: do trainable kernel-based activation functions make adversarially trained CNNs more robust?"""

import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

__version__ = "0.1.0"
