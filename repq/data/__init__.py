"""Datasets: ImageNet-style folders, super-resolution folders and the mini benchmark."""
