"""The CPU training wing: fused LoRA layers, lean MLPs and norms, per-sample attention on
packed rows, cheap dropout masks and the C heap policy. Nothing outside training imports it."""
