"""The model.py sources `k2trt package` installs (each imports triton_python_backend_utils, so
they import only inside Triton's Python backend, or in tests with a stand-in for it)."""
