"""fnostab: find out why Fourier-neural-operator generators blow up in training, and which fix keeps them stable."""

__version__ = "0.1.0"
