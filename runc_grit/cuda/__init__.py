"""CUDA checkpoint support: the driver API, helpers with cuda-checkpoint's interface, its CLI."""
