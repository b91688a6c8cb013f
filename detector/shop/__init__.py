"""The simulated shop (detector.shop.simulator): producers with labelled incidents for the
demo, the benchmarks and the tests."""
