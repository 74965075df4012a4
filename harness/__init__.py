"""The harness the tool packages share (benchmarks/, reliability/) and the tests use: a live server and its
readiness poll (``server``), the percentile of every latency figure (``stats``), the toy vocabulary of the
synthetic dialogs (``words``) and the probe that counts host reads (``probes``).

It sits under benchmarks/ and reliability/, which import it and not each other, and above the product packages:
nothing in model/, training/ or app/ imports it (tests/test_requirements.py::test_layering checks both)."""
