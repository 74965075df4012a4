"""Reliability tooling: a loopback load test (``python -m reliability.loadtest``) and a kill-and-resume
test of training (``python -m reliability.killtest``). Figures and commands: docs/reliability.md."""
