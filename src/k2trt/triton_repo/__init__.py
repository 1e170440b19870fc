"""The Triton model repository `k2trt package` writes, and what runs inside it.

- `spec`: the four models (chat, preprocessing, tensorrt_llm, postprocessing) as data;
  `pbtxt`: config.pbtxt from typed data.
- `repository`: `package(bundle, out)` and `use_cpu_standin(out, ckpt)`; `launch`: launch
  artifacts (docker, mpirun, Slurm, Kubernetes LeaderWorkerSet).
- `model.py`: the one model.py installed in every model; `serving`: what it runs, the
  class config.pbtxt's `k2trt_model` names (`serving.roles`).
- `cpu_server`: a real tritonserver 2.51 on CPU (from nvidia-pytriton) for tests.
- `control`: Triton's HTTP repository API (index, load, unload, readiness, configs);
  `versions`: a served repository's version directories and configs, as rollouts change them.
"""
