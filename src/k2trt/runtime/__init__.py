"""Generation at run time: the contracts shared by the CPU reference engine, TensorRT-LLM, the
Triton models and the HTTP gateway (`types`), the chat turn built on the chat layer, and the
wire format of the packaged Triton `chat` model (`wire`)."""
