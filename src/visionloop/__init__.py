"""visionloop: serve, tune, train and label a computer-vision model."""

__version__ = "0.1.0"
