"""The five scenarios of the benchmark suite (issue 6), one module each."""
