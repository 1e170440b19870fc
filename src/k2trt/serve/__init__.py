"""`k2trt serve`: an OpenAI- and Anthropic-compatible HTTP gateway over a `ChatBackend`.

`app.create_app(backend, ServeConfig(...))` builds the ASGI app; `server` runs it under
uvicorn (graceful drain on SIGTERM); `openai_api` and `anthropic_api` map each API's bodies to
and from the API-neutral `ChatRequest`/`ChatChunk`; `scripted.ScriptedBackend` is a
zero-cost backend for tests and benchmarks; `triton_backend.TritonBackend` streams from the
packaged Triton `chat` model over gRPC.
"""
