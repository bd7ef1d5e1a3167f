"""Benchmarks and GPU tooling, apart from the library: `python -m das2f.bench` (make bench), `das2f.bench.threads`,
`das2f.bench.gpu` (make gpu-check), `das2f.bench.gpu_deps` (make gpu-deps)."""
