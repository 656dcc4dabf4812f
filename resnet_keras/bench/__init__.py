"""Layer 9: training-step benchmarks against peer implementations. Imports the layers below it."""
