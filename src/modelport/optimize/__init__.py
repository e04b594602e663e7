"""Making models faster to serve: conversion to ONNX (and, later, quantization and tuning)."""
