"""Pictures to vectors: decoding untrusted image bytes inside a memory budget, the open_clip
model's weights, and the embedder with its views."""
