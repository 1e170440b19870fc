"""Serving containers: image references (a digest accepted and recorded) and the TensorRT-LLM
version each NVIDIA Triton trtllm container ships.

The table is Triton's release compatibility matrix for "Container Name: trtllm-python-py3"
(docs.nvidia.com/deeplearning/triton-inference-server/user-guide/docs/introduction/
compatibility.html, read 2026-12-04). A container not in it needs `package.trtllm_version`
in the release spec.

>>> ref = parse_image("nvcr.io/nvidia/tritonserver:25.12-trtllm-python-py3@sha256:" + "a" * 64)
>>> ref.tag, ref.digest[:13], trtllm_version_of(ref)
('25.12-trtllm-python-py3', 'sha256:aaaaaaa', '1.1.0')
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from k2trt.errors import K2Error

# Triton release (the tag's yy.mm) -> TensorRT-LLM version in its trtllm-python-py3 image.
TRTLLM_IN_TRITON = {
    "25.12": "1.1.0",
    "25.11": "1.0.3.2510",
    "25.10": "1.0.0",
    "25.09": "1.0.0",
    "25.08": "0.21.0",
    "25.07": "0.20.0",
    "25.06": "0.20.0",
}
TRITON_TAG = re.compile(r"^(\d\d\.\d\d)-trtllm-python-py3$")
DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
REFERENCE = re.compile(r"^(?P<repo>[^@\s]+?)(?::(?P<tag>[\w][\w.-]{0,127}))?(?:@(?P<digest>\S+))?$")


@dataclass(frozen=True)
class ImageRef:
    """`repo[:tag][@sha256:...]` as given; `digest` is None when the reference has none."""

    text: str
    repo: str
    tag: str | None
    digest: str | None

    @property
    def pinned(self) -> bool:
        return self.digest is not None


def parse_image(text: str, where: str = "package.container") -> ImageRef:
    """Split an image reference; K2Error naming `where` when it is malformed."""
    match = REFERENCE.match(text)
    if match is None or match["repo"].endswith("/"):
        raise K2Error(
            f"{where}: expected an image reference like repo:tag[@sha256:...], got {text!r}"
        )
    digest = match["digest"]
    if digest is not None and DIGEST.match(digest) is None:
        raise K2Error(f"{where}: digest must be sha256: and 64 hex digits, got {digest!r}")
    return ImageRef(text, match["repo"], match["tag"], digest)


def trtllm_version_of(ref: ImageRef) -> str | None:
    """The TensorRT-LLM version NVIDIA's Triton container `ref` ships, when the table knows."""
    if not ref.repo.endswith("tritonserver") or ref.tag is None:
        return None
    match = TRITON_TAG.match(ref.tag)
    return TRTLLM_IN_TRITON.get(match[1]) if match else None
